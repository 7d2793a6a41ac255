import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { rm } from 'node:fs/promises';
import { createClient } from '@supabase/supabase-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signJwt } from './helpers/postgrest.ts';
import { tempDir } from './helpers/runtime.ts';
import { createStorageStandIn, type StorageStandIn } from './helpers/storage-server.ts';

/*
 * The contract of the Supabase Storage stand-in (test/helpers/storage-server.ts,
 * storage-tus.ts). Supabase Storage cannot run here; these are the behaviours of the
 * real server (measured side by side against its file backend, issue 12) that the
 * stand-in reproduces, each tested below over plain HTTP:
 *
 *  1. Errors are HTTP 400 (500 stays 500) with `{statusCode, code, error, message}`;
 *     `statusCode` is Storage's own status: NoSuchKey "404" "Object not found",
 *     NoSuchBucket "404" "Bucket not found", KeyAlreadyExists "409", EntityTooLarge
 *     "413", InvalidKey "400", AccessDenied "403".
 *  2. Keys: only `[A-Za-z0-9_/!.*'() &$=@;:+,?-]`, else InvalidKey; `dir//x` keeps its
 *     empty segment (another object than `dir/x`).
 *  3. POST creates (KeyAlreadyExists unless `x-upsert: true`); PUT to a missing key
 *     creates it (200).
 *  4. The bucket's size limit is checked against a declared Content-Length only: a
 *     streamed (chunked) upload is accepted whatever its size.
 *  5. Multipart (form-data) uploads are accepted, as supabase-js sends a Blob.
 *  6. No JWT, a bad signature or an expired token on GET /object reads as anonymous:
 *     NoSuchBucket. On other routes: AccessDenied (statusCode "403").
 *  7. A valid token of another role (no storage RLS policy lets it): reads answer
 *     NoSuchKey, writes AccessDenied "new row violates row-level security policy".
 *  8. TUS: errors are plain text with the real HTTP status; a missing bucket on create
 *     is 404; `Location` is absolute, from X-Forwarded-Host/-Proto/-Prefix; chunks of
 *     any size (file backend); each PATCH checks overwrite with its OWN x-upsert (409).
 *
 * Not measured side by side, read from Storage's source (supabase/storage, src/http/routes:
 * tus/lifecycle.ts, object/deleteObjects.ts) and reproduced here for the artifact grants:
 *  9. TUS on a signed upload URL's token: /upload/resumable/sign, the token in
 *     `x-signature` on every request, checked against the upload's bucket/key (another
 *     key: 400 InvalidSignature); overwrite follows the token's upsert, not a header.
 * 10. DELETE /object/{bucket} with `{prefixes}` removes those objects (absent ones are
 *     no error) and answers what it removed.
 * With a database (test/helpers/storage-rows.ts), every stored object also has its
 * `storage.objects` row, metadata size included, as test/artifacts.test.ts relies on.
 */
const SECRET = 'stand-in-contract-secret-0123456789abcdef';
const SERVICE = signJwt(SECRET, { role: 'service_role' });
let root: string;
let server: Server;
let standIn: StorageStandIn;
let base: string;

