// Queue throughput: claim + complete of no-op jobs through our SQL functions (lease
// fencing included) against a raw SKIP LOCKED loop on the same table, plus the
// enqueue → claim wake-up latency over LISTEN/NOTIFY. Usage: node bench/queue.ts
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { PostgresDb } from '../control-plane/db/postgres.ts';
import type { BenchDatabase } from './lib.ts';
import * as b from './lib.ts';

const ACCOUNT = 'bbbbbbbb-0000-4000-8000-000000000001';
const JOBS = b.envInt('BENCH_QUEUE_JOBS', 10_000);
const BATCH_JOBS = b.envInt('BENCH_QUEUE_BATCH_JOBS', 50_000);
const ROUNDS = b.envInt('BENCH_QUEUE_ROUNDS', 4);
const BATCH = b.envInt('BENCH_QUEUE_BATCH', 100);
const WAKE_SAMPLES = b.envInt('BENCH_WAKE_SAMPLES', 300);
const WORKERS = [1, 10, 24];
const BATCH_WORKERS = [1, 2, 4];

// Ours: the exact statements of control-plane/db/postgres.ts (claimJobs, completeJob).
const CLAIM = 'select * from public.hd_claim_jobs($1, $2, $3, $4)';
const COMPLETE = 'select * from public.hd_complete_job($1, $2, $3)';
const COMPLETE_MANY = `select (count(*) filter (where completed))::int as n
  from public.hd_complete_jobs($1::uuid[], $2::uuid[])`;
// Anchor: the textbook SKIP LOCKED queue, no lease, no attempts, no fencing.
const RAW_CLAIM = `with c as (select id from hd_ingestion_jobs
   where status = 'queued' and run_after <= now()
   order by priority desc, run_after, id limit $1 for update skip locked)
 update hd_ingestion_jobs j set status = 'running' from c where j.id = c.id returning j.id`;
const RAW_COMPLETE = `update hd_ingestion_jobs set status = 'completed' where id = $1`;
const RAW_COMPLETE_MANY = `update hd_ingestion_jobs set status = 'completed' where id = any($1::uuid[])`;

type Loop = (client: pg.Client, worker: string) => Promise<number>;
interface Claimed {
  id: string;
  lease_token: string;
}

const oursOne: Loop = async (c, worker) => {
  for (let done = 0; ; done++) {
    const { rows } = await c.query<Claimed>(CLAIM, [worker, null, 1, 60]);
    const job = rows[0];
    if (!job) return done;
    await c.query(COMPLETE, [job.id, job.lease_token, {}]);
  }
};

const rawOne: Loop = async (c) => {
  for (let done = 0; ; done++) {
    const { rows } = await c.query<{ id: string }>(RAW_CLAIM, [1]);
    const job = rows[0];
    if (!job) return done;
    await c.query(RAW_COMPLETE, [job.id]);
  }
};

const oursBatch: Loop = async (c, worker) => {
  for (let done = 0; ;) {
    const { rows } = await c.query<Claimed>(CLAIM, [worker, null, BATCH, 60]);
    if (rows.length === 0) return done;
    const ids = rows.map((r) => r.id);
    const tokens = rows.map((r) => r.lease_token);
    const result = await c.query<{ n: number }>(COMPLETE_MANY, [ids, tokens]);
    done += result.rows[0]!.n;
  }
};

const rawBatch: Loop = async (c) => {
  for (let done = 0; ;) {
    const { rows } = await c.query<{ id: string }>(RAW_CLAIM, [BATCH]);
    if (rows.length === 0) return done;
    const result = await c.query(RAW_COMPLETE_MANY, [rows.map((r) => r.id)]);
    done += result.rowCount ?? 0;
  }
};

/** A fresh queue of n no-op jobs, vacuumed and analysed, with a checkpoint behind it. */
async function freshQueue(admin: pg.Client, n: number): Promise<void> {
  await admin.query('truncate public.hd_ingestion_jobs');
  await admin.query(
    `insert into public.hd_ingestion_jobs (account_id, job_type)
     select $1, 'noop' from generate_series(1, $2)`,
    [ACCOUNT, n],
  );
  await admin.query('vacuum analyze public.hd_ingestion_jobs');
  await admin.query('checkpoint');
}

async function timedRun(
  admin: pg.Client,
  clients: pg.Client[],
  loop: Loop,
  n: number,
): Promise<number> {
  await freshQueue(admin, n);
  const started = performance.now();
  const counts = await Promise.all(clients.map((c, i) => loop(c, `bench-worker-${i}`)));
  const seconds = (performance.now() - started) / 1000;
  const done = counts.reduce((a, x) => a + x, 0);
  const { rows } = await admin.query<{ n: number }>(
    `select count(*)::int as n from public.hd_ingestion_jobs where status = 'completed'`,
  );
  if (done !== n || rows[0]!.n !== n) {
    throw new Error(`expected ${n} completed jobs, loop counted ${done}, table has ${rows[0]!.n}`);
  }
  return done / seconds;
}

