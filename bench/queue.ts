// Queue throughput: claim + complete of no-op jobs through our SQL functions (lease
// fencing and fairness included) against three anchors in the same run: a raw SKIP LOCKED
// loop on a minimal table, the same loop on hd_ingestion_jobs (what our table costs), and
// graphile-worker (one job at a time, and its local queue for batches). Then the enqueue →
// claim wake-up latency over LISTEN/NOTIFY. Usage: node bench/queue.ts
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { CLAIM_LEASES_SQL, PostgresDb } from '../control-plane/db/postgres.ts';
import type { BenchDatabase } from './lib.ts';
import * as b from './lib.ts';
import {
  type Contender,
  type Loop,
  graphileWorker,
  MINIMAL_TABLE,
  minimalTable,
  ourTable,
  rawLoop,
} from './queue-anchors.ts';

const ACCOUNT = 'bbbbbbbb-0000-4000-8000-000000000001';
const JOBS = b.envInt('BENCH_QUEUE_JOBS', 10_000);
const BATCH_JOBS = b.envInt('BENCH_QUEUE_BATCH_JOBS', 50_000);
const ROUNDS = b.envInt('BENCH_QUEUE_ROUNDS', 3);
const BATCH = b.envInt('BENCH_QUEUE_BATCH', 100);
const WAKE_SAMPLES = b.envInt('BENCH_WAKE_SAMPLES', 300);
const WORKERS = [1, 10, 24];
const BATCH_WORKERS = [1, 2, 4];

// Ours: the statements of control-plane/db/postgres.ts (claimLeases, completeJob(s)).
const COMPLETE = 'select * from public.hd_complete_job($1, $2, $3)';
const COMPLETE_MANY = `select (count(*) filter (where completed))::int as n
  from public.hd_complete_jobs($1::uuid[], $2::uuid[])`;
// The raw loop on our table orders as 00003 did, by an index the bench adds (00012 has a
// per-account one); both loops on hd_ingestion_jobs then maintain the same indexes.
const OUR_QUEUE = {
  table: 'public.hd_ingestion_jobs',
  runAt: 'run_after',
  order: 'priority desc, run_after, id',
};

interface Claimed {
  id: string;
  lease_token: string;
}

const oursOne: Loop = async (c, worker) => {
  for (let done = 0; ; done++) {
    const { rows } = await c.query<Claimed>(CLAIM_LEASES_SQL, [worker, null, 1, 60, null]);
    const job = rows[0];
    if (!job) return done;
    await c.query(COMPLETE, [job.id, job.lease_token, {}]);
  }
};

const oursBatch: Loop = async (c, worker) => {
  for (let done = 0; ;) {
    const { rows } = await c.query<Claimed>(CLAIM_LEASES_SQL, [worker, null, BATCH, 60, null]);
    if (rows.length === 0) return done;
    const ids = rows.map((r) => r.id);
    const tokens = rows.map((r) => r.lease_token);
    const result = await c.query<{ n: number }>(COMPLETE_MANY, [ids, tokens]);
    done += result.rows[0]!.n;
  }
};

async function timedRun(
  admin: pg.Client,
  clients: pg.Client[],
  contender: Contender,
  n: number,
): Promise<number> {
  await contender.fill(admin, n);
  const started = performance.now();
  const counted = await contender.drain(clients, admin);
  const seconds = (performance.now() - started) / 1000;
  const done = await contender.done(admin);
  if (counted !== n || done !== n) {
    throw new Error(
      `${contender.name}: expected ${n} jobs done, counted ${counted}, queue has ${done}`,
    );
  }
  return n / seconds;
}

