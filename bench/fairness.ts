// Fairness between tenants (issue 18): slot turnover simulated on the clock the queue
// functions take (p_now), so each claim is the real hd_claim_jobs deciding on a real
// table, and the figures do not move with the machine's load. The anchor is the claim
// order before 00012 (priority desc, run_after, id: first come, first served) with its
// index, in the same run on the same rows. Last, the wall-clock latency of one claim
// with BENCH_FAIR_BACKLOG jobs queued for one tenant. Usage: node bench/fairness.ts
import { readFile } from 'node:fs/promises';
import type pg from 'pg';
import * as b from './lib.ts';

const SLOTS = b.envInt('BENCH_FAIR_SLOTS', 8);
const BIG = b.envInt('BENCH_FAIR_BIG', 10_000);
const SMALL = b.envInt('BENCH_FAIR_SMALL', 20);
const BACKLOG = b.envInt('BENCH_FAIR_BACKLOG', 1_000_000);
const LATENCY_CLAIMS = b.envInt('BENCH_FAIR_CLAIMS', 2_000);
const T0 = Date.parse('2026-01-01T00:00:00Z');

// The claim before 00012, kept as the anchor (and its index, which 00012 dropped).
const FIFO_INDEX = `create index if not exists bench_fifo_idx on hd_ingestion_jobs
  (priority desc, run_after, id) where status = 'queued'`;
const FIFO_CLAIM = `with c as (select id from hd_ingestion_jobs
   where status = 'queued' and run_after <= $2
   order by priority desc, run_after, id limit $1 for update skip locked)
 update hd_ingestion_jobs j set status = 'running', attempts = j.attempts + 1,
   lease_token = gen_random_uuid(), lease_expires_at = $2::timestamptz + interval '1 day',
   started_at = $2
  from c where j.id = c.id returning j.id, j.account_id, j.lease_token`;
// The scheduler's claim (control-plane/db/postgres.ts claimLeases).
const FAIR_CLAIM = `select id, account_id, lease_token
  from hd_claim_leases('bench', null, $1, 86400, null, $2)`;
const COMPLETE = `select 1 from hd_complete_job($1, $2, '{}', $3)`;

type Claim = 'fair' | 'fifo';
interface Tenant {
  account: string;
  jobs: number;
  weight: number;
  at: number; // enqueue time, simulated seconds
}
interface Run {
  id: string;
  account: string;
  start: number;
  end: number;
}

const account = (n: number) => `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`;

// Job lengths 5–15 s from a fixed sequence, the same for both claims.
function lengths(): () => number {
  let x = 12345;
  return () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return 5 + (x / 2 ** 31) * 10;
  };
}

async function enqueue(c: pg.Client, t: Tenant) {
  await c.query(
    `insert into hd_ingestion_jobs (account_id, job_type, run_after, created_at)
     select $1, 'bench', $2::timestamptz - make_interval(secs => ($3 - i) * 0.000001), $2
       from generate_series(1, $3) i`,
    [t.account, new Date(T0 + t.at * 1000), t.jobs],
  );
}

/** Runs SLOTS slots until `stop` says so; returns every job run, with simulated times. */
async function simulate(
  c: pg.Client,
  claim: Claim,
  tenants: Tenant[],
  stop: (done: Run[]) => boolean,
): Promise<Run[]> {
  await c.query('truncate hd_ingestion_jobs, hd_account_limits cascade');
  for (const t of tenants)
    if (t.weight !== 1)
      await c.query('select hd_set_account_limit($1, null, $2)', [t.account, t.weight]);
  const pending = [...tenants].sort((x, y) => x.at - y.at);
  const running: (Run & { token: string })[] = [];
  const done: Run[] = [];
  const next = lengths();
  let now = 0;
  while (!stop(done)) {
    while (pending[0] && pending[0].at <= now) {
      await enqueue(c, pending.shift()!);
      await c.query('analyze hd_ingestion_jobs');
    }
    const at = new Date(T0 + now * 1000);
    const free = SLOTS - running.length;
    if (free > 0) {
      const { rows } = await c.query<{ id: string; account_id: string; lease_token: string }>(
        claim === 'fair' ? FAIR_CLAIM : FIFO_CLAIM,
        [free, at],
      );
      for (const r of rows)
        running.push({
          id: r.id,
          account: r.account_id,
          token: r.lease_token,
          start: now,
          end: now + next(),
        });
    }
    // The next event: a job ends, or a tenant enqueues.
    running.sort((x, y) => x.end - y.end);
    const ends = running[0]?.end ?? Infinity;
    const arrives = pending[0]?.at ?? Infinity;
    if (ends === Infinity && arrives === Infinity) break;
    now = Math.min(ends, arrives);
    if (ends <= arrives) {
      const job = running.shift()!;
      if (claim === 'fair') await c.query(COMPLETE, [job.id, job.token, new Date(T0 + now * 1000)]);
      else
        await c.query(`update hd_ingestion_jobs set status = 'completed' where id = $1`, [job.id]);
      done.push(job);
    }
  }
  return done;
}

