import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Job, LeasedJob } from '../contract/jobs.ts';
import type { Config } from '../control-plane/config.ts';
import { createLogger } from '../control-plane/logger.ts';
import { PACKAGE_ROOT } from '../control-plane/package-root.ts';
import type { Launcher } from '../scheduler/launcher.ts';
import {
  DockerLauncher,
  LABELS,
  type DockerLauncherOptions,
} from '../scheduler/launchers/docker.ts';
import { DockerReconciler } from '../scheduler/reconcile.ts';
import { RunnerAccess } from '../scheduler/runner-access.ts';
import { handlerResources, Scheduler } from '../scheduler/scheduler.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import {
  containersOf,
  removeContainersOf,
  requireDocker,
  skipNote,
  testImage,
} from './helpers/docker.ts';
import { ACCOUNT_A, ACCOUNT_B, jsonl, putObject, tempDir, testConfig } from './helpers/runtime.ts';

const d = await requireDocker();
const docker = d.docker!;
const SCHEDULER_ID = `hd-test-${randomBytes(4).toString('hex')}`;
const CLI_SCHEDULER_ID = `${SCHEDULER_ID}-cli`;
const HANG = ['node', '-e', 'setInterval(() => {}, 1000)'];
// Allocates and touches memory until the kernel's OOM killer ends it.
const ALLOCATE = ['node', '-e', 'const a = []; for (;;) a.push(Buffer.alloc(8 << 20, 1));'];
// Grows the V8 heap past --max-old-space-size: Node aborts (exit 134), not the kernel.
const HEAP_HOG = 'const a = []; for (;;) a.push(new Array(1e5).fill(Math.random()));';
const silent = createLogger({ level: 'silent' });

let t: TestDatabase;
let root: string;
let image: string;
let config: Config;
const schedulers: Scheduler[] = [];
const children: ChildProcess[] = [];

beforeAll(async () => {
  if (!d.available) return;
  [image, t, root] = await Promise.all([testImage(docker), createTestDatabase(), tempDir()]);
  await chmod(root, 0o755); // runner containers read it as uid 1000
  // Embedded PostgreSQL listens on 127.0.0.1 only: the runners share the host network.
  config = testConfig(t.url, root, {
    HD_WORKER_ID: SCHEDULER_ID,
    HD_POLL_INTERVAL_MS: '200',
    HD_DOCKER_NETWORK: 'host',
    HD_JOB_TYPES: 'import_assets_jsonl',
    HD_LOG_LEVEL: 'warn',
  });
}, 900_000);
afterEach(async () => {
  await Promise.all(schedulers.splice(0).map((s) => s.stop(0)));
  for (const child of children.splice(0)) if (child.exitCode === null) child.kill('SIGKILL');
});
afterAll(async () => {
  if (!d.available) return;
  const left = await containersOf(docker, [SCHEDULER_ID, CLI_SCHEDULER_ID]);
  await removeContainersOf(docker, [SCHEDULER_ID, CLI_SCHEDULER_ID]);
  await t?.drop();
  expect(left.map((c) => `${c.Names[0]} ${c.State}`)).toEqual([]);
});

/** What the scheduler command gives runners: role hd_runner, never its own URL. */
function runnerAccess() {
  return new RunnerAccess({ ...config, HD_RUNNER_DATABASE_URL: t.runnerUrl }, t.db);
}

function launcher(options: Partial<DockerLauncherOptions> = {}) {
  return new DockerLauncher({
    db: t.db,
    docker,
    schedulerId: SCHEDULER_ID,
    image,
    env: runnerAccess().baseEnv,
    networkMode: 'host',
    storageRoot: root,
    killGraceMs: 2000,
    ...options,
  });
}

/** A scheduler on the docker launcher; `wrap` may adjust the launch (limits, command). */
async function startScheduler(l: DockerLauncher, wrap?: (l: DockerLauncher) => Launcher) {
  const reconciler = new DockerReconciler({
    launcher: l,
    db: t.db,
    schedulerId: SCHEDULER_ID,
    log: silent,
    resourcesFor: handlerResources,
  });
  const scheduler = new Scheduler({
    db: t.db,
    launcher: wrap ? wrap(l) : l,
    config,
    log: silent,
    reconciler,
    runnerEnv: (job, resources) => runnerAccess().envFor(job, resources),
  });
  schedulers.push(scheduler);
  await scheduler.start();
  return scheduler;
}

