import { execa } from 'execa';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { LeasedJob } from '../contract/jobs.ts';
import { jobOutputPrefix, OUTPUTS_BUCKET } from '../contract/storage-paths.ts';
import { configToEnv, loadConfig } from '../control-plane/config.ts';
import { artifactsOf } from '../control-plane/db/artifacts.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_B, tempDir } from './helpers/runtime.ts';
import {
  startLocalSupabase,
  type LocalSupabase,
  supabaseSettings,
} from './helpers/supabase-proxy.ts';

// `hd-runner scheduler` with Supabase storage and scoped runners removes, once a job's
// runner ended, what an earlier attempt stored through an upload grant and never recorded
// (00030: such an object was never checked against its declared size). Supabase Storage
// cannot run here: the stand-in replaces its wire format and keeps storage.objects rows.
let t: TestDatabase;
let supabase: LocalSupabase;
beforeAll(async () => {
  t = await createTestDatabase();
  supabase = await startLocalSupabase(t.url);
  await supabase.storage.createBucket('hd_uploads_raw');
  await supabase.storage.createBucket(OUTPUTS_BUCKET);
});
afterAll(async () => {
  await supabase?.stop();
  await t?.drop();
});

it('removes an earlier attempt’s granted, unrecorded upload when the job’s runner ends', async () => {
  // Its input is missing: the runner fails at once (FILE_NOT_FOUND), which is enough here.
  const job = await t.db.enqueueJob({
    accountId: ACCOUNT_B,
    jobType: 'import_assets_jsonl',
    debug: { path: `accounts/${ACCOUNT_B}/assets-jsonl/absent.jsonl` },
  });
  // An earlier attempt began 7 bytes, was granted the key, stored 1 MiB, never recorded.
  const [earlier] = (await t.db.claimJobs({
    workerId: 'earlier-host',
    jobId: job.id,
    leaseSeconds: 600,
  })) as LeasedJob[];
  const spec = {
    kind: 'preview',
    name: 'x.txt',
    contentType: 'text/plain',
    sha256: '0'.repeat(64),
  };
  const store = artifactsOf(t.db);
  const { storage_path: key } = await store.begin(job.id, earlier!.lease_token, {
    ...spec,
    sizeBytes: 7,
  });
  expect(key).toBe(`${jobOutputPrefix(ACCOUNT_B, job.id)}preview/x.txt`);
  expect(await store.grantUpload(job.id, earlier!.lease_token, key)).toBe(7);
  await supabase.storage.putObject(OUTPUTS_BUCKET, key, Buffer.alloc(1 << 20));
  await t.db.releaseJob(job.id, earlier!.lease_token);

  const config = loadConfig({
    ...supabaseSettings(supabase),
    HD_LAUNCHER: 'process',
    HD_RUNNER_OUTPUT_DIR: await tempDir('hd-sweep-output-'),
    HD_WORKER_ID: 'sweep-host',
    HD_POLL_INTERVAL_MS: '200',
    HD_LOG_LEVEL: 'info',
  });
  const scheduler = execa(process.execPath, ['cli/main.ts', 'scheduler', '--slots', '1'], {
    env: { PATH: process.env.PATH ?? '', ...configToEnv(config) },
    extendEnv: false,
    reject: false,
  });
  try {
    await expect
      .poll(async () => (await t.db.getJob(job.id))?.status, { timeout: 30_000 })
      .toBe('failed');
    await expect
      .poll(() => supabase.storage.readObject(OUTPUTS_BUCKET, key), { timeout: 10_000 })
      .toBeUndefined();
  } finally {
    scheduler.kill('SIGTERM');
  }
  const result = await scheduler;
  const { rows } = await t.sql.query(
    `select (select count(*)::int from storage.objects where name = $1) as objects,
            (select count(*)::int from hd_private.pending_artifacts where job_id = $2) as pending,
            (select count(*)::int from hd_artifacts where job_id = $2) as recorded`,
    [key, job.id],
  );
  expect(rows).toEqual([{ objects: 0, pending: 0, recorded: 0 }]);
  const warning = result.stderr
    .split('\n')
    .filter((line) => line.includes('never recorded'))
    .map((line) => JSON.parse(line) as { msg: string; job_id: string; keys: string[] });
  expect(warning).toMatchObject([
    {
      msg: 'removed objects uploaded through a grant and never recorded (their size was never checked)',
      job_id: job.id,
      keys: [key],
    },
  ]);
}, 60_000);
