import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configToEnv } from '../control-plane/config.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, ACCOUNT_B, tempDir, testConfig } from './helpers/runtime.ts';

// `hd-runner enqueue --batch` and `hd-runner batches …` as an operator runs them: a child
// process against the suite's PostgreSQL, files uploaded into fs storage.
let t: TestDatabase;
let env: Record<string, string>;
let storageRoot: string;
let files: string[];
beforeAll(async () => {
  t = await createTestDatabase();
  storageRoot = await tempDir();
  env = { PATH: process.env.PATH ?? '', ...configToEnv(testConfig(t.url, storageRoot)) };
  const dir = await tempDir();
  files = [];
  for (const name of ['a.jsonl', 'b.jsonl', 'Müller.jsonl']) {
    const file = join(dir, name);
    await writeFile(file, `{"title": "${name}"}\n`);
    files.push(file);
  }
});
afterAll(() => t.drop());

function cli(...args: string[]) {
  return execa(process.execPath, ['cli/main.ts', ...args], {
    env,
    extendEnv: false,
    reject: false,
  });
}

async function batchCount(): Promise<number> {
  return (await t.sql.query('select count(*)::int as n from hd_batches')).rows[0].n;
}

describe('hd-runner enqueue --batch', () => {
  it('uploads every file and queues one job per file as one batch', async () => {
    const run = await cli('enqueue', '--account', ACCOUNT_A, '--batch', 'monday', ...files);
    expect(run.exitCode, run.stderr).toBe(0);
    const batchId = run.stdout.trim();
    const show = await cli('batches', 'show', batchId.slice(0, 8), '--json');
    expect(show.exitCode, show.stderr).toBe(0);
    const batch = JSON.parse(show.stdout);
    expect(batch).toMatchObject({ id: batchId, name: 'monday', status: 'active', total: 3 });
    expect(
      batch.jobs.map((j: { debug: { original_name: string } }) => j.debug.original_name).sort(),
    ).toEqual(['Müller.jsonl', 'a.jsonl', 'b.jsonl']);
    for (const job of batch.jobs) {
      expect(job).toMatchObject({ job_type: 'import_assets_jsonl', batch_id: batchId });
      const uploaded = await readFile(join(storageRoot, job.debug.bucket, job.debug.path), 'utf8');
      expect(uploaded).toBe(`{"title": "${job.debug.original_name}"}\n`);
    }
  });

  it('queues nothing when a file is missing, and names it', async () => {
    const before = await batchCount();
    const missing = join(await tempDir(), 'nope.jsonl');
    const run = await cli('enqueue', '--account', ACCOUNT_A, '--batch', 'x', files[0]!, missing);
    expect(run.exitCode).toBe(2);
    expect(run.stderr).toContain(`enqueue: ${missing} is not a readable file`);
    expect(await batchCount()).toBe(before);
  });

  it('returns the first batch for an idempotency key used again', async () => {
    const args = ['enqueue', '--account', ACCOUNT_B, '--batch', 'k', '--idempotency-key', 'k1'];
    const first = await cli(...args, ...files);
    const second = await cli(...args, files[0]!, '--json');
    expect(second.exitCode, second.stderr).toBe(0);
    const again = JSON.parse(second.stdout);
    expect(again.id).toBe(first.stdout.trim());
    expect(again.total).toBe(3);
    expect(again.jobs).toHaveLength(3);
  });

  it('wants --batch for several files', async () => {
    const run = await cli('enqueue', '--account', ACCOUNT_A, '--file', files[0]!, files[1]!);
    expect(run.exitCode).toBe(2);
    expect(run.stderr).toContain('several files need --batch NAME');
  });
});

describe('hd-runner batches', () => {
  it('cancels and requeues a batch, and refuses when there is nothing to do', async () => {
    const run = await cli('enqueue', '--account', ACCOUNT_A, '--batch', 'stop me', ...files);
    const id = run.stdout.trim();
    const cancel = await cli('batches', 'cancel', id, '--reason', 'wrong files');
    expect(cancel.exitCode, cancel.stderr).toBe(0);
    expect(cancel.stdout.trim()).toBe(
      `${id} cancelled: 0/3 completed, 0 failed, 3 cancelled, 0 running, 0 queued`,
    );
    const { rows } = await t.sql.query(
      'select distinct error from hd_ingestion_jobs where batch_id = $1',
      [id],
    );
    expect(rows).toEqual([{ error: 'wrong files' }]);

    const again = await cli('batches', 'cancel', id, '--json');
    expect(again.exitCode).toBe(1);
    expect(JSON.parse(again.stdout).error).toEqual({
      code: 'WRONG_STATE',
      message: `batch ${id} has no queued or running job (cancelled: 0/3 completed, 0 failed, 3 cancelled, 0 running, 0 queued): nothing to cancel; nothing changed`,
    });
    const requeue = await cli('batches', 'requeue', id, '--json');
    expect(requeue.exitCode, requeue.stderr).toBe(0);
    expect(JSON.parse(requeue.stdout)).toMatchObject({ status: 'active', queued: 3, cancelled: 0 });
  });

  it('lists batches newest first, names escaped, filtered by account and status', async () => {
    await cli('enqueue', '--account', ACCOUNT_B, '--batch', 'evil\u001b[2J\nname', files[0]!);
    const list = await cli('batches', 'list', '--account', ACCOUNT_B);
    expect(list.exitCode, list.stderr).toBe(0);
    const lines = list.stdout.split('\n');
    expect(lines[0]).toMatch(/^id +account +name +status +progress +total/);
    expect(lines[2]).toContain('evil\\u001b[2J\\nname');
    expect(list.stdout).not.toContain('\u001b');
    expect(list.stdout).not.toContain('monday'); // account A's
    const done = await cli('batches', 'list', '--status', 'completed', '--json');
    expect(JSON.parse(done.stdout)).toEqual([]);
    const bad = await cli('batches', 'list', '--status', 'done');
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toContain('--status must be one of active, completed, failed, cancelled');
  });

  it('says which batch id start is unknown', async () => {
    const run = await cli('batches', 'show', 'ffff0000');
    expect(run.exitCode).toBe(1);
    expect(run.stderr).toBe('hd-runner: NOT_FOUND: no batch id starts with ffff0000');
  });
});
