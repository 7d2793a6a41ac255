import { readdir } from 'node:fs/promises';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT_CODES } from '../contract/errors.ts';
import { configToEnv, type Config } from '../control-plane/config.ts';
import { createLogger } from '../control-plane/logger.ts';
import { FsStorage } from '../control-plane/storage/fs.ts';
import { runJob } from '../runner/run-job.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, jsonl, putObject, tempDir, testConfig } from './helpers/runtime.ts';

let t: TestDatabase;
let root: string;
let config: Config;
beforeAll(async () => {
  t = await createTestDatabase();
  root = await tempDir();
  config = testConfig(t.url, root);
});
afterAll(() => t.drop());

const log = createLogger({ level: 'silent' });

async function importJob(name: string, rows: unknown[]) {
  const path = `accounts/${ACCOUNT_A}/assets-jsonl/${name}`;
  await putObject(root, 'hd_uploads_raw', path, jsonl(rows));
  return t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'import_assets_jsonl', debug: { path } });
}

/** `hd-runner run` as a user or a container runs it. */
function cli(args: string[], env: Record<string, string> = {}) {
  return execa(process.execPath, ['cli/main.ts', ...args], {
    env: { PATH: process.env.PATH ?? '', ...configToEnv(config), ...env },
    extendEnv: false,
    reject: false,
  });
}

