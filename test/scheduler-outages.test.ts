import { on } from 'node:events';
import { join } from 'node:path';
import Docker from 'dockerode';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job } from '../contract/jobs.ts';
import { configToEnv, type Config } from '../control-plane/config.ts';
import { PostgresDb } from '../control-plane/db/postgres.ts';
import { DockerLauncher } from '../scheduler/launchers/docker.ts';
import { ProcessLauncher } from '../scheduler/launchers/process.ts';
import { Scheduler } from '../scheduler/scheduler.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { requireDocker, skipNote } from './helpers/docker.ts';
import { startDbRelay, startDockerRelay } from './helpers/outage-relay.ts';
import {
  ACCOUNT_A,
  jsonl,
  memoryLogger,
  putObject,
  tempDir,
  testConfig,
} from './helpers/runtime.ts';

// Real PostgreSQL and Docker engine, each behind a relay the test takes down (see
// outage-relay.ts); real runners (`hd-runner run` as a child process, a container).
let t: TestDatabase;
let root: string;
let config: Config;
beforeAll(async () => {
  t = await createTestDatabase();
  root = await tempDir();
  config = testConfig(t.url, root, { HD_POLL_INTERVAL_MS: '200', HD_SLOTS: '1' });
});
afterAll(() => t.drop());

async function enqueueImport(name: string) {
  const path = `accounts/${ACCOUNT_A}/assets-jsonl/${name}`;
  await putObject(
    root,
    'hd_uploads_raw',
    path,
    jsonl([{ title: 'T', source_type: 's', source_ref: name }]),
  );
  return t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'import_assets_jsonl', debug: { path } });
}

async function next(scheduler: Scheduler, event: string, jobId: string): Promise<Job> {
  for await (const [job] of on(scheduler, event)) if ((job as Job).id === jobId) return job as Job;
  throw new Error('unreachable: the event stream does not end');
}

const said = (lines: string[], text: string) => lines.some((l) => JSON.parse(l).msg.includes(text));

describe('the scheduler while the database is down at start', () => {
  it('waits, saying so, and starts claiming once the database is back', async () => {
    const relay = await startDbRelay(t.url);
    const db = new PostgresDb({ connectionString: relay.url });
    const { log, lines } = memoryLogger('info');
    const launcher = new ProcessLauncher({
      env: { PATH: process.env.PATH ?? '', ...configToEnv(config) },
    });
    const scheduler = new Scheduler({ db, launcher, config, log });
    const job = await enqueueImport('db-down-at-start.jsonl');
    try {
      await relay.down();
      const started = scheduler.start();
      await expect.poll(() => said(lines, 'the database is not reachable, waiting')).toBe(true);
      expect(await t.db.getJob(job.id)).toMatchObject({ status: 'queued', attempts: 0 });
      const finished = next(scheduler, 'job:finished', job.id);
      await relay.up();
      await started;
      expect(await finished).toMatchObject({ status: 'completed', attempts: 1 });
      expect(said(lines, 'the database is reachable; starting')).toBe(true);
    } finally {
      await scheduler.stop(0);
      await db.close();
      await relay.close();
    }
  });

  it('`hd-runner scheduler` says it waits, and SIGTERM ends the wait with exit 0', async () => {
    const relay = await startDbRelay(t.url);
    await relay.down();
    try {
      const cfg = testConfig(relay.url, root, { HD_LOG_LEVEL: 'info' });
      const cli = execa(process.execPath, ['cli/main.ts', 'scheduler', '--slots', '1'], {
        env: { PATH: process.env.PATH ?? '', ...configToEnv(cfg) },
        extendEnv: false,
        reject: false,
      });
      let stderr = '';
      cli.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      await expect
        .poll(() => stderr.includes('the database is not reachable, waiting'), { timeout: 30_000 })
        .toBe(true);
      cli.kill('SIGTERM');
      const result = await cli;
      expect(result.exitCode).toBe(0);
      expect(result.stderr).not.toContain(new URL(t.url).password);
    } finally {
      await relay.close();
    }
  });

  it('ends the wait when stopped', async () => {
    const relay = await startDbRelay(t.url);
    const db = new PostgresDb({ connectionString: relay.url });
    const { log, lines } = memoryLogger('info');
    const launcher = new ProcessLauncher({ env: {} });
    const scheduler = new Scheduler({ db, launcher, config, log });
    await relay.down();
    try {
      const started = scheduler.start();
      await expect.poll(() => said(lines, 'the database is not reachable, waiting')).toBe(true);
      await scheduler.stop(0);
      await started;
      expect(said(lines, 'scheduler started')).toBe(false);
    } finally {
      await db.close();
      await relay.close();
    }
  });
});

const d = await requireDocker();

describe.skipIf(!d.available)(`the scheduler while the Docker engine is down${skipNote(d)}`, () => {
  it('claims nothing meanwhile, then resumes by itself', async () => {
    const socket = join(await tempDir('hd-engine-'), 'docker.sock');
    const relay = await startDockerRelay(socket);
    const { log, lines } = memoryLogger('info');
    // A stand-in runner that crashes: the scheduler records it, so the job shows it ran.
    const launcher = new DockerLauncher({
      db: t.db,
      docker: new Docker({ socketPath: socket }),
      schedulerId: `outage-test-${process.pid}`,
      image: 'hd-base/node:24-bookworm-slim',
      command: ['node', '-e', 'process.exit(3)'],
      env: {},
      killGraceMs: 2000,
    });
    const scheduler = new Scheduler({ db: t.db, launcher, config, log });
    try {
      await relay.down();
      await scheduler.start();
      const job = await t.db.enqueueJob({
        accountId: ACCOUNT_A,
        jobType: 'import_assets_jsonl',
        debug: { path: 'x' },
      });
      await expect.poll(() => said(lines, 'claiming paused: runners cannot be started')).toBe(true);
      // Several claim rounds later the job is still untouched: no attempt spent.
      const rounds = lines.length;
      await expect.poll(() => lines.length, { timeout: 20_000 }).toBeGreaterThan(rounds);
      expect(await t.db.getJob(job.id)).toMatchObject({ status: 'queued', attempts: 0 });
      const finished = next(scheduler, 'job:finished', job.id);
      await relay.up();
      expect(await finished).toMatchObject({
        status: 'queued',
        attempts: 1,
        error_code: 'CRASHED',
      });
      expect(said(lines, 'the launcher is back; claiming resumes')).toBe(true);
    } finally {
      await scheduler.stop(0);
      await relay.close();
    }
  }, 60_000);
});
