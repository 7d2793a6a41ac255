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
    // The length is declared: Storage checks a bucket's size limit against it only.
    expect(upload).toMatchObject({
      contentType: 'application/x-ndjson',
      upsert: 'true',
      length: '14',
    });
    expect(upload?.path).toBe(`/object/${BUCKET}/${key('small.jsonl')}`);
    expect(await supabase.storage.readObject(BUCKET, key('small.jsonl'))).toEqual(
      Buffer.from('{"title":"t"}\n'),
    );
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
    const tus = supabase.storage.requests.slice(seen);
    expect(tus.map((r) => r.method)).toEqual(['POST', 'PATCH', 'HEAD', 'PATCH', 'PATCH', 'PATCH']);
    // Storage checks overwrite on every request with that request's own x-upsert.
    expect(tus.map((r) => r.upsert)).toEqual(Array(6).fill('true'));
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

  it('replaces an existing object by resumable upload too', async () => {
    const resumable = new SupabaseStorage({
      url: supabase.url,
      serviceRoleKey: supabase.serviceRoleKey,
      resumableAboveBytes: 10,
    });
    const local = join(work, 'r.txt');
    await writeFile(local, 'first version, resumable');
    await resumable.upload(BUCKET, key('r.txt'), local, 'text/plain');
    await writeFile(local, 'second version, resumable');
    await resumable.upload(BUCKET, key('r.txt'), local, 'text/plain');
    expect((await supabase.storage.readObject(BUCKET, key('r.txt')))?.toString()).toBe(
      'second version, resumable',
    );
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
      code: 'UPLOAD_FAILED',
      retryable: true,
    });

    // Storage reads a bad key on download as anonymous and answers NoSuchBucket.
    const otherProject = signJwt('another-projects-secret-0123456789abcdef', {
      role: 'service_role',
    });
    const expired = supabase.postgrest.sign({ role: 'service_role', exp: 1_600_000_000 });
    for (const serviceRoleKey of [otherProject, expired, 'not-a-jwt']) {
      const wrongKey = new SupabaseStorage({ url: supabase.url, serviceRoleKey });
      for (const attempt of [
        () => wrongKey.download(BUCKET, key('v.txt'), work),
        () => wrongKey.upload(BUCKET, key('x.txt'), local, 'text/plain'),
      ]) {
        const refused = await codeOf(attempt());
        expect(refused).toMatchObject({ code: 'STORAGE_UNAUTHORIZED', retryable: false });
        expect(refused.message).toContain('SUPABASE_SERVICE_ROLE_KEY');
        expect(refused.message).toContain('hd-runner doctor');
      }
    }

    // 1.5 KB into a 1 KiB bucket: refused because the length is declared.
    const big = join(work, 'big.bin');
    await writeFile(big, Buffer.alloc(1536));
    expect(
      await codeOf(storage.upload('tiny', key('big.bin'), big, 'application/octet-stream')),
    ).toMatchObject({ code: 'INVALID_INPUT', retryable: false });
    expect(await supabase.storage.readObject('tiny', key('big.bin'))).toBeUndefined();
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
    ).toMatchObject({ code: 'UPLOAD_FAILED', retryable: true });
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
      [
        { status: 400, statusCode: '404', code: 'NoSuchBucket', message: 'Bucket not found' },
        'FILE_NOT_FOUND',
        false,
      ],
      [
        { status: 400, statusCode: '403', code: 'AccessDenied', message: 'invalid signature' },
        'STORAGE_UNAUTHORIZED',
        false,
      ],
      // Older Storage: a refused token as statusCode "400".
      [{ status: 400, statusCode: '400', message: 'jwt expired' }, 'STORAGE_UNAUTHORIZED', false],
      [{ status: 401, message: 'Invalid API key' }, 'STORAGE_UNAUTHORIZED', false],
      [{ status: 400, statusCode: '413', code: 'EntityTooLarge' }, 'INVALID_INPUT', false],
      [{ status: 400, statusCode: '400', code: 'InvalidKey' }, 'INVALID_INPUT', false],
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
    const conflict = { status: 400, statusCode: '409', code: 'KeyAlreadyExists' };
    expect(mapStorageError('upload', 'b', 'k', conflict)).toMatchObject({
      code: 'UPLOAD_FAILED',
      retryable: true,
    });
  });

  it('reports whether the bucket exists and can be listed', async () => {
    await expect(storage.checkBucket(BUCKET)).resolves.toMatchObject({ listed: 1 });
    await expect(storage.checkBucket('no_such_bucket')).rejects.toMatchObject({
      code: 'FILE_NOT_FOUND',
    });
    // What `hd-runner doctor` shows for a key of another project.
    const wrongKey = new SupabaseStorage({
      url: supabase.url,
      serviceRoleKey: signJwt('another-projects-secret-0123456789abcdef', { role: 'service_role' }),
    });
    const refused = await codeOf(wrongKey.checkBucket(BUCKET));
    expect(refused.code).toBe('STORAGE_UNAUTHORIZED');
    expect(refused.message).toMatch(
      /^read bucket of hd_uploads_raw\/ refused: SUPABASE_SERVICE_ROLE_KEY/,
    );
  });
});
