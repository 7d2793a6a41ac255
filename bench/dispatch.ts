// Dispatch: queued → container running through the scheduler and the docker launcher,
// against a bare `docker run` of the same image and command, in the same run; plus
// the enqueue → claim wake-up over LISTEN/NOTIFY on an idle scheduler.
// "Running" is the moment the container's process prints Date.now(): both paths pay
// the same Node start-up inside the container, so the difference is the dispatch. A
// second anchor, the Engine API alone, shows what the queue itself adds.
// Metrics: a second scheduler with the /metrics server (scraped once during each of its
// dispatches, far more often than Prometheus's 15 s) against the first, without, interleaved.
// Usage: HD_BENCH_IMAGE=hd-runner:latest node bench/dispatch.ts (needs a Docker engine;
// build the image first: see docs/containers.md). Samples: BENCH_DISPATCH_SAMPLES (30).
import { execFile } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import Docker from 'dockerode';
import type { ClaimedJob, Job } from '../contract/jobs.ts';
import { loadConfig } from '../control-plane/config.ts';
import { PostgresDb } from '../control-plane/db/postgres.ts';
import { createLogger } from '../control-plane/logger.ts';
import { DockerLauncher } from '../scheduler/launchers/docker.ts';
import { registerCapacityMetrics } from '../scheduler/metrics-capacity.ts';
import { SchedulerMetrics, startMetricsServer } from '../scheduler/metrics.ts';
import { Scheduler, type SchedulerEvents } from '../scheduler/scheduler.ts';
import * as b from './lib.ts';

const IMAGE = process.env.HD_BENCH_IMAGE ?? 'hd-runner:latest';
const SAMPLES = b.envInt('BENCH_DISPATCH_SAMPLES', 30);
const ACCOUNT = 'bbbbbbbb-0000-4000-8000-00000000d150';
const JOB_TYPE = 'bench_dispatch';
const JOB_TYPE_METERED = 'bench_dispatch_metrics';
const PRINT_NOW = ['node', '-e', 'console.log("t=" + Date.now())'];
const DOCKER_CLI = existsSync('/usr/bin/docker') ? '/usr/bin/docker' : 'docker';
const run = promisify(execFile);

const docker = new Docker();
try {
  await docker.ping();
} catch (error) {
  console.log(`dispatch: skipped, no Docker engine (${(error as Error).message})`);
  process.exit(0);
}
try {
  await docker.getImage(IMAGE).inspect();
} catch {
  console.error(
    `bench/dispatch: image ${IMAGE} not found; build it (docs/containers.md) or set HD_BENCH_IMAGE`,
  );
  process.exit(2);
}

console.log(`dispatch: ${b.machineLine()}, image ${IMAGE}, ${SAMPLES} samples each, interleaved`);
const database = await b.startBenchDatabase();
const db = new PostgresDb({ connectionString: database.url, poolSize: 4 });
const started = new Map<string, (printedAt: number) => void>();

/** A scheduler of one slot for one job type, on the same database and engine. */
function schedulerFor(workerId: string, jobType: string): Scheduler {
  const config = loadConfig({
    HD_DATABASE_URL: database.url,
    HD_WORKER_ID: workerId,
    HD_SLOTS: '1',
    HD_JOB_TYPES: jobType,
    HD_LOG_LEVEL: 'silent',
  });
  const launcher = new DockerLauncher({
    db,
    docker,
    schedulerId: workerId,
    image: IMAGE,
    env: { HD_LOG_LEVEL: 'silent' },
    networkMode: 'host',
    command: PRINT_NOW,
    onOutput: (jobId, line) => {
      const match = /^t=(\d+)$/.exec(line);
      if (match) started.get(jobId)?.(Number(match[1]));
    },
  });
  return new Scheduler({ db, launcher, config, log: createLogger({ level: 'silent' }) });
}
const scheduler = schedulerFor('bench-dispatch', JOB_TYPE);
const metered = schedulerFor('bench-dispatch-metrics', JOB_TYPE_METERED);
const metricsServer = await startMetricsServer(
  { HD_METRICS_ADDRESS: '127.0.0.1:0', HD_LAUNCHER: 'docker', HD_SLOTS: 1 },
  db,
  metered,
);
await scheduler.start();
await metered.start();

