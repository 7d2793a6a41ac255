// Where a job's time goes in the database: for claims and completions separately, the
// backend's CPU time (/proc/PID/schedstat, nanoseconds on CPU, so the machine's load does
// not inflate it) and the WAL written, per job. One worker, so each statement's WAL is its
// own; synchronous_commit is off for the worker, whose flush (the same two per job for
// every loop) is kernel time that would drown the rest. Loops: the raw SKIP LOCKED loop on hd_ingestion_jobs and ours (hd_claim_leases +
// hd_complete_job(s)), one at a time and batched. BENCH_PROFILE_SQL runs after the
// migrations (e.g. to drop a trigger and see what it cost). Usage: node bench/queue-profile.ts
import { readFile } from 'node:fs/promises';
import type pg from 'pg';
import { CLAIM_LEASES_SQL } from '../control-plane/db/postgres.ts';
import * as b from './lib.ts';

const ACCOUNT = 'bbbbbbbb-0000-4000-8000-000000000001';
const JOBS = b.envInt('BENCH_PROFILE_JOBS', 5_000);
const BATCH = b.envInt('BENCH_PROFILE_BATCH', 100);
const ROUNDS = b.envInt('BENCH_PROFILE_ROUNDS', 3);
const TABLE = 'public.hd_ingestion_jobs';

interface Step {
  sql: string;
  params: (ids: string[], tokens: string[]) => unknown[];
}
interface Loop {
  name: string;
  claim: Step;
  complete: Step;
}

const rawClaim = (n: number): Step => ({
  sql: `with c as (select id from ${TABLE}
     where status = 'queued' and run_after <= now()
     order by priority desc, run_after, id limit ${n} for update skip locked)
   update ${TABLE} j set status = 'running' from c where j.id = c.id returning j.id`,
  params: () => [],
});

const LOOPS: Loop[] = [
  {
    name: 'raw, one at a time',
    claim: rawClaim(1),
    complete: {
      sql: `update ${TABLE} set status = 'completed' where id = $1`,
      params: (i) => [i[0]],
    },
  },
  {
    name: 'ours, one at a time',
    claim: { sql: CLAIM_LEASES_SQL, params: () => ['profile', null, 1, 60, null] },
    complete: {
      sql: 'select * from public.hd_complete_job($1, $2, $3)',
      params: (i, t) => [i[0], t[0], {}],
    },
  },
  {
    name: `raw, batches of ${BATCH}`,
    claim: rawClaim(BATCH),
    complete: {
      sql: `update ${TABLE} set status = 'completed' where id = any($1)`,
      params: (i) => [i],
    },
  },
  {
    name: `ours, batches of ${BATCH}`,
    claim: { sql: CLAIM_LEASES_SQL, params: () => ['profile', null, BATCH, 60, null] },
    complete: {
      sql: `select (count(*) filter (where completed))::int as n
              from public.hd_complete_jobs($1::uuid[], $2::uuid[])`,
      params: (i, t) => [i, t],
    },
  },
];

async function cpuNs(pid: number): Promise<bigint> {
  const text = await readFile(`/proc/${pid}/schedstat`, 'utf8');
  return BigInt(text.split(' ')[0]!);
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

interface Totals {
  cpu: bigint;
  wal: bigint;
}

interface PerJob {
  claimUs: number;
  completeUs: number;
  claimWal: number;
  completeWal: number;
}

/** Drains a fresh queue of JOBS jobs with `loop`; CPU and WAL of claims and completions. */
async function profile(
  admin: pg.Client,
  worker: pg.Client,
  pid: number,
  loop: Loop,
): Promise<PerJob> {
  await admin.query(`truncate ${TABLE} cascade`);
  await admin.query(
    `insert into ${TABLE} (account_id, job_type) select $1, 'noop' from generate_series(1, $2)`,
    [ACCOUNT, JOBS],
  );
  await admin.query(`vacuum analyze ${TABLE}`);
  await admin.query('checkpoint');
  const claim: Totals = { cpu: 0n, wal: 0n };
  const complete: Totals = { cpu: 0n, wal: 0n };
  const timed = async (t: Totals, sql: string, params: unknown[]) => {
    const w0 = await walNow(admin);
    const c0 = await cpuNs(pid);
    const result = await worker.query<{ id: string; lease_token?: string }>(sql, params);
    t.cpu += (await cpuNs(pid)) - c0;
    t.wal += (await walNow(admin)) - w0;
    return result.rows;
  };
  let done = 0;
  for (;;) {
    const rows = await timed(claim, loop.claim.sql, loop.claim.params([], []));
    if (rows.length === 0) break;
    const ids = rows.map((r) => r.id);
    const tokens = rows.map((r) => r.lease_token ?? '');
    await timed(complete, loop.complete.sql, loop.complete.params(ids, tokens));
    done += rows.length;
  }
  const { rows } = await admin.query<{ n: number }>(
    `select count(*)::int as n from ${TABLE} where status = 'completed'`,
  );
  if (done !== JOBS || rows[0]!.n !== JOBS) {
    throw new Error(`${loop.name}: ${done} claimed, ${rows[0]!.n} completed of ${JOBS}`);
  }
  const per = (x: bigint) => Number(x) / JOBS;
  return {
    claimUs: per(claim.cpu) / 1000,
    completeUs: per(complete.cpu) / 1000,
    claimWal: per(claim.wal),
    completeWal: per(complete.wal),
  };
}

async function main() {
  console.log(
    `# queue profile — ${b.machineLine()}, load ${(await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ')}`,
  );
  console.log(
    `${JOBS} jobs per run, ${ROUNDS} round(s), medians; backend CPU µs and WAL bytes per job`,
  );
  const db = await b.startBenchDatabase();
  const admin = await b.connect(db.url, 'hd-profile-admin');
  const worker = await b.connect(db.url, 'hd-profile-worker');
  try {
    await admin.query(`create index bench_fifo_idx on ${TABLE}
      (priority desc, run_after, id) where status = 'queued'`);
    if (process.env.BENCH_PROFILE_SQL) {
      console.log(`setup: ${process.env.BENCH_PROFILE_SQL}`);
      await admin.query(process.env.BENCH_PROFILE_SQL);
    }
    // Each job commits twice on every loop alike; the flush's kernel time would drown the rest.
    await worker.query('set synchronous_commit = off');
    const { rows } = await worker.query<{ pid: number }>('select pg_backend_pid() as pid');
    const pid = rows[0]!.pid;
    const only = process.env.BENCH_PROFILE_LOOPS; // e.g. "raw," or "batches"
    for (const loop of LOOPS.filter((l) => !only || l.name.includes(only))) {
      const runs: PerJob[] = [];
      for (let r = 0; r < ROUNDS; r++) runs.push(await profile(admin, worker, pid, loop));
      const m = (k: keyof PerJob) => b.median(runs.map((x) => x[k]));
      console.log(
        `${loop.name.padEnd(22)} claim ${b.fmt(m('claimUs'), 1).padStart(6)} µs ${b.fmt(m('claimWal')).padStart(5)} B` +
          `   complete ${b.fmt(m('completeUs'), 1).padStart(6)} µs ${b.fmt(m('completeWal')).padStart(5)} B` +
          `   total ${b.fmt(m('claimUs') + m('completeUs'), 1).padStart(6)} µs ${b.fmt(m('claimWal') + m('completeWal')).padStart(5)} B`,
      );
    }
  } finally {
    await worker.end();
    await admin.end();
    await db.stop();
  }
}

await main();
