import { execa } from 'execa';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Job } from '../contract/jobs.ts';
import { configToEnv, type Config } from '../control-plane/config.ts';
import { secretsOf } from '../control-plane/redact.ts';
import { createScheduler } from '../cli/commands/scheduler.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { insertChunks, llmTestConfig, newDocument } from './helpers/llm-stages.ts';
import { startOpenAiStandIn, type OpenAiStandIn } from './helpers/openai-server.ts';
import { ACCOUNT_B, memoryLogger } from './helpers/runtime.ts';

// An OpenAI-compatible endpoint that echoes the caller's API key in its 401 body, as
// some gateways do (a stand-in HTTP server: OpenAI cannot be reached from here). The key
// must appear nowhere a tenant reads (the job row, hd_job_logs) nor in the scheduler's
// own log or the runner output it prints.
const KEY = 'sk-echoed-9f8e7d6c5b4a39281706f5e4d3c2b1a0';
let t: TestDatabase;
let server: OpenAiStandIn;
let config: Config;

beforeAll(async () => {
  t = await createTestDatabase();
  server = await startOpenAiStandIn();
  server.respond((request) => ({
    kind: 'status',
    status: 401,
    body: {
      error: {
        message: `Incorrect API key provided: ${String(request.authorization).replace(/^Bearer /, '')}`,
        type: 'invalid_request_error',
        code: 'invalid_api_key',
      },
    },
  }));
  config = await llmTestConfig(t, server, {
    HD_LLM_API_KEY: KEY,
    HD_LLM_MAX_RETRIES: '0',
    HD_LOG_LEVEL: 'debug',
    HD_POLL_INTERVAL_MS: '100',
    HD_RUNNER_DATABASE_URL: t.runnerUrl,
  });
});
afterAll(async () => {
  await server?.close();
  await t?.drop();
});

it('keeps an API key that the endpoint echoes out of every log and tenant-readable row', async () => {
  const document = newDocument();
  await insertChunks(t, ACCOUNT_B, document, ['Acme buys Beta.']);
  const { log, lines: schedulerLog } = memoryLogger('debug', secretsOf(config));
  const printed: string[] = [];
  const env = { PATH: process.env.PATH ?? '', ...configToEnv(config) };
  const scheduler = createScheduler(config, t.db, log, env, (_id, line) => printed.push(line));
  const job = await t.db.enqueueJob({
    accountId: ACCOUNT_B,
    jobType: 'extract_interpretations',
    documentId: document,
    debug: {},
  });
  const ended = new Promise<Job>((resolve) =>
    scheduler.on('job:finished', (finished) => {
      if (finished.id === job.id && finished.status !== 'running') resolve(finished);
    }),
  );
  await scheduler.start();
  let failed: Job;
  try {
    failed = await ended;
  } finally {
    await scheduler.stop(0);
  }
  // The echo really happened: the endpoint received the key and answered with it.
  expect(server.requests.some((r) => r.authorization === `Bearer ${KEY}`)).toBe(true);
  expect(failed).toMatchObject({ status: 'failed', error_code: 'LLM_FAILED' });

  const { rows: logRows } = await t.sql.query(
    `select message, fields from hd_job_logs where job_id = $1 order by attempt, seq`,
    [job.id],
  );
  expect(logRows.length).toBeGreaterThan(0);
  const row = await t.db.getJob(job.id);
  const shown = await execa(process.execPath, ['cli/main.ts', 'jobs', 'show', job.id, '--logs'], {
    env: { PATH: process.env.PATH ?? '', HD_DATABASE_URL: t.url },
    extendEnv: false,
    reject: false,
  });
  const places = {
    hd_job_logs: JSON.stringify(logRows),
    job_row: JSON.stringify(row),
    scheduler_log: schedulerLog.join('\n'),
    runner_output: printed.join('\n'),
    jobs_show: shown.stdout + shown.stderr,
  };
  for (const [place, text] of Object.entries(places)) {
    expect(text.length, place).toBeGreaterThan(0);
    expect(text, place).not.toContain(KEY);
    expect(text, place).not.toContain('9f8e7d6c5b4a3928'); // no part of it either
  }
  // The runner did log the failure with its cause, redacted by value.
  expect(places.runner_output).toMatch(/Incorrect API key provided: \[redacted\]/);
  // Tenants read a code and a line: no stack frame, no path of this host.
  expect(places.hd_job_logs).not.toMatch(/\bat .*\.(ts|js):\d+:\d+/);
  expect(places.hd_job_logs).not.toContain(process.cwd());
  expect(places.job_row).not.toContain(process.cwd());
});

it('jobs show hides a configured secret that a row already holds (written by an older version)', async () => {
  // A secret no shape rule knows: only the value from this machine's settings hides it.
  const plain = 'transcribe-key-5f4e3d2c1b0a';
  const job = await t.db.enqueueJob({
    accountId: ACCOUNT_B,
    jobType: 'import_assets_jsonl',
    debug: { note: `copied from a log: ${plain}` },
  });
  const shown = await execa(process.execPath, ['cli/main.ts', 'jobs', 'show', job.id, '--json'], {
    env: { PATH: process.env.PATH ?? '', HD_DATABASE_URL: t.url, HD_TRANSCRIBE_API_KEY: plain },
    extendEnv: false,
    reject: false,
  });
  expect(shown.exitCode, shown.stderr).toBe(0);
  expect(JSON.parse(shown.stdout)).toMatchObject({
    debug: { note: 'copied from a log: [redacted]' },
  });
  expect(shown.stdout).not.toContain(plain);
});
