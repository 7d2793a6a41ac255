import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HdError } from '../contract/errors.ts';
import { mapStorageError, SupabaseStorage } from '../control-plane/storage/supabase.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { signJwt } from './helpers/postgrest.ts';
import { ACCOUNT_A, tempDir } from './helpers/runtime.ts';
import { startLocalSupabase, type LocalSupabase } from './helpers/supabase-proxy.ts';

// Supabase Storage cannot run here: these tests talk to the local stand-in of
// test/helpers/storage-server.ts, which speaks Storage's object API and error bodies,
// through supabase-js's own storage client.
let t: TestDatabase;
let supabase: LocalSupabase;
let storage: SupabaseStorage;
let work: string;
const BUCKET = 'hd_uploads_raw';
const key = (name: string) => `accounts/${ACCOUNT_A}/files/${name}`;

beforeAll(async () => {
  t = await createTestDatabase();
  supabase = await startLocalSupabase(t.url);
  await supabase.storage.createBucket(BUCKET);
  await supabase.storage.createBucket('tiny', { fileSizeLimit: 1024 });
  storage = new SupabaseStorage({ url: supabase.url, serviceRoleKey: supabase.serviceRoleKey });
  work = await tempDir('hd-test-work-');
});
afterAll(async () => {
  await supabase.stop();
  await t.drop();
});

async function codeOf(promise: Promise<unknown>): Promise<HdError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof HdError)) throw new Error(`expected an HdError, got ${String(error)}`);
  return error;
}

