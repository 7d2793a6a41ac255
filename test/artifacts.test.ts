import { createHash } from 'node:crypto';
import { appendFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LeasedJob } from '../contract/jobs.ts';
import { jobOutputPrefix, OUTPUTS_BUCKET } from '../contract/storage-paths.ts';
import { artifactsOf, type ArtifactStore } from '../control-plane/db/artifacts.ts';
import { SupabaseDb } from '../control-plane/db/supabase.ts';
import { signJobToken } from '../control-plane/job-token.ts';
import { FsStorage } from '../control-plane/storage/fs.ts';
import { SignedUrlStorage } from '../control-plane/storage/signed-urls.ts';
import type { StorageBackend } from '../control-plane/storage/storage.ts';
import { SupabaseStorage } from '../control-plane/storage/supabase.ts';
import { ArtifactUploader } from '../runner/artifacts.ts';
import { serveUploadGrants, type UploadGrants } from '../scheduler/upload-grants.ts';
import {
  supabaseObjectRemover,
  supabaseUploadSigner,
} from '../control-plane/storage/signed-urls.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, ACCOUNT_B, memoryLogger, tempDir } from './helpers/runtime.ts';
import { startLocalSupabase, type LocalSupabase } from './helpers/supabase-proxy.ts';

// Artifacts (migration 00017, runner/artifacts.ts) on both storage backends: fs, and
// Supabase Storage through the stand-in (test/helpers/storage-server.ts: Storage itself
// cannot run here, so a local server replaces its wire format, and writes each object's
// storage.objects row into the test database as Storage does, which 00030's size check
// reads), with the database reached as a runner reaches it (role hd_runner on PostgreSQL;
// its job token through a real PostgREST).
let t: TestDatabase;
let work: string;

beforeAll(async () => {
  t = await createTestDatabase();
  work = await tempDir('hd-artifacts-');
});
afterAll(() => t.drop());

const sha = (bytes: string | Buffer) => createHash('sha256').update(bytes).digest('hex');

async function leased(account: string, debug: Record<string, unknown> = {}): Promise<LeasedJob> {
  const job = await t.db.enqueueJob({ accountId: account, jobType: 'extract_text', debug });
  const [claimed] = await t.db.claimJobs({ workerId: 'w', jobId: job.id, leaseSeconds: 600 });
  return claimed as LeasedJob;
}

async function localFile(name: string, content: string | Buffer): Promise<string> {
  const path = join(work, name);
  await writeFile(path, content);
  return path;
}

const rowsOf = async (jobId: string) =>
  (
    await t.sql.query(
      `select kind, name, bucket, storage_path, content_type, size_bytes::int, sha256, account_id
         from hd_artifacts where job_id = $1 order by kind, name`,
      [jobId],
    )
  ).rows;

