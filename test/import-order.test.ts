import { afterAll, beforeAll, expect, it } from 'vitest';
import { createLogger } from '../control-plane/logger.ts';
import { FsStorage } from '../control-plane/storage/fs.ts';
import { runJob } from '../runner/run-job.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, jsonl, putObject, tempDir, testConfig } from './helpers/runtime.ts';

let t: TestDatabase;
beforeAll(async () => {
  t = await createTestDatabase();
});
afterAll(() => t.drop());

it('keeps the last line of a repeated key, with batches written in parallel, on every run', async () => {
  const root = await tempDir();
  // Batches of one row, so every line is its own write and the parallel writes race.
  const config = testConfig(t.url, root, { HD_IMPORT_BATCH_SIZE: '1' });
  const lines = [];
  for (let i = 1; i <= 40; i++)
    lines.push({ title: `version ${i}`, source_type: 'doc', source_ref: 'repeated' });
  for (let i = 1; i <= 40; i++)
    lines.push({ title: `other ${i}`, source_type: 'doc', source_ref: `other-${i}` });
  const path = `accounts/${ACCOUNT_A}/assets-jsonl/repeated.jsonl`;
  await putObject(root, 'hd_uploads_raw', path, jsonl(lines));
  const job = await t.db.enqueueJob({
    accountId: ACCOUNT_A,
    jobType: 'import_assets_jsonl',
    debug: { path },
  });
  const run = () =>
    runJob({
      db: t.db,
      storage: new FsStorage(root),
      config,
      log: createLogger({ level: 'silent' }),
      jobId: job.id,
    });
  const titles = async () =>
    (
      await t.sql.query(
        `select source_ref, title from hd_assets where account_id = $1 order by source_ref`,
        [ACCOUNT_A],
      )
    ).rows;

  expect((await run()).outcome).toBe('completed');
  const first = await titles();
  expect(first.find((r) => r.source_ref === 'repeated')).toEqual({
    source_ref: 'repeated',
    title: 'version 40',
  });
  expect(first).toHaveLength(41);
  await t.db.requeueJob(job.id);
  expect((await run()).outcome).toBe('completed');
  expect(await titles()).toEqual(first);
});
