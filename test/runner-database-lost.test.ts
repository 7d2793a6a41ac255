import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT_CODES } from '../contract/errors.ts';
import { configToEnv } from '../control-plane/config.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { startDbRelay, type OutageRelay } from './helpers/outage-relay.ts';
import { ACCOUNT_A, jsonl, putObject, tempDir, testConfig } from './helpers/runtime.ts';

// Real PostgreSQL behind a relay the test cuts (the database stopping, as a runner sees it),
// `hd-runner run` and `hd-runner scheduler --launcher process` as child processes, fs storage.
const ROWS = 30_000;
let t: TestDatabase;
let relay: OutageRelay & { url: string };
let root: string;
beforeAll(async () => {
  t = await createTestDatabase();
  relay = await startDbRelay(t.url);
  root = await tempDir('hd-db-lost-');
});
afterAll(async () => {
  await relay?.close();
  await t?.drop();
});

/** An import long enough (small batches) to be cut off mid-way. */
async function importJob(name: string) {
  const path = `accounts/${ACCOUNT_A}/assets-jsonl/${name}.jsonl`;
  const rows = Array.from({ length: ROWS }, (_, r) => ({
    title: `t${r}`,
    source_type: 'test',
    source_ref: `${name}-${r}`,
  }));
  await putObject(root, 'hd_uploads_raw', path, jsonl(rows));
  return t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'import_assets_jsonl', debug: { path } });
}

const imported = async (jobId: string) =>
  (
    await t.sql.query<{ n: number }>(
      'select count(*)::int as n from hd_assets where import_job_id = $1',
      [jobId],
    )
  ).rows[0]!.n;

/** Cuts the database once the job has written its first rows but not all of them. */
async function cutMidJob(jobId: string) {
  await expect.poll(() => imported(jobId), { timeout: 60_000, interval: 20 }).toBeGreaterThan(0);
  await relay.down();
  expect(await imported(jobId)).toBeLessThan(ROWS);
}

const runs = (pid: number) => {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};

const config = (env: Record<string, string> = {}) =>
  testConfig(relay.url, root, { HD_IMPORT_BATCH_SIZE: '20', HD_LOG_LEVEL: 'info', ...env });

describe('a runner that loses the database mid-job', () => {
  it('`hd-runner run` exits 14 and records nothing', async () => {
    const job = await importJob('alone');
    const runner = execa(process.execPath, ['cli/main.ts', 'run', '--job-id', job.id], {
      env: { PATH: process.env.PATH ?? '', ...configToEnv(config()) },
      extendEnv: false,
      reject: false,
    });
    try {
      await cutMidJob(job.id);
      const result = await runner;
      expect(result.exitCode, result.stderr).toBe(EXIT_CODES.databaseLost);
      expect(result.stderr).toContain('database_lost: DATABASE_UNAVAILABLE');
      expect(result.stderr).toContain('lost the database, nothing recorded');
    } finally {
      runner.kill('SIGKILL');
      await relay.up();
    }
    // Nothing recorded: still its running attempt, for a scheduler (or the reaper) to settle.
    expect(await t.db.getJob(job.id)).toMatchObject({
      status: 'running',
      attempts: 1,
      error_code: null,
    });
  }, 120_000);

  it('`hd-runner run` whose completion lost its answer asks again: completed once, said once, exit 0', async () => {
    // The commit happens; the reply never comes back (the connection drops on its way).
    const path = `accounts/${ACCOUNT_A}/assets-jsonl/answer-lost.jsonl`;
    await putObject(
      root,
      'hd_uploads_raw',
      path,
      jsonl([{ title: 't', source_type: 'test', source_ref: 'lost-1' }]),
    );
    const job = await t.db.enqueueJob({
      accountId: ACCOUNT_A,
      jobType: 'import_assets_jsonl',
      debug: { path, next_stages: ['text2kg'] },
    });
    const dropped = relay.dropAnswerTo('hd_complete_job(');
    const result = await execa(process.execPath, ['cli/main.ts', 'run', '--job-id', job.id], {
      env: { PATH: process.env.PATH ?? '', ...configToEnv(config()) },
      extendEnv: false,
      reject: false,
    });
    await dropped;
    expect(result.exitCode, result.stderr).toBe(EXIT_CODES.completed);
    const said = (message: string) =>
      result.stderr.split('\n').filter((line) => line.includes(`"msg":"${message}"`)).length;
    expect(said('no answer to the completion; asking again until the lease ends')).toBe(1);
    expect(said('job completed')).toBe(1);
    expect(await t.db.getJob(job.id)).toMatchObject({ status: 'completed', attempts: 1 });
    // Its next stage queued once, though the completion was asked for twice.
    const { rows } = await t.sql.query(
      `select job_type from hd_ingestion_jobs where debug #>> '{pipeline,parent_job_id}' = $1`,
      [job.id],
    );
    expect(rows).toEqual([{ job_type: 'text2kg' }]);
  }, 120_000);

  it('`hd-runner run` handed a lease while the database is down exits 14, not a crash', async () => {
    const job = await importJob('at-start');
    const [claimed] = await t.db.claimJobs({ workerId: 'w', jobId: job.id, leaseSeconds: 60 });
    await relay.down();
    try {
      const env = { ...configToEnv(config()), HD_LEASE_TOKEN: claimed!.lease_token! };
      const result = await execa(process.execPath, ['cli/main.ts', 'run', '--job-id', job.id], {
        env: { PATH: process.env.PATH ?? '', ...env },
        extendEnv: false,
        reject: false,
      });
      expect(result.exitCode, result.stderr).toBe(EXIT_CODES.databaseLost);
    } finally {
      await relay.up();
    }
    expect(await t.db.getJob(job.id)).toMatchObject({ status: 'running', error_code: null });
  }, 120_000);

  it('under a scheduler: handed back with no attempt spent, then completed once the database is back', async () => {
    const job = await importJob('scheduled');
    const env = { PATH: process.env.PATH ?? '', ...configToEnv(config({ HD_SLOTS: '1' })) };
    const scheduler = spawn(
      process.execPath,
      ['cli/main.ts', 'scheduler', '--launcher', 'process'],
      {
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let output = '';
    for (const stream of [scheduler.stdout, scheduler.stderr])
      stream.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise((r) => scheduler.once('exit', r));
    try {
      await expect
        .poll(async () => (await t.db.getJob(job.id))?.container_id ?? '', { timeout: 60_000 })
        .toMatch(/^process:\d+:/);
      const pid = Number(/^process:(\d+):/.exec((await t.db.getJob(job.id))!.container_id!)![1]);
      await cutMidJob(job.id);
      // The runner gives up while the database is still down; then it comes back.
      await expect.poll(() => runs(pid), { timeout: 60_000, interval: 50 }).toBe(false);
      // (Echoed by the scheduler from the runner's output file, which it follows.)
      await expect.poll(() => output).toContain('lost the database, nothing recorded');
      await relay.up();
      await expect
        .poll(async () => (await t.db.getJob(job.id))?.status, { timeout: 120_000, interval: 200 })
        .toBe('completed');
    } finally {
      await relay.up();
      scheduler.kill('SIGTERM');
      await exited;
    }
    // The cut-off attempt was refunded: the one that completed is the only one counted.
    expect(await t.db.getJob(job.id)).toMatchObject({
      status: 'completed',
      attempts: 1,
      error_code: null,
    });
    expect(output).not.toContain('CRASHED');
    expect(await imported(job.id)).toBe(ROWS);
  }, 240_000);
});
