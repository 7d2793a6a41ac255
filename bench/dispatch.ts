// Dispatch: queued → container running through the scheduler and the docker launcher,
// against a bare `docker run` of the same image and command, in the same run; plus
// the enqueue → claim wake-up over LISTEN/NOTIFY on an idle scheduler.
// "Running" is the moment the container's process prints Date.now(): both paths pay
// the same Node start-up inside the container, so the difference is the dispatch. A
// second anchor, the Engine API alone, shows what the queue itself adds.
// Usage: HD_BENCH_IMAGE=hd-runner:latest node bench/dispatch.ts (needs a Docker engine;
// build the image first: see docs/containers.md). Samples: BENCH_DISPATCH_SAMPLES (30).
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import Docker from 'dockerode';
import type { Job } from '../contract/jobs.ts';
import { loadConfig } from '../control-plane/config.ts';
import { PostgresDb } from '../control-plane/db/postgres.ts';
import { createLogger } from '../control-plane/logger.ts';
import { DockerLauncher } from '../scheduler/launchers/docker.ts';
import { Scheduler } from '../scheduler/scheduler.ts';
import * as b from './lib.ts';

const IMAGE = process.env.HD_BENCH_IMAGE ?? 'hd-runner:latest';
const SAMPLES = b.envInt('BENCH_DISPATCH_SAMPLES', 30);
const ACCOUNT = 'bbbbbbbb-0000-4000-8000-00000000d150';
const JOB_TYPE = 'bench_dispatch';
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
const config = loadConfig({
  HD_DATABASE_URL: database.url,
  HD_WORKER_ID: 'bench-dispatch',
  HD_SLOTS: '1',
  HD_JOB_TYPES: JOB_TYPE,
  HD_LOG_LEVEL: 'silent',
});
const started = new Map<string, (printedAt: number) => void>();
const launcher = new DockerLauncher({
  db,
  docker,
  schedulerId: 'bench-dispatch',
  image: IMAGE,
  env: { HD_LOG_LEVEL: 'silent' },
  networkMode: 'host',
  command: PRINT_NOW,
  onOutput: (jobId, line) => {
    const match = /^t=(\d+)$/.exec(line);
    if (match) started.get(jobId)?.(Number(match[1]));
  },
});
const scheduler = new Scheduler({
  db,
  launcher,
  config,
  log: createLogger({ level: 'silent' }),
});
await scheduler.start();

/** Ours: enqueue → the container's first line; also enqueue → claimed (the wake-up). */
async function viaScheduler(): Promise<{ dispatchMs: number; wakeMs: number }> {
  const t0 = Date.now();
  const job = await db.enqueueJob({ accountId: ACCOUNT, jobType: JOB_TYPE, debug: {} });
  const claimed = new Promise<number>((resolve) => {
    const onClaimed = (j: Job) => {
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
try {
  await bareDockerRun(); // warm-up: page cache, image layers
  await viaScheduler();
  for (let i = 0; i < SAMPLES; i++) {
    bare.push(await bareDockerRun());
    api.push(await bareApiRun());
    const sample = await viaScheduler();
    ours.push(sample.dispatchMs);
    wake.push(sample.wakeMs);
  }
} finally {
  await scheduler.stop(0);
  await db.close();
  await database.stop();
}

const row = (name: string, v: number[]) =>
  `  ${name.padEnd(34)} p50 ${b.fmt(b.median(v)).padStart(5)} ms   p95 ${b.fmt(b.percentile(v, 95)).padStart(5)} ms`;
console.log(row('anchor: bare `docker run --rm`', bare));
console.log(row('anchor: Engine API create + start', api));
console.log(row('ours: queued → container running', ours));
console.log(row('ours: enqueue → claimed (NOTIFY)', wake));
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