/** Tenant A enqueues BIG jobs, tenant B SMALL jobs 30 s later, once A fills every slot. */
async function smallAfterBig(c: pg.Client, claim: Claim) {
  const A = account(1);
  const B = account(2);
  const bAt = 30;
  const runs = await simulate(
    c,
    claim,
    [
      { account: A, jobs: BIG, weight: 1, at: 0 },
      { account: B, jobs: SMALL, weight: 1, at: bAt },
    ],
    (done) => done.filter((r) => r.account === B).length >= SMALL,
  );
  const bRuns = runs.filter((r) => r.account === B);
  const firstB = Math.min(...bRuns.map((r) => r.start));
  const lastB = Math.max(...bRuns.map((r) => r.end));
  // One slot's turnover: when the first slot frees up after B enqueued.
  const turnover =
    Math.min(...runs.filter((r) => r.start < bAt && r.end > bAt).map((r) => r.end)) - bAt;
  const aStartedMeanwhile = runs.filter(
    (r) => r.account === A && r.start >= bAt && r.start <= lastB,
  ).length;
  return { firstWait: firstB - bAt, allDone: lastB - bAt, turnover, aStartedMeanwhile };
}

/** Jain's index of slot time per weight, tenants with unequal backlogs and weights. */
async function jain(c: pg.Client, claim: Claim) {
  const tenants: Tenant[] = [
    { account: account(11), jobs: 4000, weight: 1, at: 0 },
    { account: account(12), jobs: 1500, weight: 1, at: 1 },
    { account: account(13), jobs: 800, weight: 2, at: 2 },
    { account: account(14), jobs: 400, weight: 1, at: 3 },
  ];
  // Measured while every tenant still has work: the first 1,000 jobs to finish.
  const runs = await simulate(c, claim, tenants, (done) => done.length >= 1000);
  const x = tenants.map(
    (t) =>
      runs.filter((r) => r.account === t.account).reduce((s, r) => s + (r.end - r.start), 0) /
      t.weight,
  );
  const sum = x.reduce((s, v) => s + v, 0);
  const index = (sum * sum) / (x.length * x.reduce((s, v) => s + v * v, 0));
  const shares = x.map((v) => `${b.fmt((100 * v) / sum, 0)}%`).join(' / ');
  return { index, shares };
}

/** Nanoseconds the backend `pid` has spent on a CPU (Linux), or 0 where unreadable. */
async function backendCpuNs(pid: number): Promise<number> {
  try {
    return Number((await readFile(`/proc/${pid}/schedstat`, 'utf8')).split(' ')[0]);
  } catch {
    return 0;
  }
}

/**
 * Wall-clock latency of one claim (its commit included) with BACKLOG jobs for one tenant,
 * and the backend's CPU time for it (its own work, whatever the machine's load; 0 where
 * /proc is not readable); each claimed job is then completed. `flush` false:
 * synchronous_commit off, no wait for the disk (shared, and as slow as the load).
 */
