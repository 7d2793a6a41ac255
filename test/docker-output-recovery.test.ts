import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LeasedJob } from '../contract/jobs.ts';
import { createLogger } from '../control-plane/logger.ts';
import { JobLogBook } from '../scheduler/job-logs.ts';
import { DockerLauncher } from '../scheduler/launchers/docker.ts';
import { DockerReconciler, type RunnerOutput } from '../scheduler/reconcile.ts';
import { handlerResources } from '../scheduler/scheduler.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import {
  containersOf,
  removeContainersOf,
  requireDocker,
  skipNote,
  testImage,
} from './helpers/docker.ts';
import { startDockerRelay } from './helpers/outage-relay.ts';
import { ACCOUNT_A, tempDir } from './helpers/runtime.ts';

// Real Docker containers and PostgreSQL: what a runner container prints while no
// scheduler watches it (its scheduler was SIGKILLed) reaches hd_job_logs through the
// next scheduler's reconcile, each line once, numbered as its launch numbered it; and
// what a watched container prints while the scheduler's log stream is cut, before the
// container is removed.
const d = await requireDocker();
const docker = d.docker!;
const SCHEDULER_ID = `hd-test-${randomBytes(4).toString('hex')}`;
const silent = createLogger({ level: 'silent' });
const limits = { gpu: false, memoryMb: 256, cpus: 1, timeoutMs: 60_000 };
// Prints three lines, then waits; on SIGTERM prints a last one and exits.
const PRINT_AND_WAIT = [
  'node',
  '-e',
  "for (const l of ['one', 'two', 'three']) console.log(l); process.on('SIGTERM', () => { console.log('bye'); process.exit(0); }); setInterval(() => {}, 1000);",
];
const PRINT_AND_EXIT = ['node', '-e', "for (const l of ['one', 'two', 'three']) console.log(l);"];

let t: TestDatabase;
let image: string;
beforeAll(async () => {
  if (!d.available) return;
  [image, t] = await Promise.all([testImage(docker), createTestDatabase()]);
}, 900_000);
afterAll(async () => {
  if (!d.available) return;
  const left = await containersOf(docker, [SCHEDULER_ID]);
  await removeContainersOf(docker, [SCHEDULER_ID]);
  await t?.drop();
  expect(left.map((c) => `${c.Names[0]} ${c.State}`)).toEqual([]);
});

function launcher(command: string[]) {
  return new DockerLauncher({
    db: t.db,
    docker,
    schedulerId: SCHEDULER_ID,
    image,
    command,
    env: {},
  });
}

/** Launched as a scheduler launches it, by one that then died: nobody follows it. */
async function startUnwatched(l: DockerLauncher, job: LeasedJob) {
  const container = await docker.createContainer(
    l.createOptions({ job, resources: limits, logSeqBase: 0 }),
  );
  await t.db.setContainerId(job.id, job.lease_token, container.id);
  await container.start();
  return container;
}

async function claimed(): Promise<LeasedJob> {
  const job = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'docker_probe', debug: {} });
  const [leased] = await t.db.claimJobs({
    workerId: SCHEDULER_ID,
    jobId: job.id,
    leaseSeconds: 60,
  });
  return leased as LeasedJob;
}

/** What the next scheduler does: a reconcile with its log book. */
async function reconcileWith(l: DockerLauncher, book: JobLogBook) {
  const output: RunnerOutput = {
    follow: (job, seqBase) => book.sinkFor(job, seqBase),
    store: (job, seqBase, lines) => book.store(job, seqBase, lines),
  };
  const reconciler = new DockerReconciler({
    launcher: l,
    db: t.db,
    schedulerId: SCHEDULER_ID,
    log: silent,
    resourcesFor: handlerResources,
  });
  return reconciler.reconcile(() => undefined, output);
}

async function storedLines(jobId: string) {
  const { rows } = await t.sql.query<{ seq: number; message: string }>(
    'select seq, message from hd_job_logs where job_id = $1 order by attempt, seq',
    [jobId],
  );
  return rows.map((r) => `${r.seq} ${r.message}`);
}