/** The same cases on each backend: `stored` reads an object back (undefined: absent). */
function artifactCases(
  setup: () => {
    store: (job: LeasedJob) => ArtifactStore;
    backend: StorageBackend;
    stored(key: string): Promise<Buffer | undefined>;
    failNextUpload(): void;
  },
) {
  const uploader = (job: LeasedJob, backend?: StorageBackend) => {
    const s = setup();
    return new ArtifactUploader(s.store(job), backend ?? s.backend, job);
  };

  it('stores a file under the job prefix and records its row; a re-run replaces both', async () => {
    const job = await leased(ACCOUNT_A);
    const first = await uploader(job).upload({
      kind: 'page_text',
      name: 'report.pdf/p0001.md',
      path: await localFile('p1.md', '# Page 1\n'),
      contentType: 'text/markdown',
    });
    const key = `${jobOutputPrefix(ACCOUNT_A, job.id)}page_text/report.pdf/p0001.md`;
    expect(first).toMatchObject({ bucket: OUTPUTS_BUCKET, storage_path: key, attempt: 1 });
    expect(String(await setup().stored(key))).toBe('# Page 1\n');
    await uploader(job).upload({
      kind: 'page_text',
      name: 'report.pdf/p0001.md',
      path: await localFile('p1b.md', '# Page 1, again\n'),
      contentType: 'text/markdown',
    });
    expect(await rowsOf(job.id)).toEqual([
      {
        kind: 'page_text',
        name: 'report.pdf/p0001.md',
        bucket: OUTPUTS_BUCKET,
        storage_path: key,
        content_type: 'text/markdown',
        size_bytes: 16,
        sha256: sha('# Page 1, again\n'),
        account_id: ACCOUNT_A,
      },
    ]);
    expect(String(await setup().stored(key))).toBe('# Page 1, again\n');
  });

  it('refuses past the job output limit: OUTPUT_LIMIT_EXCEEDED, nothing stored', async () => {
    const job = await leased(ACCOUNT_A, { max_output_bytes: 10 });
    const up = uploader(job);
    await up.upload({
      kind: 'preview',
      name: 'a.txt',
      path: await localFile('a', '123456'),
      contentType: 'text/plain',
    });
    await expect(
      up.upload({
        kind: 'preview',
        name: 'b.txt',
        path: await localFile('b', '12345'),
        contentType: 'text/plain',
      }),
    ).rejects.toMatchObject({ code: 'OUTPUT_LIMIT_EXCEEDED', retryable: false });
    expect((await rowsOf(job.id)).map((r) => r.name)).toEqual(['a.txt']);
    expect(
      await setup().stored(`${jobOutputPrefix(ACCOUNT_A, job.id)}preview/b.txt`),
    ).toBeUndefined();
  });

  it('an upload that fails leaves no row, not even the one it was replacing', async () => {
    const job = await leased(ACCOUNT_B);
    const file = { kind: 'archive', name: 'all.zip', contentType: 'application/zip' };
    await uploader(job).upload({ ...file, path: await localFile('z1', 'first') });
    setup().failNextUpload();
    await expect(
      uploader(job).upload({ ...file, path: await localFile('z2', 'second') }),
    ).rejects.toMatchObject({ code: 'UPLOAD_FAILED' });
    expect(await rowsOf(job.id)).toEqual([]);
  });

  it('a file that changes during its upload is refused (checksum), no row', async () => {
    const job = await leased(ACCOUNT_B);
    const path = await localFile('changing.md', 'before');
    const { backend } = setup();
    const changing: StorageBackend = {
      download: (...a) => backend.download(...a),
      async upload(...a) {
        await appendFile(path, ' and after'); // after it was hashed, before it is sent
        return backend.upload(...a);
      },
    };
    await expect(
      uploader(job, changing).upload({
        kind: 'page_text',
        name: 'x.md',
        path,
        contentType: 'text/markdown',
      }),
    ).rejects.toMatchObject({ code: 'UPLOAD_FAILED', message: expect.stringMatching(/hash to/) });
    expect(await rowsOf(job.id)).toEqual([]);
  });

  it('refuses a name that would leave the job prefix, and a job whose lease is gone', async () => {
    const job = await leased(ACCOUNT_A);
    const path = await localFile('n', 'x');
    for (const name of ['../other/x', 'a/../../x', '/abs', 'a//b', 'a?b', 'ä.md'])
      await expect(
        uploader(job).upload({ kind: 'page_text', name, path, contentType: 'text/plain' }),
      ).rejects.toMatchObject({
        code: 'INVALID_INPUT',
        message: expect.stringMatching(/artifact name/),
      });
    await t.db.cancelJob(job.id, 'stop');
    await expect(
      uploader(job).upload({ kind: 'page_text', name: 'ok.md', path, contentType: 'text/plain' }),
    ).rejects.toMatchObject({ code: 'CANCELLED' });
    expect(await rowsOf(job.id)).toEqual([]);
  });
}

it("a job's webhook event names its artifacts (references, no URL)", async () => {
  const account = '33333333-3333-4333-8333-333333333333';
  await t.sql.query(`select hd_add_webhook_endpoint($1, 'https://example.com/hook')`, [account]);
  const job = await leased(account);
  const root = await tempDir('hd-artifacts-hook-');
  const row = await new ArtifactUploader(artifactsOf(t.db), new FsStorage(root), job).upload({
    kind: 'archive',
    name: 'all.zip',
    path: await localFile('hook.zip', 'zip bytes'),
    contentType: 'application/zip',
  });
  await t.db.completeJob(job.id, job.lease_token, {});
  const { rows } = await t.sql.query(
    `select payload from hd_webhook_outbox where account_id = $1 and event_type = 'job.completed'`,
    [account],
  );
  expect(rows).toHaveLength(1);
  const data = rows[0].payload.data as Record<string, unknown>;
  expect(data.artifacts).toEqual([
    {
      kind: 'archive',
      name: 'all.zip',
      bucket: OUTPUTS_BUCKET,
      key: row.storage_path,
      content_type: 'application/zip',
      bytes: 9,
      sha256: sha('zip bytes'),
    },
  ]);
  expect(data.artifacts_count).toBe(1);
  expect(JSON.stringify(data)).not.toMatch(/token=|https?:\/\/(?!example)/);
});