/** Runs every contender on a fresh queue each round, in a rotating order; medians. */
async function compare(
  admin: pg.Client,
  clients: pg.Client[],
  contenders: Contender[],
  n: number,
): Promise<number[]> {
  const runs = contenders.map(() => [] as number[]);
  for (let round = 0; round < ROUNDS; round++) {
    for (let k = 0; k < contenders.length; k++) {
      const i = (k + round) % contenders.length;
      runs[i]!.push(await timedRun(admin, clients, contenders[i]!, n));
    }
  }
  return runs.map((r) => b.median(r));
}

/** One line per worker count: every contender's jobs/s, then ours against each anchor. */
function report(
  mode: string,
  workers: number,
  names: string[],
  rates: number[],
  goals: Record<string, number>,
): void {
  const ours = rates.at(-1)!;
  const parts = names.map((name, i) => `${name} ${b.fmt(rates[i]!)}`);
  const ratios = names.slice(0, -1).map((name, i) => {
    const ratio = ours / rates[i]!;
    const goal = goals[name];
    const verdict =
      goal === undefined ? '' : ` (goal >= ${b.fmt(goal, 2)}: ${b.verdict(ratio >= goal)})`;
    return `ours/${name} ${b.fmt(ratio, 2)}${verdict}`;
  });
  console.log(`${mode} workers=${String(workers).padStart(2)}  jobs/s: ${parts.join(', ')}`);
  console.log(`${' '.repeat(mode.length)}             ${ratios.join(', ')}`);
}

/** Enqueue → claimed, on an idle worker woken by NOTIFY (the real listen() of the transport). */
async function wakeLatency(db: BenchDatabase, admin: pg.Client) {
  await admin.query('truncate public.hd_ingestion_jobs cascade'); // pending artifacts (00025) refer to jobs
  const worker = new PostgresDb({ connectionString: db.url, poolSize: 2 });
  const enqueuer = await b.connect(db.url, 'hd-bench-enqueue');
  let waiter: ((claimed: { at: number; id: string; token: string }) => void) | undefined;
  const claim = async () => {
    const [job] = await worker.claimLeases({ workerId: 'bench-idle', limit: 1, leaseSeconds: 60 });
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
    await admin.query(`create index bench_fifo_idx on public.hd_ingestion_jobs
      (priority desc, run_after, id) where status = 'queued'`);
    await admin.query(MINIMAL_TABLE);
    for (let i = 0; i < Math.max(...WORKERS, ...BATCH_WORKERS); i++) {
      clients.push(await b.connect(db.url, `hd-bench-${i}`));
    }
    const one = [
      minimalTable(1),
      ourTable('raw', ACCOUNT, rawLoop(OUR_QUEUE, 1)),
      graphileWorker(db.url, {}),
      ourTable('ours', ACCOUNT, oursOne),
    ];
    const names = ['minimal', 'raw', 'graphile', 'ours'];
    console.log(
      'minimal: raw SKIP LOCKED loop on a table of (id, status, payload, run_at); raw: the same loop on hd_ingestion_jobs;',
    );
    console.log(
      `graphile: graphile-worker one pool of N workers (batched: N pools, local queue ${BATCH}, completeJobBatchDelay 0)`,
    );
    for (const workers of WORKERS) {
      const rates = await compare(admin, clients.slice(0, workers), one, JOBS);
      report('one-at-a-time', workers, names, rates, { raw: 0.9, graphile: 1 });
    }
    const batched = [
      minimalTable(BATCH),
      ourTable('raw', ACCOUNT, rawLoop(OUR_QUEUE, BATCH)),
      graphileWorker(db.url, { localQueue: BATCH, concurrency: () => 10 }),
      ourTable('ours', ACCOUNT, oursBatch),
    ];
    for (const workers of BATCH_WORKERS) {
      const rates = await compare(admin, clients.slice(0, workers), batched, BATCH_JOBS);
      report(`batched(${BATCH})`, workers, names, rates, { raw: 0.9, graphile: 1 });
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
  console.log(
    `peak RSS ${b.fmt(b.peakRssMb(), 1)} MB (bench process: Node, pg clients, graphile-worker pools)`,
  );
}

await main();