/** One /metrics scrape, in ms (it reads the queue from the database). */
async function scrape(): Promise<number> {
  const t0 = performance.now();
  const response = await fetch(`http://127.0.0.1:${metricsServer.port}/metrics`);
  if (!(await response.text()).includes('hd_scheduler_slots 1')) throw new Error('bad scrape');
  return performance.now() - t0;
}

/** Ours: enqueue → the container's first line; also enqueue → claimed (the wake-up). */
async function viaScheduler(
  scheduler: Scheduler,
  jobType: string,
): Promise<{ dispatchMs: number; wakeMs: number }> {
  const t0 = Date.now();
  const job = await db.enqueueJob({ accountId: ACCOUNT, jobType, debug: {} });
  const claimed = new Promise<number>((resolve) => {
    const onClaimed = (j: ClaimedJob) => {
      if (j.id !== job.id) return;
      scheduler.off('job:claimed', onClaimed);
      resolve(Date.now());
    };
    scheduler.on('job:claimed', onClaimed);
  });
  const printed = new Promise<number>((resolve) => started.set(job.id, resolve));
  const finished = new Promise<void>((resolve) => {
    const onFinished = (j: Job) => {
      if (j.id !== job.id) return;
      scheduler.off('job:finished', onFinished);
      resolve();
    };
    scheduler.on('job:finished', onFinished);
  });
  const [claimedAt, printedAt] = await Promise.all([claimed, printed]);
  await finished; // the scheduler is idle again before the next sample
  started.delete(job.id);
  return { dispatchMs: printedAt - t0, wakeMs: claimedAt - t0 };
}

/** Anchor: `docker run --rm` of the same image and command. */
async function bareDockerRun(): Promise<number> {
  const t0 = Date.now();
  const [entrypoint, ...args] = PRINT_NOW;
  const { stdout } = await run(DOCKER_CLI, [
    'run',
    '--rm',
    '--network',
    'host',
    '--entrypoint',
    entrypoint!,
    IMAGE,
    ...args,
  ]);
  return Number(/t=(\d+)/.exec(stdout)![1]) - t0;
}

/** Second anchor: the Engine API alone (create + start, no queue, no CLI process). */
async function bareApiRun(): Promise<number> {
  const t0 = Date.now();
  const container = await docker.createContainer({
    Image: IMAGE,
    Entrypoint: [PRINT_NOW[0]!],
    Cmd: PRINT_NOW.slice(1),
    HostConfig: { NetworkMode: 'host' },
  });
  await container.start();
  await container.wait();
  const output = await container.logs({ stdout: true, stderr: true, follow: false });
  await container.remove({ force: true });
  return Number(/t=(\d+)/.exec(output.toString('latin1'))![1]) - t0;
}

const api: number[] = [];
const ours: number[] = [];
const wake: number[] = [];
const bare: number[] = [];
const withMetrics: number[] = [];
const scrapes: number[] = [];
/** The metered scheduler, its /metrics scraped while it dispatches. */
async function viaMeteredScheduler(): Promise<number> {
  const [sample, scrapeMs] = await Promise.all([viaScheduler(metered, JOB_TYPE_METERED), scrape()]);
  scrapes.push(scrapeMs);
  return sample.dispatchMs;
}
try {
  await bareDockerRun(); // warm-up: page cache, image layers
  await viaScheduler(scheduler, JOB_TYPE);
  await viaMeteredScheduler();
  scrapes.length = 0;
  for (let i = 0; i < SAMPLES; i++) {
    bare.push(await bareDockerRun());
    api.push(await bareApiRun());
    // Alternating which goes first, so a drift of the machine's load hits both alike.
    if (i % 2 === 1) withMetrics.push(await viaMeteredScheduler());
    const sample = await viaScheduler(scheduler, JOB_TYPE);
    ours.push(sample.dispatchMs);
    wake.push(sample.wakeMs);
    if (i % 2 === 0) withMetrics.push(await viaMeteredScheduler());
  }
} finally {
  await Promise.all([scheduler.stop(0), metered.stop(0)]);
  await metricsServer.close();
  await db.close();
  await database.stop();
}