/** Until the container has printed `lines` lines. */
async function printed(l: DockerLauncher, containerId: string, lines: number) {
  await expect.poll(async () => (await l.readOutput(containerId)).length).toBe(lines);
}

describe.skipIf(!d.available)(`runner output while no scheduler watched${skipNote(d)}`, () => {
  it('a re-adopted container: read from its start, lines stored before kept once', async () => {
    const job = await claimed();
    const l = launcher(PRINT_AND_WAIT);
    const container = await startUnwatched(l, job);
    await printed(l, container.id, 3);
    // Lines printed in an earlier second than the re-adoption (`docker logs --since` counts
    // whole seconds): followed "from now on" they would be missed.
    const started = Date.parse((await container.inspect()).State.StartedAt);
    await expect.poll(() => Date.now() - started, { timeout: 10_000 }).toBeGreaterThan(2000);
    // That scheduler had stored its first line.
    await t.db.appendJobLogs(job.id, job.lease_token, [
      { seq: 1, level: 'info', message: 'one', fields: null, logged_at: new Date().toISOString() },
    ]);
    const book = new JobLogBook({ db: t.db, log: silent });
    const { adopted } = await reconcileWith(l, book);
    expect(adopted.map((a) => a.job.id)).toEqual([job.id]);
    adopted[0]!.runner.stop('shutdown');
    await adopted[0]!.runner.wait();
    expect(await book.close()).toBe(0);
    await adopted[0]!.runner.outputStored?.(); // as the scheduler does: the container goes
    expect(await storedLines(job.id)).toEqual(['1 one', '2 two', '3 three', '4 bye']);
  });

  it('a container that ended its job unwatched: its output stored, then it is removed', async () => {
    const job = await claimed();
    const l = launcher(PRINT_AND_EXIT);
    const container = await startUnwatched(l, job);
    await container.wait();
    // It recorded its own outcome, as a runner does, while no scheduler ran.
    await t.db.completeJob(job.id, job.lease_token, {});
    const book = new JobLogBook({ db: t.db, log: silent });
    const result = await reconcileWith(l, book);
    expect(result.removed.map((r) => r.jobId)).toContain(job.id);
    expect(await storedLines(job.id)).toEqual(['1 one', '2 two', '3 three']);
    await expect(container.inspect()).rejects.toMatchObject({ statusCode: 404 });
  });
});

describe.skipIf(!d.available)(`runner output the followed log stream missed${skipNote(d)}`, () => {
  it('lines printed while the engine connection was cut are stored before the container goes', async () => {
    const job = await claimed();
    // The scheduler reaches the engine through a relay the test cuts: an engine restart
    // as the scheduler sees it (the machine's engine serves others: never stopped).
    const dir = await tempDir();
    const socketPath = join(dir, 'docker.sock');
    const engine = await startDockerRelay(socketPath);
    try {
      const l = new DockerLauncher({
        db: t.db,
        docker: new Docker({ socketPath }),
        schedulerId: SCHEDULER_ID,
        image,
        command: PRINT_AND_WAIT,
        env: {},
      });
      const logs = new JobLogBook({ db: t.db, log: silent }).open(job);
      const followed: string[] = [];
      const runner = await l.launch({
        job,
        resources: limits,
        logSeqBase: await logs.seqBase,
        onOutput: (line) => {
          followed.push(line);
          logs.push(line);
        },
      });
      await expect.poll(() => followed, { timeout: 30_000 }).toEqual(['one', 'two', 'three']);
      await engine.down(); // the followed stream drops
      // Through the machine's engine: the runner prints its last line and exits.
      const container = docker.getContainer(runner.id);
      await container.kill({ signal: 'SIGTERM' });
      await container.wait({ condition: 'not-running' });
      await engine.up();
      // Its end is seen (a wait cut by the outage once hung here for good).
      expect((await runner.wait()).exitCode).toBe(0);
      // As the scheduler does: the output stored, then the container goes.
      expect(await logs.done()).toBe(0);
      await runner.outputStored?.();
      expect(await storedLines(job.id)).toEqual(['1 one', '2 two', '3 three', '4 bye']);
      await expect(container.inspect()).rejects.toMatchObject({ statusCode: 404 });
    } finally {
      await engine.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