async function claimLatency(c: pg.Client, claim: Claim, flush: boolean) {
  await c.query(`set synchronous_commit = ${flush ? 'on' : 'off'}`);
  const { rows: me } = await c.query<{ pid: number }>('select pg_backend_pid() as pid');
  const pid = me[0]!.pid;
  const ms: number[] = [];
  const cpuMs: number[] = [];
  const at = new Date(T0 + 3600_000);
  for (let i = 0; i < LATENCY_CLAIMS; i++) {
    const cpu = await backendCpuNs(pid);
    const started = performance.now();
    const { rows } = await c.query<{ id: string; lease_token: string }>(
      claim === 'fair' ? FAIR_CLAIM : FIFO_CLAIM,
      [1, at],
    );
    ms.push(performance.now() - started);
    cpuMs.push(((await backendCpuNs(pid)) - cpu) / 1e6);
    const job = rows[0];
    if (!job) throw new Error('the backlog ran dry');
    if (claim === 'fair') await c.query(COMPLETE, [job.id, job.lease_token, at]);
    else await c.query(`update hd_ingestion_jobs set status = 'completed' where id = $1`, [job.id]);
  }
  await c.query('reset synchronous_commit');
  return { ms, cpuMs };
}

const db = await b.startBenchDatabase();
const c = await b.connect(db.url);
try {
  console.log(`fairness bench — ${b.machineLine()}; ${SLOTS} slots, jobs of 5–15 s (simulated)`);
  await c.query(FIFO_INDEX);
  console.log(
    `\nA enqueues ${b.fmt(BIG)} jobs, B ${SMALL} jobs 30 s later (seconds after B enqueued):`,
  );
  console.log(
    '| claim | B first starts | first slot frees | B all done | A jobs started meanwhile |',
  );
  for (const claim of ['fifo', 'fair'] as const) {
    const r = await smallAfterBig(c, claim);
    console.log(
      `| ${claim === 'fair' ? 'ours (fair)' : 'anchor (FIFO)'} | ${b.fmt(r.firstWait, 1)} | ${b.fmt(r.turnover, 1)} | ${b.fmt(r.allDone, 1)} | ${b.fmt(r.aStartedMeanwhile)} |`,
    );
    if (claim === 'fair')
      console.log(
        `goals: first start within one turnover ${b.verdict(r.firstWait <= r.turnover)}; B done before A's next 200 ${b.verdict(r.aStartedMeanwhile < 200)}`,
      );
  }
  console.log(
    '\nJain index of slot time per weight, 4 tenants (backlogs 4000/1500/800/400, weights 1/1/2/1), first 1,000 jobs:',
  );
  for (const claim of ['fifo', 'fair'] as const) {
    const r = await jain(c, claim);
    console.log(
      `| ${claim === 'fair' ? 'ours (fair)' : 'anchor (FIFO)'} | ${b.fmt(r.index, 3)} | shares ${r.shares} |`,
    );
  }

  await c.query('truncate hd_ingestion_jobs, hd_account_limits cascade');
  console.log(
    `\nclaim latency with ${b.fmt(BACKLOG)} queued for one tenant and 1,000 for each of 3 others:`,
  );
  await enqueue(c, { account: account(21), jobs: BACKLOG, weight: 1, at: 0 });
  for (const n of [22, 23, 24])
    await enqueue(c, { account: account(n), jobs: 1000, weight: 1, at: 0 });
  await c.query('vacuum analyze hd_ingestion_jobs');
  for (const claim of ['fifo', 'fair'] as const) {
    // Ours is measured with the indexes of a real database, not the anchor's extra one.
    if (claim === 'fair') await c.query('drop index bench_fifo_idx');
    for (const flush of [true, false]) {
      const { ms, cpuMs } = await claimLatency(c, claim, flush);
      console.log(
        `| ${claim === 'fair' ? 'ours (fair)' : 'anchor (FIFO)'} | ${flush ? 'commit flushed' : 'no flush wait'} | p50 ${b.fmt(b.percentile(ms, 50), 2)} ms | p99 ${b.fmt(b.percentile(ms, 99), 2)} ms | backend CPU p50 ${b.fmt(b.percentile(cpuMs, 50), 2)} ms p99 ${b.fmt(b.percentile(cpuMs, 99), 2)} ms |` +
          (claim === 'fair' ? ` goal p99 < 5 ms ${b.verdict(b.percentile(ms, 99) < 5)}` : ''),
      );
    }
  }
  console.log(`peak RSS ${b.fmt(b.peakRssMb())} MB`);
} finally {
  await c.end();
  await db.stop();
}