const row = (name: string, v: number[]) =>
  `  ${name.padEnd(34)} p50 ${b.fmt(b.median(v)).padStart(5)} ms   p95 ${b.fmt(b.percentile(v, 95)).padStart(5)} ms`;
console.log(row('anchor: bare `docker run --rm`', bare));
console.log(row('anchor: Engine API create + start', api));
console.log(row('ours: queued → container running', ours));
console.log(row('ours: enqueue → claimed (NOTIFY)', wake));
console.log(row('ours with metrics, scraped meanwhile', withMetrics));
console.log(row('a /metrics scrape (queue read)', scrapes));
const ratio = b.median(ours) / b.median(bare);
const ratio95 = b.percentile(ours, 95) / b.percentile(bare, 95);
const apiRatio = b.median(ours) / b.median(api);
console.log(
  `  ratio ours/API: p50 ${b.fmt(apiRatio, 2)}× (the queue's cost: NOTIFY, claim, container_id write)`,
);
console.log(
  `  ratio ours/bare: p50 ${b.fmt(ratio, 2)}× (goal ≤ 1.15×: ${b.verdict(ratio <= 1.15)}), p95 ${b.fmt(ratio95, 2)}×`,
);
console.log(
  `  wake p50 ${b.fmt(b.median(wake), 1)} ms (goal ≤ 20 ms: ${b.verdict(b.median(wake) <= 20)})`,
);
/**
 * The metrics' own work without the noise of containers: what one job adds (its claimed,
 * launched and finished events through every listener) and one scrape's serialisation,
 * with the queue report answered at once (its query runs in PostgreSQL, off this process).
 */
async function metricsWorkAlone(): Promise<{ perJobUs: number; perScrapeMs: number }> {
  const events = new EventEmitter<SchedulerEvents>();
  const report = { job_types: [], webhooks: { pending: 0, delivered: 0, failed: 0 } };
  const alone = new SchedulerMetrics(async () => report);
  alone.attach(events);
  const capacity = { slots: 1, busy: () => 0, launcher: 'docker' };
  registerCapacityMetrics(alone.registry, capacity, events);
  const now = new Date();
  const job = { job_type: JOB_TYPE, run_after: now, started_at: now } as ClaimedJob;
  const done = { ...job, finished_at: now, status: 'completed', error_code: null } as Job;
  const jobs = 100_000;
  let t0 = performance.now();
  for (let i = 0; i < jobs; i++) {
    events.emit('job:claimed', job);
    events.emit('runner:launched', job, 0.1, false);
    events.emit('job:finished', done, undefined);
  }
  const perJobUs = ((performance.now() - t0) * 1000) / jobs;
  const scrapesAlone = 1_000;
  t0 = performance.now();
  for (let i = 0; i < scrapesAlone; i++) await alone.registry.metrics();
  return { perJobUs, perScrapeMs: (performance.now() - t0) / scrapesAlone };
}
const alone = await metricsWorkAlone();
// The figure held against the goal: the metrics' own work per dispatch, with a scrape for
// every dispatch (Prometheus scrapes every 15 s, so far less in service).
const ownShare = (alone.perJobUs / 1000 + alone.perScrapeMs) / b.median(ours);
console.log(
  `  metrics' own work: ${b.fmt(alone.perJobUs, 1)} µs per job + ${b.fmt(alone.perScrapeMs, 2)} ms per scrape = ${b.fmt(ownShare * 100, 3)} % of ours p50 (goal < 2 %: ${b.verdict(ownShare < 0.02)})`,
);
// End to end, on vs off: a difference this small drowns in a loaded machine's noise.
const paired = withMetrics.map((on, i) => on / ours[i]! - 1);
console.log(
  `  end to end, metrics on vs off: p50 ${b.fmt((b.median(withMetrics) / b.median(ours) - 1) * 100, 1)} %, median of adjacent pairs ${b.fmt(b.median(paired) * 100, 1)} %, p95 ${b.fmt((b.percentile(withMetrics, 95) / b.percentile(ours, 95) - 1) * 100, 1)} %`,
);