describe('fs storage, role hd_runner', () => {
  let root: string;
  let runnerDb: import('../control-plane/db/postgres.ts').PostgresDb;
  let failNext = false;
  beforeAll(async () => {
    root = await tempDir('hd-artifacts-fs-');
    const { PostgresDb } = await import('../control-plane/db/postgres.ts');
    runnerDb = new PostgresDb({ connectionString: t.runnerUrl, poolSize: 2 });
  });
  afterAll(() => runnerDb.close());
  const fs = () => new FsStorage(root);
  artifactCases(() => ({
    store: () => artifactsOf(runnerDb),
    backend: {
      download: (bucket, key) => fs().download(bucket, key),
      async upload(...a) {
        if (failNext) {
          failNext = false;
          // A folder where the object goes: the copy is made, the rename into place fails.
          const target = join(root, a[0], a[1]);
          await rm(target, { force: true });
          await mkdir(join(target, 'occupied'), { recursive: true });
        }
        return fs().upload(...a);
      },
    },
    stored: (key) => readFile(join(root, OUTPUTS_BUCKET, key)).catch(() => undefined),
    // (also: no partial file is left next to the key)
    failNextUpload: () => (failNext = true),
  }));
});

describe('supabase storage (stand-in) with a job token through PostgREST, upload URLs granted by the scheduler', () => {
  let supabase: LocalSupabase;
  let grants: UploadGrants;
  beforeAll(async () => {
    supabase = await startLocalSupabase(t.url);
    await supabase.storage.createBucket(OUTPUTS_BUCKET);
    grants = await serveUploadGrants({
      address: '127.0.0.1:0',
      db: t.db,
      artifacts: artifactsOf(t.db),
      signUpload: supabaseUploadSigner(supabase.url, supabase.serviceRoleKey),
      removeObjects: supabaseObjectRemover(supabase.url, supabase.serviceRoleKey),
      log: memoryLogger().log,
    });
  });
  afterAll(async () => {
    await grants.close();
    await supabase.stop();
  });
  const runnerDb = (job: LeasedJob) =>
    new SupabaseDb({
      url: supabase.url,
      serviceRoleKey: supabase.anonKey,
      accessToken: signJobToken(
        {
          role: 'hd_runner',
          job_id: job.id,
          account_id: job.account_id,
          iat: Math.floor(Date.now() / 1000),
          exp: Math.floor(Date.now() / 1000) + 600,
        },
        { kind: 'secret', secret: supabase.postgrest.jwtSecret },
      ),
    });
  artifactCases(() => ({
    store: (job) => artifactsOf(runnerDb(job)),
    backend: new SignedUrlStorage({}, grants.url),
    stored: (key) => supabase.storage.readObject(OUTPUTS_BUCKET, key),
    failNextUpload: () => supabase.storage.failNext(1, 500, { method: 'PUT' }),
  }));

  it('grants an upload URL for the job own prefix only, to the holder of its lease', async () => {
    const job = await leased(ACCOUNT_A);
    const other = await leased(ACCOUNT_A);
    const ask = async (body: Record<string, unknown>) => {
      const response = await fetch(grants.url, {
        method: 'POST',
        body: JSON.stringify({
          job_id: job.id,
          lease_token: job.lease_token,
          bucket: OUTPUTS_BUCKET,
          ...body,
        }),
      });
      return {
        status: response.status,
        body: (await response.json()) as { error?: string; url?: string },
      };
    };
    const mine = `${jobOutputPrefix(ACCOUNT_A, job.id)}page_text/p.md`;
    const refusedUnbegun = (key: string) => ({
      status: 403,
      body: { error: `no artifact of job ${job.id} was begun at ${key} by this lease` },
    });
    // Only a key hd_begin_artifact gave this lease, until hd_record_artifact records it.
    expect(await ask({ key: mine })).toEqual(refusedUnbegun(mine));
    const spec = { kind: 'page_text', name: 'p.md', contentType: 'text/markdown' };
    const declared = { ...spec, sizeBytes: 5, sha256: sha(Buffer.from('hello')) };
    await artifactsOf(t.db).begin(job.id, job.lease_token, declared);
    const granted = await ask({ key: mine });
    expect(granted.status).toBe(200);
    const unbegun = `${jobOutputPrefix(ACCOUNT_A, job.id)}page_text/q.md`;
    expect(await ask({ key: unbegun })).toEqual(refusedUnbegun(unbegun));
    for (const [key, bucket] of [
      [`${jobOutputPrefix(ACCOUNT_A, other.id)}page_text/p.md`, OUTPUTS_BUCKET],
      [`${jobOutputPrefix(ACCOUNT_B, job.id)}page_text/p.md`, OUTPUTS_BUCKET],
      [`accounts/${ACCOUNT_A}/docs/input.pdf`, OUTPUTS_BUCKET],
      [mine, 'hd_uploads_raw'],
      [`${jobOutputPrefix(ACCOUNT_A, job.id)}../${other.id}/x`, OUTPUTS_BUCKET],
    ])
      expect(await ask({ key, bucket }), key).toMatchObject({ status: 403 });
    expect(await ask({ key: mine, lease_token: other.lease_token })).toMatchObject({ status: 403 });
    expect(await ask({ key: mine, job_id: other.id })).toMatchObject({ status: 403 });
    expect(await ask({ key: mine, extra: 1 })).toMatchObject({ status: 400 });
    const put = await fetch(granted.body.url!, { method: 'PUT', body: 'hello' });
    expect(put.status).toBe(200);
    await artifactsOf(t.db).record(job.id, job.lease_token, declared);
    expect(await ask({ key: mine })).toEqual(refusedUnbegun(mine));
    // The URL creates the object once: what was checked and recorded stays as it was.
    const again = await fetch(granted.body.url!, { method: 'PUT', body: 'hello, overwritten' });
    expect(await again.json()).toMatchObject({ statusCode: '409', error: 'Duplicate' });
    expect(await supabase.storage.readObject(OUTPUTS_BUCKET, mine)).toEqual(Buffer.from('hello'));
  });

  it('uploads a large artifact resumably (TUS) on its grant token, size checked at record', async () => {
    const job = await leased(ACCOUNT_B);
    const big = Buffer.alloc(300_000, 9);
    const before = supabase.storage.requests.length;
    const row = await new ArtifactUploader(
      artifactsOf(runnerDb(job)),
      new SignedUrlStorage({}, grants.url, 100_000),
      job,
    ).upload({
      kind: 'page_image',
      name: 'p1.png',
      path: await localFile('big-signed.png', big),
      contentType: 'image/png',
    });
    expect(row).toMatchObject({ size_bytes: big.length, sha256: sha(big) });
    const seen = supabase.storage.requests.slice(before);
    expect(seen.map((r) => `${r.method} ${r.path.replace(/sign\/[\w-]+=*$/, 'sign/ID')}`)).toEqual([
      'DELETE /object/hd_outputs', // the grant service clears the key first
      `POST /object/upload/sign/hd_outputs/${row.storage_path}`,
      'POST /upload/resumable/sign',
      'PATCH /upload/resumable/sign/ID', // one 6 MiB chunk holds it
    ]);
    expect(await supabase.storage.readObject(OUTPUTS_BUCKET, row.storage_path)).toEqual(big);
  });

  it('counts begun, unrecorded artifacts against the output limit: each one could be granted', async () => {
    const job = await leased(ACCOUNT_A, { max_output_bytes: 10 });
    const store = artifactsOf(t.db);
    const spec = (name: string, sizeBytes: number) =>
      ({ kind: 'preview', name, contentType: 'text/plain', sizeBytes, sha256: sha('') }) as const;
    await store.begin(job.id, job.lease_token, spec('a.txt', 6));
    await expect(store.begin(job.id, job.lease_token, spec('b.txt', 5))).rejects.toMatchObject({
      code: 'OUTPUT_LIMIT_EXCEEDED',
      message: expect.stringContaining('(6 in use;'),
    });
    // Beginning the same name again replaces its own declared size.
    await store.begin(job.id, job.lease_token, spec('a.txt', 10));
  });

  it('service-role storage uploads large artifacts resumably (TUS), checksum verified', async () => {
    const job = await leased(ACCOUNT_B);
    const big = Buffer.alloc(300_000, 7);
    const storage = new SupabaseStorage({
      url: supabase.url,
      serviceRoleKey: supabase.serviceRoleKey,
      resumableAboveBytes: 100_000,
    });
    const before = supabase.storage.requests.length;
    const row = await new ArtifactUploader(artifactsOf(t.db), storage, job).upload({
      kind: 'page_image',
      name: 'p1.png',
      path: await localFile('big.png', big),
      contentType: 'image/png',
    });
    expect(row).toMatchObject({ size_bytes: big.length, sha256: sha(big) });
    expect(supabase.storage.requests.slice(before).map((r) => r.method)).toContain('PATCH');
    expect(await supabase.storage.readObject(OUTPUTS_BUCKET, row.storage_path)).toEqual(big);
  });
});
