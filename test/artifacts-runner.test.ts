import { createHash, randomUUID } from 'node:crypto';
import { execa } from 'execa';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { LeasedJob } from '../contract/jobs.ts';
import { OUTPUTS_BUCKET } from '../contract/storage-paths.ts';
import { loadConfig } from '../control-plane/config.ts';
import { supabaseUrlSigner } from '../control-plane/storage/signed-urls.ts';
import { RunnerAccess } from '../scheduler/runner-access.ts';
import { uploadGrantsFor, type UploadGrants } from '../scheduler/upload-grants.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, memoryLogger } from './helpers/runtime.ts';
import {
  startLocalSupabase,
  type LocalSupabase,
  supabaseSettings,
} from './helpers/supabase-proxy.ts';

// The production path of an artifact on Supabase: `hd-runner run` as a child process
// holding only what a scheduler hands it (its job token, a signed download URL per input,
// the upload-grant address), the scheduler's grant service signing one upload URL per key.
// PostgREST is the real server; Storage is the stand-in (it cannot run here).
let t: TestDatabase;
let supabase: LocalSupabase;
let grants: UploadGrants;
let access: RunnerAccess;

beforeAll(async () => {
  t = await createTestDatabase();
  supabase = await startLocalSupabase(t.url);
  await supabase.storage.createBucket('hd_uploads_raw');
  await supabase.storage.createBucket(OUTPUTS_BUCKET);
  const config = loadConfig({
    HD_WORKER_ID: 'artifacts-runner',
    HD_LOG_LEVEL: 'silent',
    ...supabaseSettings(supabase),
  });
  grants = (await uploadGrantsFor(config, t.db, memoryLogger().log))!;
  access = new RunnerAccess(
    { ...config, HD_UPLOAD_GRANT_URL: grants.url },
    t.db,
    supabaseUrlSigner(supabase.url, supabase.serviceRoleKey),
  );
});
afterAll(async () => {
  await grants?.close();
  await supabase?.stop();
  await t?.drop();
});

it('a runner with scoped credentials stores extract_text results through granted upload URLs', async () => {
  const documentId = randomUUID();
  const key = `accounts/${ACCOUNT_A}/documents/${documentId}/memo.md`;
  const memo = '# Memo\n\nAcme Corp audits Müller GmbH.\n';
  await supabase.storage.putObject('hd_uploads_raw', key, memo, 'text/markdown');
  await t.sql.query(
    `insert into hd_document_files (account_id, document_id, storage_path, mime_type, size_bytes)
     values ($1, $2, $3, 'text/markdown', $4)`,
    [ACCOUNT_A, documentId, key, Buffer.byteLength(memo)],
  );
  const queued = await t.db.enqueueJob({
    accountId: ACCOUNT_A,
    jobType: 'extract_text',
    documentId,
    debug: { include_texts: true },
  });
  const [job] = (await t.db.claimJobs({
    workerId: 'artifacts-runner',
    jobId: queued.id,
    leaseSeconds: 60,
  })) as LeasedJob[];
  const limits = { gpu: false, memoryMb: 512, cpus: 1, timeoutMs: 60_000 };
  const env: Record<string, string> = {
    ...access.baseEnv,
    ...(await access.envFor(job!, limits)),
    HD_LEASE_TOKEN: job!.lease_token,
  };
  expect(env.HD_UPLOAD_GRANT_URL).toBe(grants.url);
  expect(JSON.stringify(env)).not.toContain(supabase.serviceRoleKey);
  expect(JSON.stringify(env)).not.toContain(supabase.postgrest.jwtSecret);

  const run = await execa(process.execPath, ['cli/main.ts', 'run', '--job-id', job!.id], {
    env: { PATH: process.env.PATH ?? '', ...env },
    extendEnv: false,
    reject: false,
  });
  expect(run.exitCode, run.stderr).toBe(0);
  const { rows } = await t.sql.query(
    `select kind, name, storage_path, size_bytes::int as bytes, sha256 from hd_artifacts
      where job_id = $1 order by kind`,
    [job!.id],
  );
  expect(rows.map((r) => `${r.kind}/${r.name}`)).toEqual([
    'archive/artifacts.zip',
    'page_text/memo.md/p0001.md',
  ]);
  for (const row of rows) {
    const stored = await supabase.storage.readObject(OUTPUTS_BUCKET, row.storage_path);
    expect(stored, row.name).toBeDefined();
    expect(createHash('sha256').update(stored!).digest('hex')).toBe(row.sha256);
  }
  const text = await supabase.storage.readObject(OUTPUTS_BUCKET, rows[1].storage_path);
  expect(String(text)).toBe('# memo.md, page 1\n\n# Memo\n\nAcme Corp audits Müller GmbH.\n');
  // Each upload went to a URL signed for its one key, never with a key of the runner's own.
  const puts = supabase.storage.requests.filter((r) => r.method === 'PUT');
  expect(puts.map((r) => r.path.split('?')[0])).toEqual(
    rows
      .slice()
      .reverse()
      .map((r) => `/object/upload/sign/${OUTPUTS_BUCKET}/${r.storage_path}`),
  );
});