function ended(scheduler: Scheduler, jobId: string): Promise<Job> {
  return new Promise((resolve) =>
    scheduler.on('job:finished', (job) => {
      if (job.id === jobId && (job.status === 'completed' || job.status === 'failed')) resolve(job);
    }),
  );
}

async function enqueueImport(accountId: string, name: string, rows: unknown[], maxAttempts = 3) {
  const path = `accounts/${accountId}/assets-jsonl/${name}`;
  await putObject(root, 'hd_uploads_raw', path, jsonl(rows));
  return t.db.enqueueJob({
    accountId,
    jobType: 'import_assets_jsonl',
    debug: { bucket: 'hd_uploads_raw', path },
    maxAttempts,
  });
}

/** A claimed job for tests that call the launcher directly. */
async function claimed(jobType = 'docker_probe'): Promise<LeasedJob> {
  const job = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType, debug: {}, maxAttempts: 1 });
  const [leased] = await t.db.claimJobs({
    workerId: SCHEDULER_ID,
    jobId: job.id,
    leaseSeconds: 60,
  });
  return leased as LeasedJob;
}

const gone = (id: string) =>
  docker
    .getContainer(id)
    .inspect()
    .then(
      () => false,
      (e: { statusCode?: number }) => e.statusCode === 404,
    );

const limits = { gpu: false, memoryMb: 256, cpus: 1, timeoutMs: 60_000 };

