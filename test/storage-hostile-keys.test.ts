import { randomUUID } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HdError } from '../contract/errors.ts';
import { tenantPrefix } from '../contract/storage-paths.ts';
import { SupabaseStorage } from '../control-plane/storage/supabase.ts';
import { TenantStorage } from '../control-plane/storage/storage.ts';
import { enqueueImportFile } from '../cli/commands/enqueue.ts';
import { runJob } from '../runner/run-job.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import {
  ACCOUNT_A,
  ACCOUNT_B,
  jsonl,
  memoryLogger,
  tempDir,
  testConfig,
} from './helpers/runtime.ts';
import { startLocalSupabase, type LocalSupabase } from './helpers/supabase-proxy.ts';

// Tenant B's job handed keys and bucket names meant to reach tenant A's objects, through
// TenantStorage over the `supabase` backend. Supabase Storage cannot run here: the
// stand-in of test/helpers/storage-server.ts records the path each request ARRIVED with
// (after the client's URL parser), which is what the real server would act on.
let t: TestDatabase;
let supabase: LocalSupabase;
let work: string;
const BUCKET = 'hd_uploads_raw';
const A = tenantPrefix(ACCOUNT_A);
const B = tenantPrefix(ACCOUNT_B);
const SECRET = `${A}secret.jsonl`;
const SECRET_ROWS = jsonl([{ title: 'A only', source_type: 'doc', source_ref: 'a-secret' }]);

beforeAll(async () => {
  t = await createTestDatabase();
  supabase = await startLocalSupabase(t.url);
  await supabase.storage.createBucket(BUCKET);
  await supabase.storage.putObject(BUCKET, SECRET, SECRET_ROWS);
  await supabase.storage.putObject(BUCKET, `${B}x.jsonl`, 'b\n');
  work = await tempDir('hd-hostile-keys-');
});
afterAll(async () => {
  await supabase.stop();
  await t.drop();
});

const secretTail = `${ACCOUNT_A}/secret.jsonl`;
const HOSTILE_KEYS = [
  `${B}%2e%2e/${secretTail}`,
  `${B}%2E%2E/${secretTail}`,
  `${B}.%2E/${secretTail}`,
  `${B}%2e./${secretTail}`,
  `${B}x/%2e%2e/%2e%2e/${secretTail}`,
  `${B}%252e%252e/${secretTail}`,
  `${B}..%2F${ACCOUNT_A}%2Fsecret.jsonl`,
  `${B}../${secretTail}`,
  `${B}./../${secretTail}`,
  `${B}x/../../${secretTail}`,
  `${B}/../${secretTail}`,
  `${B}x.jsonl?/../../${secretTail}`,
  `${B}x.jsonl#/../../${secretTail}`,
  `${B}x\\..\\..\\${ACCOUNT_A}\\secret.jsonl`,
  `${B}\u0000/../${secretTail}`,
  `${B}\uff0e\uff0e/${secretTail}`,
  `/${SECRET}`,
  SECRET,
  `${B}../../accounts/${secretTail}`,
];
const HOSTILE_BUCKETS = [
  `${BUCKET}/${SECRET}#`,
  `${BUCKET}/${SECRET}?`,
  `${BUCKET}/${A}secret.jsonl?x=`,
  `${BUCKET}%2F${A.replaceAll('/', '%2F')}secret.jsonl%23`,
  `${BUCKET}/..`,
  '..',
];

/** Every request from `from` on reached B's prefix in the right bucket, and nothing else. */
function expectOnlyUnderB(from: number, what: string) {
  for (const request of supabase.storage.requests.slice(from)) {
    if (request.key === undefined) continue; // a HEAD or PATCH of an upload created below
    expect(request.bucket, `${what}: ${request.path}`).toBe(BUCKET);
    expect(request.key.startsWith(B), `${what}: ${request.path}`).toBe(true);
    expect(request.key.split('/'), `${what}: ${request.path}`).not.toContain('..');
  }
}

async function refusal(promise: Promise<unknown>): Promise<HdError> {
  const error = await promise.then(
    () => new Error('expected a refusal'),
    (e: unknown) => e,
  );
  if (!(error instanceof HdError)) throw error;
  return error;
}