beforeAll(async () => {
  root = await tempDir('hd-standin-');
  standIn = createStorageStandIn({ root, jwtSecret: SECRET });
  await standIn.createBucket('b');
  await standIn.createBucket('tiny', { fileSizeLimit: 1024 });
  server = createServer((req, res) =>
    standIn.handle(req, res, req.url!.slice('/storage/v1'.length)),
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/storage/v1`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  await rm(root, { recursive: true, force: true });
});

function call(method: string, path: string, init: RequestInit & { token?: string | null } = {}) {
  const { token = SERVICE, headers, ...rest } = init;
  return fetch(`${base}${path}`, {
    method,
    ...rest,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(headers as object) },
  });
}
async function storageError(response: Response) {
  return { http: response.status, body: (await response.json()) as Record<string, string> };
}
const streamOf = (bytes: number) =>
  new ReadableStream({
    start(controller) {
      controller.enqueue(new Uint8Array(bytes));
      controller.close();
    },
  });

describe('the Storage stand-in, as real Storage answers', () => {
  it('1. answers errors as HTTP 400 with Storage’s status and code in the body', async () => {
    expect(await storageError(await call('GET', '/object/b/missing.txt'))).toEqual({
      http: 400,
      body: {
        statusCode: '404',
        code: 'NoSuchKey',
        error: 'not_found',
        message: 'Object not found',
      },
    });
    expect(await storageError(await call('GET', '/object/nope/x.txt'))).toMatchObject({
      http: 400,
      body: { statusCode: '404', code: 'NoSuchBucket', message: 'Bucket not found' },
    });
    await call('POST', '/object/b/once.txt', { body: 'x' });
    expect(
      await storageError(await call('POST', '/object/b/once.txt', { body: 'y' })),
    ).toMatchObject({
      http: 400,
      body: { statusCode: '409', code: 'KeyAlreadyExists', message: 'The resource already exists' },
    });
  });

  it('2. refuses keys outside Storage’s set with InvalidKey and keeps empty segments', async () => {
    for (const key of ['M%C3%BCller.txt', 'a%23b%25c.txt', 'x%22.txt']) {
      expect(
        await storageError(await call('POST', `/object/b/${key}`, { body: 'x' })),
        key,
      ).toMatchObject({ http: 400, body: { statusCode: '400', code: 'InvalidKey' } });
    }
    await call('POST', '/object/b/dir//x', { body: 'double' });
    await call('POST', '/object/b/dir/x', { body: 'single' });
    expect((await standIn.readObject('b', 'dir//x'))?.toString()).toBe('double');
    expect((await standIn.readObject('b', 'dir/x'))?.toString()).toBe('single');
  });

  it('3. PUT creates a missing object; POST replaces only with x-upsert', async () => {
    expect((await call('PUT', '/object/b/put-new.txt', { body: 'new' })).status).toBe(200);
    expect((await standIn.readObject('b', 'put-new.txt'))?.toString()).toBe('new');
    const upsert = { body: 'v2', headers: { 'x-upsert': 'true' } };
    expect((await call('POST', '/object/b/put-new.txt', upsert)).status).toBe(200);
    expect((await standIn.readObject('b', 'put-new.txt'))?.toString()).toBe('v2');
  });

  it('4. checks the size limit against a declared length only', async () => {
    const declared = await call('POST', '/object/tiny/declared.bin', {
      body: new Uint8Array(1536),
    });
    expect(await storageError(declared)).toMatchObject({
      http: 400,
      body: { statusCode: '413', code: 'EntityTooLarge' },
    });
    const streamed = await call('POST', '/object/tiny/streamed.bin', {
      body: streamOf(1536),
      duplex: 'half',
    } as RequestInit);
    expect(streamed.status).toBe(200);
    expect((await standIn.readObject('tiny', 'streamed.bin'))?.length).toBe(1536);
  });

  it('5. accepts a multipart upload from supabase-js', async () => {
    const client = createClient(base.replace(/\/storage\/v1$/, ''), SERVICE);
    const blob = new Blob(['from a blob'], { type: 'text/markdown' });
    const { error } = await client.storage.from('b').upload('multi/part.md', blob);
    expect(error).toBeNull();
    expect(standIn.requests.at(-1)?.contentType).toMatch(/^multipart\/form-data; boundary=/);
    expect((await standIn.readObject('b', 'multi/part.md'))?.toString()).toBe('from a blob');
    expect(standIn.contentTypes.get('b/multi/part.md')).toBe('text/markdown');
  });

  it('6. reads a missing, forged or expired token as anonymous on download', async () => {
    await standIn.putObject('b', 'private.txt', 'p');
    const forged = signJwt('another-secret-0123456789abcdef-xxxx', { role: 'service_role' });
    const expired = signJwt(SECRET, { role: 'service_role', exp: 1_600_000_000 });
    for (const token of [null, forged, expired, 'garbage']) {
      expect(
        await storageError(await call('GET', '/object/b/private.txt', { token })),
      ).toMatchObject({
        http: 400,
        body: { statusCode: '404', code: 'NoSuchBucket', message: 'Bucket not found' },
      });
      for (const [method, path] of [
        ['POST', '/object/b/w.txt'],
        ['GET', '/bucket/b'],
      ] as const) {
        const refused = await call(method, path, {
          token,
          ...(method === 'POST' ? { body: 'x' } : {}),
        });
        expect(await storageError(refused), `${method} ${path}`).toMatchObject({
          http: 400,
          body: { statusCode: '403', code: 'AccessDenied' },
        });
      }
    }
  });

  it('7. hides objects from other roles and refuses their writes', async () => {
    const user = signJwt(SECRET, { role: 'authenticated', sub: 'u' });
    expect(
      await storageError(await call('GET', '/object/b/private.txt', { token: user })),
    ).toMatchObject({
      http: 400,
      body: { statusCode: '404', code: 'NoSuchKey' },
    });
    const write = await call('POST', '/object/b/by-user.txt', { token: user, body: 'x' });
    expect(await storageError(write)).toMatchObject({
      http: 400,
      body: {
        statusCode: '403',
        code: 'AccessDenied',
        message: 'new row violates row-level security policy',
      },
    });
  });

  it('8. speaks TUS as Storage does: plain-text errors, absolute Location, any chunk size, upsert per PATCH', async () => {
    const meta = (bucket: string, key: string) =>
      `bucketName ${btoa(bucket)},objectName ${btoa(key)},contentType ${btoa('text/plain')}`;
    const create = (bucket: string, key: string, headers: Record<string, string> = {}) =>
      call('POST', '/upload/resumable', {
        headers: {
          'tus-resumable': '1.0.0',
          'upload-length': '10',
          'upload-metadata': meta(bucket, key),
          ...headers,
        },
      });
    const missing = await create('nope', 'x.txt');
    expect(missing.status).toBe(404);
    expect(missing.headers.get('content-type')).toMatch(/^text\/plain/);
    expect(await missing.text()).toBe('Bucket not found');

    const created = await create('b', 'tus.txt', {
      'x-forwarded-host': 'ref.supabase.co',
      'x-forwarded-proto': 'https',
    });
    expect(created.status).toBe(201);
    const location = created.headers.get('location')!;
    expect(location).toMatch(
      /^https:\/\/ref\.supabase\.co\/storage\/v1\/upload\/resumable\/[\w-]+$/,
    );
    const id = location.split('/').pop()!;
    const patch = (offset: number, body: string, upsert?: string) =>
      call('PATCH', `/upload/resumable/${id}`, {
        body,
        headers: {
          'tus-resumable': '1.0.0',
          'upload-offset': String(offset),
          'content-type': 'application/offset+octet-stream',
          ...(upsert ? { 'x-upsert': upsert } : {}),
        },
      });
    expect((await patch(0, 'abc')).status).toBe(204); // a 3-byte chunk
    await standIn.putObject('b', 'tus.txt', 'written meanwhile');
    const refused = await patch(3, 'defghij');
    expect([refused.status, await refused.text()]).toEqual([409, 'The resource already exists']);
    expect((await patch(3, 'defghij', 'true')).status).toBe(204);
    expect((await standIn.readObject('b', 'tus.txt'))?.toString()).toBe('abcdefghij');
  });

  it('9. speaks TUS on a signed upload token: x-signature for its own key, its upsert', async () => {
    const tokenFor = async (key: string) => {
      const answer = (await (await call('POST', `/object/upload/sign/b/${key}`)).json()) as {
        url: string;
      };
      return new URL(answer.url, 'http://x').searchParams.get('token')!;
    };
    const create = (key: string, signature: string) =>
      call('POST', '/upload/resumable/sign', {
        token: null,
        headers: {
          'tus-resumable': '1.0.0',
          'upload-length': '5',
          'upload-metadata': `bucketName ${btoa('b')},objectName ${btoa(key)}`,
          'x-signature': signature,
        },
      });
    const other = await create('signed-a.txt', await tokenFor('signed-b.txt'));
    expect([other.status, await other.text()]).toEqual([400, 'The signature is invalid']);
    const token = await tokenFor('signed-a.txt');
    const created = await create('signed-a.txt', token);
    expect(created.headers.get('location')).toMatch(/\/upload\/resumable\/sign\/[\w-]+$/);
    const patched = await call(
      'PATCH',
      new URL(created.headers.get('location')!).pathname.slice(11),
      {
        token: null,
        body: 'hello',
        headers: {
          'tus-resumable': '1.0.0',
          'upload-offset': '0',
          'content-type': 'application/offset+octet-stream',
          'x-signature': token,
        },
      },
    );
    expect(patched.status).toBe(204);
    expect((await standIn.readObject('b', 'signed-a.txt'))?.toString()).toBe('hello');
    // Signed without upsert: the key now holds an object, whatever x-upsert says.
    const again = await create('signed-a.txt', token);
    expect([again.status, await again.text()]).toEqual([409, 'The resource already exists']);
  });

  it('10. removes objects by prefixes list, absent ones no error', async () => {
    await standIn.putObject('b', 'gone.txt', 'x');
    const removed = await call('DELETE', '/object/b', {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prefixes: ['gone.txt', 'never.txt'] }),
    });
    expect(await removed.json()).toEqual([{ name: 'gone.txt', bucket_id: 'b' }]);
    expect(await standIn.readObject('b', 'gone.txt')).toBeUndefined();
  });
});