describe.skipIf(!d.available)(`docker launcher${skipNote(d)}`, () => {
  it('runs an import job end to end in its own container, then removes it', async () => {
    const a = await enqueueImport(ACCOUNT_A, 'docker-a.jsonl', [
      { title: 'A1', source_type: 'upload', source_ref: 'docker-a1' },
      { title: 'A2', source_type: 'upload', source_ref: 'docker-a2' },
    ]);
    const b = await enqueueImport(ACCOUNT_B, 'docker-b.jsonl', [
      { title: 'B1', source_type: 'upload', source_ref: 'docker-b1', account_id: ACCOUNT_A },
    ]);
    // Runners log at info here, so that their output fills hd_job_logs.
    const scheduler = await startScheduler(
      launcher({ env: { ...runnerAccess().baseEnv, HD_LOG_LEVEL: 'info' } }),
    );
    const [doneA, doneB] = await Promise.all([ended(scheduler, a.id), ended(scheduler, b.id)]);
    expect(doneA).toMatchObject({ status: 'completed', attempts: 1, progress_percent: 100 });
    expect(doneA.debug.stats).toMatchObject({ lines: 2, inserted: 2, invalid: 0 });
    expect(doneB.debug.stats).toMatchObject({ lines: 1, inserted: 1, account_id_ignored: 1 });
    const { rows } = await t.sql.query(
      `select account_id, source_ref from hd_assets where source_ref like 'docker-%' order by 2`,
    );
    expect(rows).toEqual([
      { account_id: ACCOUNT_A, source_ref: 'docker-a1' },
      { account_id: ACCOUNT_A, source_ref: 'docker-a2' },
      { account_id: ACCOUNT_B, source_ref: 'docker-b1' },
    ]);
    // The container id reached the row; the container is gone.
    expect(doneA.container_id).toMatch(/^[0-9a-f]{64}$/);
    expect(await gone(doneA.container_id!)).toBe(true);
    // What the runner printed in its container is in hd_job_logs, to its last line.
    const { rows: logs } = await t.sql.query(
      `select account_id, attempt, seq, message from hd_job_logs where job_id = $1 order by seq`,
      [doneA.id],
    );
    expect(logs).toEqual(
      logs.map((l: { message: string }, i) => ({
        ...l,
        account_id: ACCOUNT_A,
        attempt: 1,
        seq: i + 1,
      })),
    );
    expect(logs.map((l: { message: string }) => l.message)).toEqual(
      expect.arrayContaining(['job started', 'job completed']),
    );
    // The image's `run` is the runner's bundle (npm run build, scripts/bundle-runner.ts).
    const { rows: started } = await t.sql.query(
      `select fields from hd_job_logs where job_id = $1 and message = 'job started'`,
      [doneA.id],
    );
    expect(started).toEqual([{ fields: expect.objectContaining({ code_file: 'runner.mjs' }) }]);
  });

  it('hardens the container, as docker inspect shows, and passes selftest inside it', async () => {
    await putObject(root, 'hd_uploads_raw', `accounts/${ACCOUNT_A}/probe.txt`, 'a');
    await putObject(root, 'hd_uploads_raw', `accounts/${ACCOUNT_B}/probe.txt`, 'b');
    const job = await claimed();
    const l = launcher();
    const runner = await l.launch({ job, resources: { ...limits, memoryMb: 512, cpus: 1.5 } });
    try {
      expect((await t.db.getJob(job.id))?.container_id).toBe(runner.id);
      const info = await docker.getContainer(runner.id).inspect();
      expect(info.Name).toBe(`/hd-job-${job.id}-1`);
      expect(info.Config.User).toBe('1000:1000');
      expect(info.Config.Labels).toMatchObject({
        [LABELS.jobId]: job.id,
        [LABELS.attempt]: '1',
        [LABELS.schedulerId]: SCHEDULER_ID,
      });
      expect(info.HostConfig).toMatchObject({
        ReadonlyRootfs: true,
        CapDrop: ['ALL'],
        SecurityOpt: ['no-new-privileges'],
        PidsLimit: 256,
        Memory: 512 * 1024 * 1024,
        MemorySwap: 512 * 1024 * 1024,
        NanoCpus: 1.5e9,
        NetworkMode: 'host',
        Privileged: false,
        // Only the job's own account folder, read-only: other tenants are not there; its
        // own output folder (artifacts) is the one writable place.
        Binds: [
          `${root}/hd_outputs/accounts/${ACCOUNT_A}:/hd-storage/hd_outputs/accounts/${ACCOUNT_A}:ro`,
          `${root}/hd_uploads_raw/accounts/${ACCOUNT_A}:/hd-storage/hd_uploads_raw/accounts/${ACCOUNT_A}:ro`,
          `${root}/hd_outputs/accounts/${ACCOUNT_A}/jobs/${job.id}:/hd-storage/hd_outputs/accounts/${ACCOUNT_A}/jobs/${job.id}:rw`,
        ],
      });
      // No credential of the scheduler's: role hd_runner's URL, no superuser, no service key.
      const env = new Map(
        info.Config.Env.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]),
      );
      expect(env.get('HD_DATABASE_URL')).toBe(t.runnerUrl);
      expect(info.Config.Env.join('\n')).not.toContain(new URL(t.url).password);
      expect([...env.keys()].filter((k) => /SERVICE_ROLE|JWT_SECRET|RUNNER_/.test(k))).toEqual([]);
      expect(info.HostConfig.Tmpfs?.['/tmp']).toMatch(/size=256m/);
      expect(info.Config.Env).toContain(`HD_LEASE_TOKEN=${job.lease_token}`);
      expect(info.Config.Env).toContain('HD_STORAGE_ROOT=/hd-storage');
      expect(info.Config.Env).toContain('NVIDIA_VISIBLE_DEVICES=void'); // a CPU job: no GPU
    } finally {
      runner.stop('cancelled');
      await runner.wait();
    }
    // The same hardened container, running `hd-runner selftest` instead of a job.
    const probe = await claimed();
    const selftest = launcher({ command: ['sh', '-c', 'exec hd-runner selftest', 'selftest'] });
    const exit = await (await selftest.launch({ job: probe, resources: limits })).wait();
    expect(exit.outputTail.join('\n')).toMatch(/ok +user +uid 1000/);
    expect(exit.outputTail.join('\n')).toMatch(/root fs read-only/);
    expect(exit.outputTail.join('\n')).toMatch(/ok +database/);
    expect(exit.outputTail.join('\n')).toMatch(/ok +storage +fs storage \/hd-storage/);
    expect(exit.exitCode).toBe(0);
  });

  it('classifies a kernel OOM kill as OOM_KILLED', async () => {
    const job = await enqueueImport(ACCOUNT_A, 'oom.jsonl', [], 1);
    const scheduler = await startScheduler(launcher({ command: ALLOCATE }), (l) => ({
      launch: (r) => l.launch({ ...r, resources: { ...r.resources, memoryMb: 96 } }),
    }));
    const done = await ended(scheduler, job.id);
    expect(done).toMatchObject({ status: 'failed', error_code: 'OOM_KILLED' });
    expect(done.error_details).toMatchObject({ exit_code: 137, signal: 'SIGKILL' });
  });

  it('replaces a leftover container of the same name (a released attempt) instead of failing', async () => {
    const job = await claimed();
    const leftover = await docker.createContainer({
      name: `hd-job-${job.id}-1`,
      Image: image,
      Labels: { [LABELS.jobId]: job.id, [LABELS.schedulerId]: SCHEDULER_ID },
    });
    const exit = await (
      await launcher({ command: ['node', '-e', '0'] }).launch({ job, resources: limits })
    ).wait();
    expect(exit.exitCode).toBe(0);
    expect(await gone(leftover.id)).toBe(true);
  });

  it('a leftover removed by its own watcher first (404 on our removal) costs the launch nothing', async () => {
    // The race the chaos run showed: a handed-back attempt's container is removed by the
    // scheduler that watched it (after storing its output) between our create's 409 and our
    // removal. The engine is real; the wrapper only lets that removal win, every time.
    const job = await claimed();
    const name = `hd-job-${job.id}-1`;
    const leftover = await docker.createContainer({
      name,
      Image: image,
      Labels: { [LABELS.jobId]: job.id, [LABELS.schedulerId]: SCHEDULER_ID },
    });
    const racing = Object.create(docker) as typeof docker;
    racing.getContainer = (id: string) => {
      const container = docker.getContainer(id);
      if (id !== name) return container;
      const remove = container.remove.bind(container);
      container.remove = (async (opts?: object) => {
        await leftover.remove({ force: true, v: true }); // its own watcher, first
        return remove(opts);
      }) as typeof container.remove;
      return container;
    };
    const exit = await (
      await launcher({ docker: racing, command: ['node', '-e', '0'] }).launch({
        job,
        resources: limits,
      })
    ).wait();
    expect(exit.exitCode).toBe(0);
    expect(await gone(leftover.id)).toBe(true);
  });

  it('counts V8 heap exhaustion (exit 134/139, OOMKilled false) as out of memory', async () => {
    const job = await claimed();
    const l = launcher({ command: ['node', '--max-old-space-size=24', '-e', HEAP_HOG] });
    const exit = await (await l.launch({ job, resources: limits })).wait();
    // Node aborts (134) or, during the abort, faults (139); the kernel did not kill it.
    expect([134, 139]).toContain(exit.exitCode);
    expect(exit.oomKilled).toBe(true);
    expect(exit.outputTail.join('\n')).toMatch(/JavaScript heap out of memory/);
  });

  it("keeps the container of a failed runner when asked, out of reconcile's way", async () => {
    const job = await claimed();
    const l = launcher({ command: ['node', '-e', 'process.exit(3)'], keepFailed: true });
    const exit = await (await l.launch({ job, resources: limits })).wait();
    expect(exit.exitCode).toBe(3);
    const kept = await docker.getContainer(`hd-failed-${job.id}-1`).inspect();
    try {
      expect(kept.State.ExitCode).toBe(3);
      const reconciler = new DockerReconciler({
        launcher: l,
        db: t.db,
        schedulerId: SCHEDULER_ID,
        log: silent,
        resourcesFor: handlerResources,
      });
      await t.db.cancelJob(job.id); // its job ended: a plain container would be removed
      const result = await reconciler.reconcile(() => undefined);
      expect(result.removed.map((r) => r.containerId)).not.toContain(kept.Id);
    } finally {
      await docker.getContainer(kept.Id).remove({ force: true });
    }
  });

  it('kills a runner that runs past its time limit: PROCESSING_TIMEOUT', async () => {
    const job = await enqueueImport(ACCOUNT_A, 'slow.jsonl', [], 1);
    const l = launcher({ command: HANG, timeoutBackstopMs: 0 });
    const scheduler = await startScheduler(l, (inner) => ({
      launch: (r) => inner.launch({ ...r, resources: { ...r.resources, timeoutMs: 1500 } }),
    }));
    const done = await ended(scheduler, job.id);
    expect(done).toMatchObject({ status: 'failed', error_code: 'PROCESSING_TIMEOUT' });
    expect(await gone(done.container_id!)).toBe(true);
  });

  it('stops and removes the container of a job cancelled while it runs', async () => {
    const job = await enqueueImport(ACCOUNT_A, 'cancel.jsonl', []);
    const scheduler = await startScheduler(launcher({ command: HANG }));
    const finished = ended(scheduler, job.id);
    await expect.poll(() => t.db.getJob(job.id).then((j) => j?.container_id)).toBeTruthy();
    const containerId = (await t.db.getJob(job.id))!.container_id!;
    await expect
      .poll(() => docker.getContainer(containerId).inspect())
      .toMatchObject({
        State: { Running: true },
      });
    await t.db.cancelJob(job.id, 'stop it');
    expect(await finished).toMatchObject({ status: 'failed', error_code: 'CANCELLED' });
    expect(await gone(containerId)).toBe(true);
  });

  it('survives SIGKILL of the scheduler mid-job: re-adopts, completes once, leaks nothing', async () => {
    const rows = Array.from({ length: 20_000 }, (_, i) => ({
      title: `Asset ${i}`,
      source_type: 'upload',
      source_ref: `kill-${i}`,
      metadata: { i, note: 'x'.repeat(64) },
    }));
    const job = await enqueueImport(ACCOUNT_B, 'big.jsonl', rows);
    const { child: first } = startCliScheduler();
    await expect
      .poll(() => t.db.getJob(job.id).then((j) => j?.container_id), { timeout: 30_000 })
      .toBeTruthy();
    const containerId = (await t.db.getJob(job.id))!.container_id!;
    const container = docker.getContainer(containerId);
    await expect.poll(() => container.inspect()).toMatchObject({ State: { Running: true } });
    // Frozen mid-job so it is still at work whatever the machine's speed; it keeps its
    // lease (60 s) meanwhile, as a runner does while its scheduler is down.
    await container.pause();
    first.kill('SIGKILL');
    await once(first, 'exit');
    const { child: second, output } = startCliScheduler();
    await expect
      .poll(() => output.join(''), { timeout: 30_000 })
      .toMatch(/re-adopted a running runner/);
    await container.unpause();
    await expect
      .poll(() => t.db.getJob(job.id).then((j) => j?.status), { timeout: 90_000, interval: 250 })
      .toBe('completed');
    await expect.poll(() => gone(containerId), { timeout: 15_000 }).toBe(true);
    second.kill('SIGTERM');
    await once(second, 'exit');
    const done = (await t.db.getJob(job.id))!;
    expect(done).toMatchObject({ attempts: 1, container_id: containerId });
    expect(done.debug.stats).toMatchObject({ lines: rows.length, inserted: rows.length });
    const { rows: count } = await t.sql.query(
      `select count(*)::int as n from hd_assets where source_ref like 'kill-%'`,
    );
    expect(count[0].n).toBe(rows.length);
    // The re-adopting scheduler stored the runner's later lines, numbered on.
    const { rows: logs } = await t.sql.query(
      `select seq, message from hd_job_logs where job_id = $1 and attempt = 1 order by seq`,
      [job.id],
    );
    expect(logs.at(-1)).toMatchObject({ message: 'job completed' });
    expect(new Set(logs.map((l: { seq: number }) => l.seq)).size).toBe(logs.length);
    expect(await containersOf(docker, [CLI_SCHEDULER_ID])).toEqual([]);
  }, 180_000);

  it('reconciles: removes a container whose job ended, gives back a job whose container is gone', async () => {
    const l = launcher({ command: HANG });
    const done = await claimed();
    const zombie = await l.launch({ job: done, resources: limits });
    await t.db.completeJob(done.id, done.lease_token, {});
    const orphan = await claimed();
    await t.db.setContainerId(orphan.id, orphan.lease_token, 'f'.repeat(64));
    const reconciler = new DockerReconciler({
      launcher: l,
      db: t.db,
      schedulerId: SCHEDULER_ID,
      log: silent,
      resourcesFor: handlerResources,
      now: () => Date.now() + 60_000, // past the grace for launches in flight
    });
    const result = await reconciler.reconcile(() => undefined);
    expect(result.removed).toContainEqual({
      containerId: zombie.id,
      jobId: done.id,
      why: 'the job is completed',
    });
    expect(result.gaveBack).toContain(orphan.id);
    expect(await t.db.getJob(orphan.id)).toMatchObject({ status: 'queued', attempts: 0 });
    await zombie.wait();
    expect(await gone(zombie.id)).toBe(true);
  });
});

/** `hd-runner scheduler --launcher docker` as its own process, to be SIGKILLed. */
function startCliScheduler(): { child: ChildProcess; output: string[] } {
  const child = spawn(
    process.execPath,
    [join(PACKAGE_ROOT, 'cli', 'main.ts'), 'scheduler', '--launcher', 'docker'],
    {
      env: {
        PATH: process.env.PATH,
        HD_DATABASE_URL: t.url,
        HD_RUNNER_DATABASE_URL: t.runnerUrl,
        HD_STORAGE_ROOT: root,
        HD_WORKER_ID: CLI_SCHEDULER_ID,
        HD_DOCKER_IMAGE: image,
        HD_DOCKER_NETWORK: 'host',
        HD_POLL_INTERVAL_MS: '200',
        HD_GPUS: 'none',
        HD_JOB_TYPES: 'import_assets_jsonl',
        HD_LOG_LEVEL: 'info',
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  const output: string[] = [];
  child.stderr!.setEncoding('utf8').on('data', (text: string) => output.push(text));
  children.push(child);
  return { child, output };
}