/** Alternates anchor and ours on fresh queues (order flipped each round); medians. */
async function compare(
  admin: pg.Client,
  clients: pg.Client[],
  anchor: Loop,
  ours: Loop,
  n: number,
): Promise<{ raw: number; ours: number }> {
  const raw: number[] = [];
  const our: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    if (round % 2 === 0) {
      raw.push(await timedRun(admin, clients, anchor, n));
      our.push(await timedRun(admin, clients, ours, n));
    } else {
      our.push(await timedRun(admin, clients, ours, n));
      raw.push(await timedRun(admin, clients, anchor, n));
    }
  }
  return { raw: b.median(raw), ours: b.median(our) };
}

/** Enqueue → claimed, on an idle worker woken by NOTIFY (the real listen() of the transport). */
async function wakeLatency(db: BenchDatabase, admin: pg.Client) {
  await admin.query('truncate public.hd_ingestion_jobs');
  const worker = new PostgresDb({ connectionString: db.url, poolSize: 2 });
  const enqueuer = await b.connect(db.url, 'hd-bench-enqueue');
  let waiter: ((claimed: { at: number; id: string; token: string }) => void) | undefined;
  const claim = async () => {
    const [job] = await worker.claimJobs({ workerId: 'bench-idle', limit: 1, leaseSeconds: 60 });
    const at = performance.now();
    if (job?.lease_token && waiter) waiter({ at, id: job.id, token: job.lease_token });
  };
  const unlisten = await worker.listen((reason) => {
    if (reason.kind === 'queued') void claim();
  });
  const wake: number[] = [];
  const commit: number[] = [];
  try {
    for (let i = 0; i < WAKE_SAMPLES + 20; i++) {
      const claimed = new Promise<{ at: number; id: string; token: string }>((resolve) => {
        waiter = resolve;
      });
      const t0 = performance.now();
      await enqueuer.query(`select id from public.hd_enqueue_job($1, 'noop', '{}'::jsonb)`, [
        ACCOUNT,
      ]);
      const enqueued = performance.now();
      const job = await claimed;
      waiter = undefined;
      if (i >= 20) {
        wake.push(job.at - t0);
        commit.push(enqueued - t0);
      }
      await worker.completeJob(job.id, job.token, {});
      await sleep(5 + Math.random() * 10); // the worker is idle again when the next job comes
    }
  } finally {
    await unlisten();
    await worker.close();
    await enqueuer.end();
  }
  return { wake, commit };
}

async function main() {
  console.log(`# queue bench — ${b.machineLine()}`);
  console.log(
    `one-at-a-time: ${JOBS} jobs per run, batched: ${BATCH_JOBS} jobs per run in batches of ${BATCH}, ${ROUNDS} round(s) each, medians`,
  );
  const db = await b.startBenchDatabase();
  const admin = await b.connect(db.url, 'hd-bench-admin');
  const clients: pg.Client[] = [];
  try {
    // The anchor's order needs the index 00012 replaced by its per-account one; both
    // loops then maintain the same indexes.
    await admin.query(`create index bench_fifo_idx on public.hd_ingestion_jobs
      (priority desc, run_after, id) where status = 'queued'`);
    for (let i = 0; i < Math.max(...WORKERS, ...BATCH_WORKERS); i++) {
      clients.push(await b.connect(db.url, `hd-bench-${i}`));
    }
    for (const workers of WORKERS) {
      const r = await compare(admin, clients.slice(0, workers), rawOne, oursOne, JOBS);
      const ratio = r.ours / r.raw;
      console.log(
        `one-at-a-time workers=${String(workers).padStart(2)}  anchor(raw) ${b.fmt(r.raw).padStart(7)} jobs/s` +
          `  ours ${b.fmt(r.ours).padStart(7)} jobs/s  ratio ${b.fmt(ratio, 2)} (goal >= 0.90: ${b.verdict(ratio >= 0.9)})`,
      );
    }
    for (const workers of BATCH_WORKERS) {
      const r = await compare(admin, clients.slice(0, workers), rawBatch, oursBatch, BATCH_JOBS);
      const ratio = r.ours / r.raw;
      console.log(
        `batched(${BATCH}) workers=${String(workers).padStart(2)}  anchor(raw) ${b.fmt(r.raw).padStart(7)} jobs/s` +
          `  ours ${b.fmt(r.ours).padStart(7)} jobs/s  ratio ${b.fmt(ratio, 2)} (goal ours >= 30,000/s: ${b.verdict(r.ours >= 30_000)})`,
      );
    }
    const { wake, commit } = await wakeLatency(db, admin);
    const p50 = b.percentile(wake, 50);
    console.log(
      `wake latency (enqueue -> claimed, LISTEN/NOTIFY, ${wake.length} samples)  anchor(enqueue commit alone) p50 ${b.fmt(b.percentile(commit, 50), 2)} ms` +
        `  ours p50 ${b.fmt(p50, 2)} ms  p95 ${b.fmt(b.percentile(wake, 95), 2)} ms  p99 ${b.fmt(b.percentile(wake, 99), 2)} ms` +
        `  (goal p50 <= 3 ms: ${b.verdict(p50 <= 3)})`,
    );
  } finally {
    await Promise.all(clients.map((c) => c.end()));
    await admin.end();
    await db.stop();
  }
  console.log(`peak RSS ${b.fmt(b.peakRssMb(), 1)} MB (bench process, Node included)`);
}

await main();