describe('hd-runner run', () => {
  it('claims and completes a queued job, exit 0', async () => {
    const job = await importJob('ok.jsonl', [
      { title: 'T', source_type: 's', source_ref: 'run-ok' },
    ]);
    const result = await cli(['run', '--job-id', job.id]);
    expect(result.exitCode).toBe(EXIT_CODES.completed);
    expect(await t.db.getJob(job.id)).toMatchObject({
      status: 'completed',
      attempts: 1,
      locked_by: 'test-worker',
    });
  });

  it('accepts `--job-id X` without the command, as `docker run hd-runner --job-id X` passes it', async () => {
    const job = await importJob('short.jsonl', [
      { title: 'T', source_type: 's', source_ref: 'run-short' },
    ]);
    expect((await cli(['--job-id', job.id])).exitCode).toBe(0);
  });

  it('records a plain (non-HdError) failure of a handler as INTERNAL_ERROR, never completed', async () => {
    const job = await importJob('plain-error.jsonl', [
      { title: 'T', source_type: 's', source_ref: 'run-plain' },
    ]);
    // A disk that fails the way Node's own errors do: a plain Error, no code.
    const failing = new FsStorage(root);
    failing.download = () => Promise.reject(new Error('disk on fire'));
    const result = await runJob({ db: t.db, storage: failing, config, log, jobId: job.id });
    expect(result.outcome).toBe('retrying'); // INTERNAL_ERROR is retryable
    const after = await t.db.getJob(job.id);
    expect(after).toMatchObject({
      status: 'queued',
      error_code: 'INTERNAL_ERROR',
      attempts: 1,
      lease_token: null,
    });
    expect(after?.status).not.toBe('completed');
    expect(after?.error).toContain('disk on fire');
  });

  it('refuses a job that is not queued, exit 2, naming what to do', async () => {
    const job = await importJob('twice.jsonl', [
      { title: 'T', source_type: 's', source_ref: 'run-twice' },
    ]);
    await cli(['run', '--job-id', job.id]);
    const again = await cli(['run', '--job-id', job.id]);
    expect(again.exitCode).toBe(EXIT_CODES.usage);
    expect(again.stderr).toContain(`job ${job.id} is completed, not queued; requeue it first`);
    const missing = await cli(['run', '--job-id', '00000000-0000-4000-8000-000000000000']);
    expect(missing.exitCode).toBe(EXIT_CODES.usage);
    expect(missing.stderr).toContain('not found');
    const bad = await cli(['run', '--job-id', 'nope']);
    expect(bad.stderr.trim()).toBe('hd-runner: --job-id must be a UUID (got "nope")');
  });

  it('exits 12 and writes nothing when the lease it was handed is not held', async () => {
    const job = await importJob('stolen.jsonl', [
      { title: 'T', source_type: 's', source_ref: 'run-stolen' },
    ]);
    await t.db.claimJobs({ workerId: 'other', jobId: job.id, leaseSeconds: 60 });
    const result = await cli(['run', '--job-id', job.id], {
      HD_LEASE_TOKEN: '00000000-0000-4000-8000-000000000000',
    });
    expect(result.exitCode).toBe(EXIT_CODES.leaseLost);
    const { rows } = await t.sql.query(
      `select count(*)::int as n from hd_assets where source_ref = 'run-stolen'`,
    );
    expect(rows[0].n).toBe(0);
  });

  it('lets a late runner, whose lease expired and was taken over, change nothing', async () => {
    const job = await importJob('late.jsonl', [
      { title: 'Late', source_type: 's', source_ref: 'run-late' },
    ]);
    const [stale] = await t.db.claimJobs({ workerId: 'zombie', jobId: job.id, leaseSeconds: 60 });
    await t.sql.query(`select hd_reap_expired_leases(now() + interval '2 minutes')`);
    await t.sql.query(
      `select hd_claim_jobs('new-owner', null, 1, 600, $1, now() + interval '10 minutes')`,
      [job.id],
    );
    const outcome = await runJob({
      db: t.db,
      storage: new FsStorage(root),
      config,
      log,
      jobId: job.id,
      leaseToken: stale!.lease_token!,
    });
    expect(outcome.outcome).toBe('lease_lost');
    expect(await t.db.getJob(job.id)).toMatchObject({ status: 'running', locked_by: 'new-owner' });
    const { rows } = await t.sql.query(
      `select count(*)::int as n from hd_assets where source_ref = 'run-late'`,
    );
    expect(rows[0].n).toBe(0);
  });

  it('leaves no scratch folder behind: completed, lease refused, not runnable', async () => {
    const work = await tempDir('hd-runner-work-');
    const run = (jobId: string, leaseToken?: string) =>
      runJob({
        db: t.db,
        storage: new FsStorage(root),
        config: testConfig(t.url, root, { HD_WORK_DIR: work }),
        log,
        jobId,
        leaseToken,
      });
    const job = await importJob('scratch.jsonl', [
      { title: 'T', source_type: 's', source_ref: 'run-scratch' },
    ]);
    expect((await run(job.id)).outcome).toBe('completed');
    expect(await readdir(work)).toEqual([]);
    // The folder is made while the lease is taken: a refused lease, or a job that is not
    // queued, must not leave it.
    const handedOver = await importJob('scratch-refused.jsonl', []);
    await t.db.claimJobs({ workerId: 'other', jobId: handedOver.id, leaseSeconds: 60 });
    expect((await run(handedOver.id, '00000000-0000-4000-8000-000000000000')).outcome).toBe(
      'lease_lost',
    );
    expect(await readdir(work)).toEqual([]);
    expect((await run(job.id)).outcome).toBe('not_runnable');
    expect(await readdir(work)).toEqual([]);
  });

  it('records a failure, not a hung lease, when its scratch folder cannot be made', async () => {
    const job = await importJob('no-scratch.jsonl', [
      { title: 'T', source_type: 's', source_ref: 'run-no-scratch' },
    ]);
    const outcome = await runJob({
      db: t.db,
      storage: new FsStorage(root),
      config: testConfig(t.url, root, { HD_WORK_DIR: `${root}/no-such-folder` }),
      log,
      jobId: job.id,
    });
    expect(outcome.outcome).toBe('retrying');
    const row = await t.db.getJob(job.id);
    expect(row).toMatchObject({ status: 'queued', lease_token: null });
    expect(row?.error).toMatch(/could not make a scratch folder/);
    expect(row?.error).not.toContain(root);
  });

  it('hands the job back, attempt not spent, when interrupted', async () => {
    const job = await importJob('interrupted.jsonl', [
      { title: 'T', source_type: 's', source_ref: 'run-int' },
    ]);
    const interrupt = new AbortController();
    interrupt.abort();
    const outcome = await runJob({
      db: t.db,
      storage: new FsStorage(root),
      config,
      log,
      jobId: job.id,
      interrupt: interrupt.signal,
    });
    expect(outcome.outcome).toBe('released');
    expect(await t.db.getJob(job.id)).toMatchObject({
      status: 'queued',
      attempts: 0,
      lease_token: null,
    });
  });
});