describe('hostile keys through TenantStorage over the supabase backend', () => {
  const local = () => join(work, 'upload.jsonl');
  const backends = () => ({
    simple: new SupabaseStorage({ url: supabase.url, serviceRoleKey: supabase.serviceRoleKey }),
    resumable: new SupabaseStorage({
      url: supabase.url,
      serviceRoleKey: supabase.serviceRoleKey,
      resumableAboveBytes: 0,
    }),
  });

  it.each(HOSTILE_KEYS)('key %j stays under B (download and upload)', async (key) => {
    await writeFile(local(), 'planted\n');
    const from = supabase.storage.requests.length;
    for (const [name, backend] of Object.entries(backends())) {
      const storage = new TenantStorage(backend, ACCOUNT_B, work);
      expect((await refusal(storage.download(BUCKET, key))).code, name).toBe('PATH_OUTSIDE_TENANT');
      const upload = storage.upload(BUCKET, key, local(), 'application/x-ndjson');
      expect((await refusal(upload)).code, name).toBe('PATH_OUTSIDE_TENANT');
    }
    expectOnlyUnderB(from, key);
    expect((await supabase.storage.readObject(BUCKET, SECRET))?.toString()).toBe(SECRET_ROWS);
  });

  it.each(HOSTILE_BUCKETS)('bucket %j is refused before any request', async (bucket) => {
    await writeFile(local(), 'planted\n');
    const from = supabase.storage.requests.length;
    for (const backend of Object.values(backends())) {
      const storage = new TenantStorage(backend, ACCOUNT_B, work);
      expect((await refusal(storage.download(bucket, `${B}x.jsonl`))).code).toBe('INVALID_INPUT');
      const upload = storage.upload(bucket, `${B}x.jsonl`, local(), 'text/plain');
      expect((await refusal(upload)).code).toBe('INVALID_INPUT');
      // The backend checks too, for callers that do not go through TenantStorage.
      expect((await refusal(backend.download(bucket, `${B}x.jsonl`, work))).code).toBe(
        'INVALID_INPUT',
      );
    }
    expect(supabase.storage.requests.length).toBe(from);
  });

  it('plain keys of B go through, with the path received equal to the key', async () => {
    const storage = new TenantStorage(backends().simple, ACCOUNT_B, work);
    const key = `${B}with space/(1) a&b$c@d=e;f:g+h,i!j*k'l.jsonl`;
    await writeFile(local(), 'plain\n');
    const from = supabase.storage.requests.length;
    await storage.upload(BUCKET, key, local(), 'application/x-ndjson');
    const file = await storage.download(BUCKET, key);
    expect(await readFile(file.path, 'utf8')).toBe('plain\n');
    expect(supabase.storage.requests.slice(from).map((r) => r.key)).toEqual([key, key]);
  });

  // Why URLs are built here: the stand-in is fooled exactly as the real server was when
  // supabase-js put the key into the URL as it is (issue 12).
  it('the stand-in reproduces the hole supabase-js leaves open (so the tests above can fail)', async () => {
    const { client } = backends().simple;
    const from = supabase.storage.requests.length;
    const viaKey = await client.storage.from(BUCKET).download(`${B}%2e%2e/${secretTail}`);
    const viaBucket = await client.storage.from(`${BUCKET}/${SECRET}#`).download(`${B}x.jsonl`);
    for (const { data } of [viaKey, viaBucket]) expect(await data?.text()).toBe(SECRET_ROWS);
    expect(supabase.storage.requests.slice(from).map((r) => r.key)).toEqual([SECRET, SECRET]);
  });
});

describe('jobs of B whose inputs point at A through encoded dots (the issue-12 reproductions)', () => {
  /** Runs the job as `hd-runner run` does, over the supabase backend. */
  async function run(jobId: string) {
    const from = supabase.storage.requests.length;
    await runJob({
      db: t.db,
      storage: new SupabaseStorage({ url: supabase.url, serviceRoleKey: supabase.serviceRoleKey }),
      config: testConfig(t.url, work),
      log: memoryLogger().log,
      jobId,
    });
    expect(supabase.storage.requests.length, 'no request reached Storage').toBe(from);
    return t.db.getJob(jobId);
  }

  it('import_assets_jsonl fails PATH_OUTSIDE_TENANT and imports none of A’s rows into B', async () => {
    const job = await t.db.enqueueJob({
      accountId: ACCOUNT_B,
      jobType: 'import_assets_jsonl',
      debug: { bucket: BUCKET, path: `${B}%2e%2e/${secretTail}` },
    });
    expect(await run(job.id)).toMatchObject({
      status: 'failed',
      error_code: 'PATH_OUTSIDE_TENANT',
    });
    const { rows } = await t.sql.query(`select count(*)::int as n from hd_assets`);
    expect(rows).toEqual([{ n: 0 }]);
  });

  it('extract_text with such a hd_document_files.storage_path gives B no chunk of A’s file', async () => {
    const documentId = randomUUID();
    await t.sql.query(
      `insert into hd_document_files (account_id, document_id, bucket, storage_path, mime_type, size_bytes)
       values ($1, $2, $3, $4, 'text/plain', $5)`,
      [ACCOUNT_B, documentId, BUCKET, `${B}%2E%2E/${secretTail}`, SECRET_ROWS.length],
    );
    const job = await t.db.enqueueJob({
      accountId: ACCOUNT_B,
      jobType: 'extract_text',
      documentId,
      debug: {},
    });
    expect(await run(job.id)).toMatchObject({
      status: 'failed',
      error_code: 'PATH_OUTSIDE_TENANT',
    });
    const { rows } = await t.sql.query(`select count(*)::int as n from hd_asset_chunks`);
    expect(rows).toEqual([{ n: 0 }]);
  });
});

describe('enqueue maps any file name into the allowed key characters', () => {
  it('uploads under a readable transliteration and keeps the name as given', async () => {
    const given = 'Müller Straße #3 (Entwurf) 100%.jsonl';
    const file = join(work, given);
    await writeFile(file, jsonl([{ title: 't', source_type: 'doc', source_ref: 'm-1' }]));
    const storage = new SupabaseStorage({
      url: supabase.url,
      serviceRoleKey: supabase.serviceRoleKey,
    });
    const job = await enqueueImportFile(t.db, storage, testConfig(t.url, work), {
      accountId: ACCOUNT_A,
      file,
    });
    const path = job.debug.path as string;
    expect(path).toMatch(
      new RegExp(`^${A}assets-jsonl/\\d+-Muller Strasse _3 \\(Entwurf\\) 100_\\.jsonl$`),
    );
    expect(job.debug.original_name).toBe(given);
    expect((await supabase.storage.readObject(BUCKET, path))?.toString()).toContain('m-1');
  });
});
