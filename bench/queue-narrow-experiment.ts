// An experiment, not the product (issue 18): would a narrow queue table beside
// hd_ingestion_jobs reach graphile-worker's throughput? The design measured: the wide row
// stays the web app's source of truth (status, attempts, lease, progress written as
// hd_claim_leases / hd_complete_job write them) but loses every index on a column a claim
// or a completion changes, so both updates can be HOT; a narrow table
// (hd_private.job_queue: job id, account, type, priority, run_after, state, lease expiry)
// holds only queued and running jobs with the claim and running indexes, and a completion
// deletes its row. Raw SQL loops of that design against, in the same run on the same
// database: the raw SKIP LOCKED loop on today's table (the anchor of bench/queue.ts),
// graphile-worker 0.18 and the minimal table. Per contender and run: jobs/s, WAL bytes per
// job (pg_current_wal_insert_lsn around the drain), the server's CPU per job (every
// process of this PostgreSQL: backends, autovacuum, WAL writer; /proc, so the machine's
// load does not stretch it the way it stretches wall time), the bench process's CPU per
// job, and the share of the updates that were HOT (pg_stat_user_tables).
// Usage: node bench/queue-narrow-experiment.ts
import { readdir, readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import * as b from './lib.ts';
import {
  type Contender,
  drainWith,
  graphileWorker,
  type Loop,
  MINIMAL_TABLE,
  minimalTable,
  rawLoop,
} from './queue-anchors.ts';

const ACCOUNT = 'bbbbbbbb-0000-4000-8000-000000000001';
const JOBS = b.envInt('BENCH_QUEUE_JOBS', 3_000);
const BATCH_JOBS = b.envInt('BENCH_QUEUE_BATCH_JOBS', 20_000);
const ROUNDS = b.envInt('BENCH_QUEUE_ROUNDS', 3);
const BATCH = b.envInt('BENCH_QUEUE_BATCH', 100);
// 60: a claim and a completion each write a new version of the wide row, which grows at
// the claim (lease, worker, started_at); at 90 and 75, 9-32% of the updates found no room
// on their page and were not HOT (short runs, 2026-12-01).
const FILLFACTOR = b.envInt('BENCH_NARROW_FILLFACTOR', 60);
// 'off': the whole server skips the wait for the flush at commit, so the server's CPU per
// job is the queue's work, not the kernel's (the goals are measured with it on).
const SYNCHRONOUS_COMMIT = process.env.BENCH_SYNCHRONOUS_COMMIT ?? 'on';
// 1: the raw loops use named statements, planned once per connection, as the queue's
// PL/pgSQL functions and graphile-worker's are (bench/queue.ts's anchor sends unnamed ones).
const PREPARED = process.env.BENCH_PREPARED === '1';
const WORKERS = (process.env.BENCH_QUEUE_WORKERS ?? '1,10,24').split(',').map(Number);
const BATCH_WORKERS = (process.env.BENCH_QUEUE_BATCH_WORKERS ?? '1,2,4').split(',').map(Number);
const WIDE = 'public.hd_ingestion_jobs';
const NARROW = 'hd_private.job_queue';

// The narrow table. Its claim index has the fair claim's shape (00012): by account and
// type, in claim order; the running index counts a group's running jobs (limits, fairness)
// and finds leases to reap.
const NARROW_TABLE = `create table ${NARROW} (
  job_id uuid primary key references ${WIDE} (id) on delete cascade,
  account_id uuid not null,
  job_type text not null,
  priority integer not null,
  run_after timestamptz not null,
  state text not null default 'queued' check (state in ('queued', 'running')),
  lease_expires_at timestamptz);
create index job_queue_claim_idx on ${NARROW}
  (account_id, job_type, priority desc, run_after, job_id) where state = 'queued';
create index job_queue_running_idx on ${NARROW} (account_id, job_type) where state = 'running'`;

// The wide table's indexes as the migrations leave them, plus the FIFO index the raw
// anchor orders by (bench/queue.ts adds it too). `status` is in three of them.
const TODAY_INDEXES = `
  drop index if exists public.hd_ingestion_jobs_batch_narrow_idx;
  create index if not exists hd_ingestion_jobs_batch_idx on ${WIDE} (batch_id, status)
    where batch_id is not null;
  create index if not exists hd_ingestion_jobs_fair_claim_idx on ${WIDE}
    (account_id, job_type, priority desc, run_after, id) where status = 'queued';
  create index if not exists hd_ingestion_jobs_running_account_idx on ${WIDE}
    (account_id, job_type) where status = 'running';
  create index if not exists bench_fifo_idx on ${WIDE} (priority desc, run_after, id)
    where status = 'queued';
  alter table ${WIDE} set (fillfactor = 90)`;
// The narrow design's wide table: no index names a column that a claim, a heartbeat or a
// completion writes (batch counts look jobs up by batch_id and read status from the row).
const NARROW_INDEXES = `
  drop index if exists public.hd_ingestion_jobs_batch_idx;
  drop index if exists public.hd_ingestion_jobs_fair_claim_idx;
  drop index if exists public.hd_ingestion_jobs_running_account_idx;
  drop index if exists public.bench_fifo_idx;
  create index if not exists hd_ingestion_jobs_batch_narrow_idx on ${WIDE} (batch_id)
    where batch_id is not null;
  alter table ${WIDE} set (fillfactor = ${FILLFACTOR})`;

async function settle(admin: pg.Client, ...tables: string[]): Promise<void> {
  for (const t of tables) await admin.query(`vacuum analyze ${t}`);
  await admin.query('checkpoint');
}

async function fillWide(admin: pg.Client, n: number, indexes: string): Promise<void> {
  await admin.query(`truncate ${WIDE} cascade`); // the narrow table and pending artifacts refer to jobs
  await admin.query(indexes); // on empty tables: instant
  await admin.query(
    `insert into ${WIDE} (account_id, job_type) select $1, 'noop' from generate_series(1, $2)`,
    [ACCOUNT, n],
  );
}

async function completedOnWide(admin: pg.Client): Promise<number> {
  const { rows } = await admin.query<{ n: number }>(
    `select count(*)::int as n from ${WIDE} where status = 'completed'`,
  );
  return rows[0]!.n;
}

/** The raw loop on today's table (bench/queue.ts's "raw" anchor): it writes only `status`. */
function today(batch: number): Contender {
  return {
    name: 'raw loop, today',
    async fill(admin, n) {
      await fillWide(admin, n, TODAY_INDEXES);
      await settle(admin, WIDE);
    },
    drain: (clients) =>
      drainWith(
        rawLoop(
          { table: WIDE, runAt: 'run_after', order: 'priority desc, run_after, id' },
          batch,
          PREPARED,
        ),
        clients,
      ),
    done: completedOnWide,
  };
}

/**
 * The narrow design as a raw loop. A claim takes jobs from the narrow table (SKIP LOCKED,
 * marks them running with a lease) and writes the wide row as hd_claim_leases does
 * (status, attempts, lease token and expiry, worker, started_at, progress); a completion
 * fences on the wide row's lease token, writes it as hd_complete_job does (without the
 * stats merge) and deletes the narrow row. One statement each, as the raw loops.
 */
function narrowLoop(batch: number): Loop {
  const claim = `with c as (
      select job_id from ${NARROW}
       where state = 'queued' and account_id = $1 and job_type = 'noop' and run_after <= now()
       order by priority desc, run_after, job_id limit ${batch} for update skip locked),
    q as (
      update ${NARROW} n set state = 'running', lease_expires_at = now() + interval '60 seconds'
        where n.job_id = any (array(select job_id from c)) returning n.job_id)
    update ${WIDE} j
       set status = 'running', attempts = j.attempts + 1, lease_token = gen_random_uuid(),
           lease_expires_at = now() + interval '60 seconds', locked_by = $2,
           started_at = now(), finished_at = null, progress_percent = 0,
           progress_step = 'claimed', container_id = null, updated_at = now()
     where j.id = any (array(select job_id from q))
    returning j.id, j.lease_token`;
  // Batched: ids and tokens are matched as sets; a token is a random uuid, so it matches
  // only its own job's.
  const complete = `with w as (
      update ${WIDE} j
         set status = 'completed', finished_at = now(), updated_at = now(),
             lease_token = null, lease_expires_at = null, progress_percent = 100,
             progress_step = 'completed', error = null, error_code = null, error_details = null
       where ${batch === 1 ? 'j.id = $1 and j.lease_token = $2' : 'j.id = any ($1) and j.lease_token = any ($2)'}
         and j.status = 'running'
      returning j.id)
    delete from ${NARROW} n where n.job_id = any (array(select id from w))`;
  return async (c, worker) => {
    for (let done = 0; ;) {
      const { rows } = await c.query<{ id: string; lease_token: string }>(claim, [ACCOUNT, worker]);
      if (rows.length === 0) return done;
      const ids = rows.map((r) => r.id);
      const tokens = rows.map((r) => r.lease_token);
      const result = await c.query(complete, batch === 1 ? [ids[0], tokens[0]] : [ids, tokens]);
      done += result.rowCount ?? 0;
    }
  };
}

function narrow(batch: number): Contender {
  return {
    name: 'raw loop, narrow design',
    async fill(admin, n) {
      await fillWide(admin, n, NARROW_INDEXES);
      await admin.query(
        `insert into ${NARROW} (job_id, account_id, job_type, priority, run_after)
         select id, account_id, job_type, priority, run_after from ${WIDE}`,
      );
      await settle(admin, WIDE, NARROW);
    },
    drain: (clients) => drainWith(narrowLoop(batch), clients),
    async done(admin) {
      const { rows } = await admin.query<{ n: number }>(`select count(*)::int as n from ${NARROW}`);
      if (rows[0]!.n !== 0) return -rows[0]!.n; // a narrow row left behind is a failure
      return completedOnWide(admin);
    },
  };
}

// ---- what a run costs the server -------------------------------------------------------

const TICK_NS = 10_000_000n; // USER_HZ 100

async function procStat(pid: number): Promise<string[] | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/stat`, 'utf8');
    return text.slice(text.lastIndexOf(')') + 2).split(' '); // fields from 3 (state) on
  } catch {
    return undefined;
  }
}

/**
 * CPU time of every process of this server: each live child's (schedstat, ns) plus the
 * postmaster's own and its reaped children's (stat, ticks), so a backend that ends
 * during a run (graphile-worker's pools) is counted too.
 */
async function serverCpuNs(postmaster: number): Promise<bigint> {
  const pm = await procStat(postmaster);
  if (!pm) throw new Error(`postmaster ${postmaster} is gone`);
  // stat fields (1-based): 14 utime, 15 stime, 16 cutime, 17 cstime; pm[0] is field 3.
  let total = (BigInt(pm[11]!) + BigInt(pm[12]!) + BigInt(pm[13]!) + BigInt(pm[14]!)) * TICK_NS;
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const st = await procStat(Number(entry));
    if (!st || Number(st[1]) !== postmaster) continue; // field 4: ppid
    try {
      total += BigInt((await readFile(`/proc/${entry}/schedstat`, 'utf8')).split(' ')[0]!);
    } catch {
      // ended between the two reads: its time is in the postmaster's cutime next time
    }
  }
  return total;
}

function lsn(text: string): bigint {
  const [hi, lo] = text.split('/');
  return (BigInt(`0x${hi}`) << 32n) + BigInt(`0x${lo}`);
}

async function walNow(admin: pg.Client): Promise<bigint> {
  const { rows } = await admin.query<{ l: string }>(
    'select pg_current_wal_insert_lsn()::text as l',
  );
  return lsn(rows[0]!.l);
}

const lsnText = (x: bigint) => `${(x >> 32n).toString(16)}/${(x & 0xffffffffn).toString(16)}`;
const detailed = new Set<string>();

/**
 * Bytes of full-page images between two LSNs (pg_walinspect); with BENCH_WAL_DETAIL=1, the
 * first run of each contender also prints its WAL by record type, per job.
 */
async function walStats(admin: pg.Client, from: bigint, to: bigint, name: string, n: number) {
  const { rows } = await admin.query<{
    record_type: string;
    count: string;
    record_size: string;
    fpi_size: string;
  }>(
    `select "resource_manager/record_type" as record_type, count, record_size, fpi_size
       from pg_get_wal_stats($1::pg_lsn, $2::pg_lsn, true) where count > 0
      order by record_size + fpi_size desc`,
    [lsnText(from), lsnText(to)],
  );
  if (process.env.BENCH_WAL_DETAIL === '1' && !detailed.has(name)) {
    detailed.add(name);
    console.log(`  WAL of one run, ${name}, per job: record type, records, bytes, FPI bytes`);
    for (const r of rows.slice(0, 12)) {
      const per = (x: string, d = 0) => b.fmt(Number(x) / n, d);
      console.log(
        `    ${r.record_type.padEnd(28)} ${per(r.count, 2).padStart(6)} ${per(r.record_size).padStart(6)} ${per(r.fpi_size).padStart(6)}`,
      );
    }
  }
  return rows.reduce((a, r) => a + Number(r.fpi_size), 0);
}

interface Upd {
  upd: number;
  hot: number;
}

async function fpis(admin: pg.Client): Promise<number> {
  await admin.query('select pg_stat_clear_snapshot()');
  const { rows } = await admin.query<{ n: string }>('select wal_fpi as n from pg_stat_wal');
  return Number(rows[0]!.n);
}

async function updates(admin: pg.Client): Promise<Record<string, Upd>> {
  await admin.query('select pg_stat_clear_snapshot()');
  const { rows } = await admin.query<{ t: string; upd: string; hot: string }>(
    `select schemaname || '.' || relname as t, n_tup_upd as upd, n_tup_hot_upd as hot
       from pg_stat_user_tables
      where (schemaname, relname) in (('public', 'hd_ingestion_jobs'), ('hd_private', 'job_queue'),
                                      ('bench_graphile_worker', '_private_jobs'))`,
  );
  return Object.fromEntries(rows.map((r) => [r.t, { upd: Number(r.upd), hot: Number(r.hot) }]));
}

interface Sample {
  rate: number;
  walB: number;
  fpiB: number; // of walB, bytes of full-page images per job
  fpi: number; // full-page images per 100 jobs
  dbUs: number;
  nodeUs: number;
  hot: Record<string, number>; // share of updates that were HOT, per table
}

async function timedRun(
  admin: pg.Client,
  clients: pg.Client[],
  postmaster: number,
  contender: Contender,
  n: number,
): Promise<Sample> {
  await contender.fill(admin, n);
  const u0 = await updates(admin);
  const f0 = await fpis(admin);
  const w0 = await walNow(admin);
  const c0 = await serverCpuNs(postmaster);
  const n0 = process.cpuUsage();
  const started = performance.now();
  const counted = await contender.drain(clients, admin);
  const seconds = (performance.now() - started) / 1000;
  const node = process.cpuUsage(n0);
  const w1 = await walNow(admin);
  await sleep(200); // graphile-worker's pools' backends exit: their time lands in cutime
  const c1 = await serverCpuNs(postmaster);
  // Each backend sends its table counters to shared memory at its next idle moment.
  await Promise.all(clients.map((c) => c.query('select pg_stat_force_next_flush()')));
  await Promise.all(clients.map((c) => c.query('select 1')));
  const u1 = await updates(admin);
  const f1 = await fpis(admin);
  const fpiBytes = await walStats(admin, w0, w1, contender.name, n);
  const done = await contender.done(admin);
  if (counted !== n || done !== n) {
    throw new Error(
      `${contender.name}: expected ${n} jobs done, counted ${counted}, queue has ${done}`,
    );
  }
  const hot: Record<string, number> = {};
  for (const [t, after] of Object.entries(u1)) {
    const before = u0[t] ?? { upd: 0, hot: 0 };
    const upd = after.upd - before.upd;
    if (upd > 0) hot[t] = (after.hot - before.hot) / upd;
  }
  return {
    rate: n / seconds,
    walB: Number(w1 - w0) / n,
    fpiB: fpiBytes / n,
    fpi: (100 * (f1 - f0)) / n,
    dbUs: Number(c1 - c0) / 1000 / n,
    nodeUs: (node.user + node.system) / n,
    hot,
  };
}

async function load(): Promise<string> {
  return (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
}

/** Every contender on a fresh queue each round, rotating the order; medians per figure. */
async function compare(
  admin: pg.Client,
  clients: pg.Client[],
  postmaster: number,
  contenders: Contender[],
  n: number,
): Promise<Sample[]> {
  const runs = contenders.map(() => [] as Sample[]);
  for (let round = 0; round < ROUNDS; round++) {
    for (let k = 0; k < contenders.length; k++) {
      const i = (k + round) % contenders.length;
      runs[i]!.push(await timedRun(admin, clients, postmaster, contenders[i]!, n));
    }
  }
  return runs.map((r) => {
    const m = (f: (s: Sample) => number) => b.median(r.map(f));
    const tables = [...new Set(r.flatMap((s) => Object.keys(s.hot)))];
    return {
      rate: m((s) => s.rate),
      walB: m((s) => s.walB),
      fpiB: m((s) => s.fpiB),
      fpi: m((s) => s.fpi),
      dbUs: m((s) => s.dbUs),
      nodeUs: m((s) => s.nodeUs),
      hot: Object.fromEntries(tables.map((t) => [t, m((s) => s.hot[t] ?? 0)])),
    };
  });
}

const NAMES = ['minimal', 'today', 'graphile', 'narrow'];

function report(mode: string, workers: number, samples: Sample[], l0: string, l1: string) {
  const [, todayS, graphile, narrowS] = samples as [Sample, Sample, Sample, Sample];
  console.log(`\n${mode}, ${workers} worker(s) — load ${l0} → ${l1}`);
  console.log(
    '| contender | jobs/s | WAL B/job | of which full-page images | WAL B/job without them | server CPU µs/job | bench CPU µs/job | HOT updates |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  samples.forEach((s, i) => {
    const hot = Object.entries(s.hot)
      .map(([t, x]) => `${t.replace(/^.*\./, '')} ${b.fmt(100 * x)}%`)
      .join(', ');
    console.log(
      `| ${NAMES[i]} | ${b.fmt(s.rate)} | ${b.fmt(s.walB)} | ${b.fmt(s.fpiB)} (${b.fmt(s.fpi, 1)} per 100 jobs) | ${b.fmt(s.walB - s.fpiB)} | ${b.fmt(s.dbUs, 1)} | ${b.fmt(s.nodeUs, 1)} | ${hot || '—'} |`,
    );
  });
  const r = (x: number, y: number) => b.fmt(x / y, 2);
  console.log(
    `narrow/graphile ${r(narrowS.rate, graphile.rate)} (goal >= 1: ${b.verdict(narrowS.rate >= graphile.rate)}), ` +
      `narrow/today ${r(narrowS.rate, todayS.rate)}, today/graphile ${r(todayS.rate, graphile.rate)}; ` +
      `server CPU narrow/today ${r(narrowS.dbUs, todayS.dbUs)}, WAL narrow/today ${r(narrowS.walB, todayS.walB)}, ` +
      `WAL narrow/graphile ${r(narrowS.walB, graphile.walB)} ` +
      `(without full-page images: narrow/today ${r(narrowS.walB - narrowS.fpiB, todayS.walB - todayS.fpiB)}, ` +
      `narrow/graphile ${r(narrowS.walB - narrowS.fpiB, graphile.walB - graphile.fpiB)})`,
  );
}

async function main() {
  console.log(`# queue: narrow-table experiment — ${b.machineLine()}, load ${await load()}`);
  console.log(
    `one at a time: ${JOBS} jobs per run; batched: ${BATCH_JOBS} per run in batches of ${BATCH}; ` +
      `${ROUNDS} round(s), contenders rotated, medians; narrow design's wide-table fillfactor ${FILLFACTOR}; ` +
      `synchronous_commit ${SYNCHRONOUS_COMMIT}; raw loops ${PREPARED ? 'prepared' : 'unnamed statements'}`,
  );
  const db = await b.startBenchDatabase();
  const admin = await b.connect(db.url, 'hd-narrow-admin');
  const clients: pg.Client[] = [];
  try {
    await admin.query(MINIMAL_TABLE);
    await admin.query(NARROW_TABLE);
    await admin.query('create extension if not exists pg_walinspect');
    if (!['on', 'off'].includes(SYNCHRONOUS_COMMIT)) {
      throw new Error(`BENCH_SYNCHRONOUS_COMMIT must be on or off (got ${SYNCHRONOUS_COMMIT})`);
    }
    await admin.query(`alter system set synchronous_commit = ${SYNCHRONOUS_COMMIT}`);
    await admin.query('select pg_reload_conf()');
    const { rows } = await admin.query<{ pid: number }>('select pg_backend_pid() as pid');
    const postmaster = Number((await procStat(rows[0]!.pid))![1]);
    for (let i = 0; i < Math.max(...WORKERS, ...BATCH_WORKERS); i++) {
      clients.push(await b.connect(db.url, `hd-narrow-${i}`));
    }
    const one = [minimalTable(1, PREPARED), today(1), graphileWorker(db.url, {}), narrow(1)];
    for (const workers of WORKERS) {
      const l0 = await load();
      const s = await compare(admin, clients.slice(0, workers), postmaster, one, JOBS);
      report('one at a time', workers, s, l0, await load());
    }
    const batched = [
      minimalTable(BATCH, PREPARED),
      today(BATCH),
      graphileWorker(db.url, { localQueue: BATCH, concurrency: () => 10 }),
      narrow(BATCH),
    ];
    for (const workers of BATCH_WORKERS) {
      const l0 = await load();
      const s = await compare(admin, clients.slice(0, workers), postmaster, batched, BATCH_JOBS);
      report(`batched (${BATCH}; graphile: local queue)`, workers, s, l0, await load());
    }
  } finally {
    await Promise.all(clients.map((c) => c.end()));
    await admin.end();
    await db.stop();
  }
  console.log(`\npeak RSS ${b.fmt(b.peakRssMb(), 1)} MB`);
}

await main();