describe('supabase storage backend', () => {
  it('uploads small files in one request with content type and upsert', async () => {
    const local = join(work, 'small.jsonl');
    await writeFile(local, '{"title":"t"}\n');
    await storage.upload(BUCKET, key('small.jsonl'), local, 'application/x-ndjson');
    const upload = supabase.storage.requests.findLast((r) => r.method === 'POST');
    expect(upload).toMatchObject({ contentType: 'application/x-ndjson', upsert: 'true' });
    expect(upload?.path).toBe(`/object/${BUCKET}/${key('small.jsonl')}`);
  });

  it('uploads large files resumably in 6 MiB chunks, retrying a failed chunk; downloads stream to disk', async () => {
    // 13 MiB written in pieces, so neither side of the test holds it whole.
    const source = join(work, 'big.jsonl');
    const out = createWriteStream(source);
    const hash = createHash('sha256');
    for (let i = 0; i < 13 * 1024; i++) {
      const piece = Buffer.alloc(1024, String(i % 10));
      hash.update(piece);
      out.write(piece);
    }
    await new Promise((resolve) => out.end(resolve));
    const seen = supabase.storage.requests.length;
    supabase.storage.failNext(1, 503, { method: 'PATCH' });
    await storage.upload(BUCKET, key('big.jsonl'), source, 'application/x-ndjson');
    const tus = supabase.storage.requests.slice(seen).map((r) => r.method);
    expect(tus).toEqual(['POST', 'PATCH', 'HEAD', 'PATCH', 'PATCH', 'PATCH']);
    expect(supabase.storage.contentTypes.get(`${BUCKET}/${key('big.jsonl')}`)).toBe(
      'application/x-ndjson',
    );

    const file = await storage.download(BUCKET, key('big.jsonl'), work);
    expect(file.size).toBe(13 * 1024 * 1024);
    expect(
      createHash('sha256')
        .update(await readFile(file.path))
        .digest('hex'),
    ).toBe(hash.digest('hex'));
    expect(file.path.startsWith(work)).toBe(true);
  });

  it('replaces an existing object (jobs are retried, so every upload upserts)', async () => {
    const local = join(work, 'v.txt');
    await writeFile(local, 'first');
    await storage.upload(BUCKET, key('v.txt'), local, 'text/plain');
    await writeFile(local, 'second');
    await storage.upload(BUCKET, key('v.txt'), local, 'text/plain');
    const file = await storage.download(BUCKET, key('v.txt'), work);
    expect(await readFile(file.path, 'utf8')).toBe('second');
  });

  it('maps a missing object (HTTP 400, statusCode "404" in the body) to FILE_NOT_FOUND', async () => {
    const before = await readdir(work);
    const error = await codeOf(storage.download(BUCKET, key('nope.jsonl'), work));
    expect(error).toMatchObject({ code: 'FILE_NOT_FOUND', retryable: false });
    expect(error.message).toContain(`storage object ${BUCKET}/${key('nope.jsonl')} does not exist`);
    expect(await readdir(work)).toEqual(before); // no partial file left behind
    const bucket = await codeOf(storage.download('no_such_bucket', key('x'), work));
    expect(bucket).toMatchObject({ code: 'FILE_NOT_FOUND' });
    expect(bucket.message).toContain('bucket no_such_bucket does not exist');
  });

  it('maps server errors to retryable codes and refusals to permanent ones', async () => {
    supabase.storage.failNext(1, 503);
    expect(await codeOf(storage.download(BUCKET, key('v.txt'), work))).toMatchObject({
      code: 'DOWNLOAD_FAILED',
      retryable: true,
    });
    const local = join(work, 'x.txt');
    await writeFile(local, 'x');
    supabase.storage.failNext(1, 500);
    expect(await codeOf(storage.upload(BUCKET, key('x.txt'), local, 'text/plain'))).toMatchObject({
      retryable: true,
    });

    const wrongKey = new SupabaseStorage({
      url: supabase.url,
      serviceRoleKey: signJwt('another-projects-secret-0123456789abcdef', { role: 'service_role' }),
    });
    const refused = await codeOf(wrongKey.download(BUCKET, key('v.txt'), work));
    expect(refused).toMatchObject({ code: 'DOWNLOAD_FAILED', retryable: false });
    expect(refused.message).toContain('check SUPABASE_SERVICE_ROLE_KEY');

    const big = join(work, 'big.bin');
    await writeFile(big, Buffer.alloc(4096));
    expect(
      await codeOf(storage.upload('tiny', key('big.bin'), big, 'application/octet-stream')),
    ).toMatchObject({ code: 'INVALID_INPUT', retryable: false });
    // Above the resumable threshold the same limit comes from the TUS create call.
    const resumable = new SupabaseStorage({
      url: supabase.url,
      serviceRoleKey: supabase.serviceRoleKey,
      resumableAboveBytes: 100,
    });
    const refusedBig = await codeOf(
      resumable.upload('tiny', key('big.bin'), big, 'application/octet-stream'),
    );
    expect(refusedBig).toMatchObject({ code: 'INVALID_INPUT', retryable: false });
    supabase.storage.failNext(3, 500, { method: 'PATCH' });
    expect(
      await codeOf(resumable.upload(BUCKET, key('big.bin'), big, 'application/octet-stream')),
    ).toMatchObject({ code: 'INTERNAL_ERROR', retryable: true });
  });

  it('fails a download cut off mid-transfer as retryable, leaving no partial file', async () => {
    const before = await readdir(work);
    supabase.storage.cutNextDownload(3 * 1024 * 1024);
    const cut = await codeOf(storage.download(BUCKET, key('big.jsonl'), work));
    expect(cut).toMatchObject({ code: 'DOWNLOAD_FAILED', retryable: true });
    expect(cut.message).toContain('transfer interrupted');
    expect(await readdir(work)).toEqual(before);
  });

  it('fails as retryable when Storage cannot be reached', async () => {
    const down = new SupabaseStorage({ url: 'http://127.0.0.1:9', serviceRoleKey: 'x'.repeat(40) });
    expect(await codeOf(down.download(BUCKET, key('v.txt'), work))).toMatchObject({
      code: 'DOWNLOAD_FAILED',
      retryable: true,
    });
  });

  it('reads Storage error names as well as status codes', () => {
    const cases: [Record<string, unknown>, string, boolean][] = [
      [{ status: 404, code: 'NoSuchKey', message: 'Object not found' }, 'FILE_NOT_FOUND', false],
      [{ status: 400, statusCode: '404', message: 'Bucket not found' }, 'FILE_NOT_FOUND', false],
      [{ status: 400, statusCode: '403', message: 'invalid signature' }, 'DOWNLOAD_FAILED', false],
      [{ status: 413, error: 'Payload too large' }, 'INVALID_INPUT', false],
      [{ status: 429, message: 'slow down' }, 'DOWNLOAD_FAILED', true],
      [{ status: 502, message: 'bad gateway' }, 'DOWNLOAD_FAILED', true],
      [{ message: 'fetch failed' }, 'DOWNLOAD_FAILED', true],
    ];
    for (const [error, code, retryable] of cases) {
      expect(mapStorageError('download', 'b', 'k', error), JSON.stringify(error)).toMatchObject({
        code,
        retryable,
      });
    }
  });

  it('reports whether the bucket exists and can be listed', async () => {
    await expect(storage.checkBucket(BUCKET)).resolves.toMatchObject({ listed: 1 });
    await expect(storage.checkBucket('no_such_bucket')).rejects.toMatchObject({
      code: 'FILE_NOT_FOUND',
    });
  });
});
