import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  StandInObjects,
  STORAGE_KEY,
  StorageHttpError,
  storageErrors as E,
} from './storage-objects.ts';
import { signJwt } from './postgrest.ts';
import { StorageRows } from './storage-rows.ts';
import { createTusHandler } from './storage-tus.ts';

/**
 * A stand-in for Supabase Storage, which cannot run here (it needs its own service,
 * database schema and object backend). It speaks the part of the Storage API that
 * hd-runner and supabase-js use — upload (POST, x-upsert; raw or multipart), update
 * (PUT), download, list, remove, get bucket, resumable (TUS) upload, signed download and
 * upload URLs, resumable uploads on a signed URL's token — and, given the project's database, keeps `storage.buckets` and
 * `storage.objects` rows there as Storage does (test/helpers/storage-rows.ts); it answers as the real
 * server does where it was measured side by side; the behaviours, each with the one it
 * mirrors, are listed and tested in test/storage-standin.test.ts.
 * No storage RLS policies: the service role may do anything, other roles nothing.
 */
export interface StorageRequest {
  method: string;
  /** The request path exactly as received (after /storage/v1). */
  path: string;
  /** Bucket and key as the server resolved them (object routes and TUS create). */
  bucket?: string;
  key?: string;
  contentType?: string;
  /** The declared Content-Length, if any. */
  length?: string;
  upsert?: string;
  /** The keys a remove (`DELETE /object/{bucket}`) named. */
  keys?: string[];
}

export interface StorageStandIn {
  handle(req: IncomingMessage, res: ServerResponse, path: string): void;
  createBucket(name: string, options?: { fileSizeLimit?: number }): Promise<void>;
  /** Stores an object directly (test set-up). */
  putObject(bucket: string, key: string, content: string | Buffer, type?: string): Promise<void>;
  /** An object's bytes, or undefined. */
  readObject(bucket: string, key: string): Promise<Buffer | undefined>;
  /** The next `count` requests (of `method`, if given) fail as a gateway would: `status`, JSON body. */
  failNext(count: number, status: number, options?: { error?: string; method?: string }): void;
  /** The next download sends its headers and `bytes` of the body, then drops the connection. */
  cutNextDownload(bytes: number): void;
  readonly requests: StorageRequest[];
  /** Content type each object was stored with, by `bucket/key`. */
  readonly contentTypes: Map<string, string>;
  close(): Promise<void>;
}

export type Caller = { valid: false; reason: string } | { valid: true; role: string };

/** Who is calling: a JWT signed with the project's secret and not expired, or nobody. */
function callerOf(req: IncomingMessage, secret: string): Caller {
  const token = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '')?.[1] ?? '';
  const claims = verifyJwt(token, secret);
  if (typeof claims === 'string') return { valid: false, reason: claims };
  return { valid: true, role: typeof claims.role === 'string' ? claims.role : 'anon' };
}

/** The claims of an HS256 token signed with `secret` and not expired, or why not. */
function verifyJwt(token: string, secret: string): Record<string, unknown> | string {
  const [header, payload, signature] = token.split('.');
  if (!header || !payload || !signature) return 'jwt malformed';
  const expected = createHmac('sha256', secret).update(`${header}.${payload}`).digest();
  const given = Buffer.from(signature, 'base64url');
  if (given.length !== expected.length || !timingSafeEqual(given, expected))
    return 'invalid signature';
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as {
    exp?: number;
  };
  if (claims.exp !== undefined && claims.exp * 1000 <= Date.now()) return 'jwt expired';
  return claims;
}

const decode = (segment: string, whole: string) => {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw E.invalidKey(whole);
  }
};

export function createStorageStandIn(options: {
  root: string;
  jwtSecret: string;
  /** The project's database: object rows go to its `storage` schema, as Storage keeps them. */
  databaseUrl?: string;
}): StorageStandIn {
  const objects = new StandInObjects(options.root);
  const rows = options.databaseUrl ? new StorageRows(options.databaseUrl) : undefined;
  const contentTypes = new Map<string, string>();
  const requests: StorageRequest[] = [];
  let faults: { count: number; status: number; error: string; method?: string } | undefined;
  let cutAfter: number | undefined;
  const ready = mkdir(options.root, { recursive: true });

  const commit = async (bucket: string, key: string, partial: string, type: string, n: number) => {
    await objects.commit(bucket, key, partial, type, n);
    await rows?.put(bucket, key, n, type);
    contentTypes.set(`${bucket}/${key}`, type);
  };
  const tus = createTusHandler({ objects, commit });

  async function upload(req: IncomingMessage, bucket: string, key: string, caller: Caller) {
    const { limit } = objects.bucket(bucket);
    if (!STORAGE_KEY.test(key)) throw E.invalidKey(key);
    if (!caller.valid) throw E.accessDenied(caller.reason);
    if (caller.role !== 'service_role') {
      throw E.accessDenied('new row violates row-level security policy');
    }
    // Storage checks the limit against a declared length only; a stream is not counted.
    const declared = Number(req.headers['content-length'] ?? Number.NaN);
    if (limit !== undefined && declared > limit) throw E.tooLarge();
    // POST creates (x-upsert: true replaces); PUT replaces or creates.
    if (req.method === 'POST' && objects.get(bucket, key) && req.headers['x-upsert'] !== 'true') {
      throw E.keyExists();
    }
    const partial = objects.partialFile();
    let type = req.headers['content-type'] ?? 'application/octet-stream';
    let size = 0;
    if (type.startsWith('multipart/form-data')) {
      const form = await new Response(await readBody(req), {
        headers: { 'content-type': type },
      }).formData();
      const file = [...form.values()].find((v): v is File => typeof v !== 'string');
      if (!file) throw new StorageHttpError(400, 'InvalidRequest', 'No content provided');
      const bytes = Buffer.from(await file.arrayBuffer());
      await writeFile(partial, bytes);
      type = file.type || 'text/plain;charset=UTF-8';
      size = bytes.length;
    } else {
      const count = new Transform({
        transform(chunk: Buffer, _enc, done) {
          size += chunk.length;
          done(null, chunk);
        },
      });
      try {
        await pipeline(req, count, createWriteStream(partial));
      } catch (error) {
        await rm(partial, { force: true });
        throw error;
      }
    }
    await commit(bucket, key, partial, type, size);
    return { Key: `${bucket}/${key}`, Id: randomUUID() };
  }

  async function download(res: ServerResponse, bucket: string, key: string, caller: Caller) {
    // An invalid or missing JWT is read as anonymous, and anon sees no private bucket.
    if (!caller.valid) throw E.noSuchBucket();
    objects.bucket(bucket);
    const found = objects.get(bucket, key);
    // RLS hides the row from other roles: to them the object does not exist.
    if (!found || caller.role !== 'service_role') throw E.noSuchKey();
    res.writeHead(200, { 'content-type': found.contentType, 'content-length': found.size });
    if (cutAfter !== undefined) {
      const end = cutAfter;
      cutAfter = undefined;
      for await (const chunk of createReadStream(found.file, { end: Math.max(0, end - 1) }))
        res.write(chunk);
      res.destroy();
      return;
    }
    await pipeline(createReadStream(found.file), res);
  }

  /**
   * Signed URLs as real Storage makes them: `POST /object/sign/{bucket}` with
   * `{expiresIn, paths}` (a role that may read them) answers `[{path, signedURL, error}]`,
   * each URL carrying a token signed with the project secret over `{url: bucket/key, exp}`;
   * `GET /object/sign/{bucket}/{key}?token=` serves that one object to whoever holds it,
   * and answers 400 InvalidSignature for a token of another object or past its exp.
   */
  async function signed(
    req: IncomingMessage,
    res: ServerResponse,
    parts: string[],
    path: string,
    caller: Caller,
    seen: StorageRequest,
  ) {
    const bucket = decode(parts[0] ?? '', path);
    if (req.method === 'POST' && parts.length === 1) {
      if (!caller.valid) throw E.accessDenied(caller.reason);
      const body = JSON.parse((await readBody(req)).toString('utf8') || '{}') as {
        expiresIn: number;
        paths: string[];
      };
      const exp = Math.floor(Date.now() / 1000) + body.expiresIn;
      return json(
        res,
        200,
        body.paths.map((key) => {
          if (caller.role !== 'service_role' || !objects.get(bucket, key))
            return {
              path: key,
              signedURL: null,
              error: 'Either the object does not exist or you do not have access to it',
            };
          const token = signJwt(options.jwtSecret, { url: `${bucket}/${key}`, exp });
          const encoded = [bucket, ...key.split('/')].map(encodeURIComponent).join('/');
          return { path: key, signedURL: `/object/sign/${encoded}?token=${token}`, error: null };
        }),
      );
    }
    const key = parts
      .slice(1)
      .map((s) => decode(s, path))
      .join('/');
    Object.assign(seen, { bucket, key });
    const token = new URL(path, 'http://x').searchParams.get('token') ?? '';
    const claims = verifyJwt(token, options.jwtSecret);
    if (typeof claims === 'string' || claims.url !== `${bucket}/${key}`)
      throw new StorageHttpError(400, 'InvalidSignature', 'The signature is invalid', 'InvalidJWT');
    return download(res, bucket, key, { valid: true, role: 'service_role' });
  }

  /**
   * Signed upload URLs as real Storage makes them (supabase-js `createSignedUploadUrl`,
   * `uploadToSignedUrl`): `POST /object/upload/sign/{bucket}/{key}` (a role that may
   * insert; `x-upsert`) answers `{url: "/object/upload/sign/{bucket}/{key}?token=…"}`, the
   * token signed with the project secret over `{url: bucket/key, upsert, exp}` (2 hours);
   * `PUT` to that URL stores the body under that one key for whoever holds it, and answers
   * 400 InvalidSignature for a token of another key or past its exp.
   */
  async function signedUpload(
    req: IncomingMessage,
    res: ServerResponse,
    parts: string[],
    path: string,
    caller: Caller,
    seen: StorageRequest,
  ) {
    const pathname = path.split('?')[0]!;
    const bucket = decode(parts[0] ?? '', pathname);
    const key = parts
      .slice(1)
      .map((s) => decode(s, pathname))
      .join('/');
    Object.assign(seen, { bucket, key });
    if (req.method === 'POST') {
      if (!caller.valid) throw E.accessDenied(caller.reason);
      if (caller.role !== 'service_role')
        throw E.accessDenied('new row violates row-level security policy');
      if (!STORAGE_KEY.test(key)) throw E.invalidKey(key);
      const upsert = req.headers['x-upsert'] === 'true';
      const exp = Math.floor(Date.now() / 1000) + 7200;
      const token = signJwt(options.jwtSecret, { url: `${bucket}/${key}`, upsert, exp });
      const encoded = [bucket, ...key.split('/')].map(encodeURIComponent).join('/');
      return json(res, 200, { url: `/object/upload/sign/${encoded}?token=${token}` });
    }
    if (req.method !== 'PUT') throw new StorageHttpError(405, 'MethodNotAllowed', path);
    const token = new URL(path, 'http://x').searchParams.get('token') ?? '';
    const claims = verifyJwt(token, options.jwtSecret);
    if (typeof claims === 'string' || claims.url !== `${bucket}/${key}`)
      throw new StorageHttpError(400, 'InvalidSignature', 'The signature is invalid', 'InvalidJWT');
    if (claims.upsert !== true && objects.get(bucket, key)) throw E.keyExists();
    return json(res, 200, await upload(req, bucket, key, { valid: true, role: 'service_role' }));
  }

  async function route(req: IncomingMessage, res: ServerResponse, path: string) {
    await ready;
    const method = req.method ?? 'GET';
    const pathname = path.split('?')[0]!;
    const parts = pathname.slice(1).split('/'); // empty segments are kept, as Storage keeps them
    const seen: StorageRequest = { method, path };
    if (req.headers['content-type']) seen.contentType = req.headers['content-type'];
    if (typeof req.headers['x-upsert'] === 'string') seen.upsert = req.headers['x-upsert'];
    if (req.headers['content-length']) seen.length = req.headers['content-length'];
    requests.push(seen);
    if (faults && faults.count > 0 && (!faults.method || faults.method === method)) {
      faults.count--;
      req.resume();
      const { status, error } = faults;
      throw new StorageHttpError(status, error, 'injected fault', error, false, status);
    }
    const caller = callerOf(req, options.jwtSecret);
    const [area, ...rest] = parts;
    if (area === 'upload' && rest[0] === 'resumable' && rest[1] === 'sign') {
      // Signed (`x-signature`: a signed upload URL's token): whoever holds it, its one key.
      const token = req.headers['x-signature'];
      const signature = (bucket: string, key: string) => {
        const claims = verifyJwt(typeof token === 'string' ? token : '', options.jwtSecret);
        if (typeof claims === 'string' || claims.url !== `${bucket}/${key}`)
          throw new StorageHttpError(400, 'InvalidSignature', 'The signature is invalid', '', true);
        return { upsert: claims.upsert === true };
      };
      return tus(req, res, rest[2], { valid: true, role: 'service_role' }, seen, signature);
    }
    if (area === 'upload' && rest[0] === 'resumable') {
      if (!caller.valid) throw E.accessDenied(caller.reason);
      return tus(req, res, rest[1], caller, seen);
    }
    if (area === 'bucket' && method === 'GET' && rest.length === 1) {
      if (!caller.valid) throw E.accessDenied(caller.reason);
      const name = decode(rest[0]!, pathname);
      const { limit } = objects.bucket(name);
      if (caller.role !== 'service_role') throw E.noSuchBucket();
      return json(res, 200, { id: name, name, public: false, file_size_limit: limit ?? null });
    }
    if (area !== 'object')
      throw new StorageHttpError(404, 'NotFound', `Route ${method}:${path} not found`);
    if (rest[0] === 'list' && method === 'POST') {
      if (!caller.valid) throw E.accessDenied(caller.reason);
      const body = JSON.parse((await readBody(req)).toString('utf8') || '{}') as {
        prefix?: string;
        limit?: number;
      };
      const listed = objects.list(
        decode(rest[1] ?? '', pathname),
        body.prefix ?? '',
        body.limit ?? 100,
      );
      return json(res, 200, caller.role === 'service_role' ? listed : []);
    }
    if (rest[0] === 'sign') return signed(req, res, rest.slice(1), path, caller, seen);
    if (method === 'DELETE' && rest.length === 1) {
      // Remove (supabase-js `remove`): `{prefixes}` in the body; answers what it removed.
      if (!caller.valid) throw E.accessDenied(caller.reason);
      const bucket = decode(rest[0]!, pathname);
      const { prefixes = [] } = JSON.parse((await readBody(req)).toString('utf8') || '{}') as {
        prefixes?: string[];
      };
      seen.keys = prefixes;
      objects.bucket(bucket);
      if (caller.role !== 'service_role') return json(res, 200, []);
      const removed = prefixes.filter((key) => objects.remove(bucket, key));
      await rows?.remove(bucket, removed);
      return json(
        res,
        200,
        removed.map((name) => ({ name, bucket_id: bucket })),
      );
    }
    if (rest[0] === 'upload' && rest[1] === 'sign')
      return signedUpload(req, res, rest.slice(2), path, caller, seen);
    const [bucketPart, ...keyParts] = rest[0] === 'authenticated' ? rest.slice(1) : rest;
    const bucket = decode(bucketPart ?? '', pathname);
    const key = keyParts.map((s) => decode(s, pathname)).join('/');
    Object.assign(seen, { bucket, key });
    if (method === 'GET') return download(res, bucket, key, caller);
    if (method === 'POST' || method === 'PUT') {
      return json(res, 200, await upload(req, bucket, key, caller));
    }
    throw new StorageHttpError(405, 'MethodNotAllowed', `${method} ${path}`);
  }

  return {
    requests,
    contentTypes,
    handle(req, res, path) {
      route(req, res, path).catch((error: unknown) => {
        if (res.headersSent) return res.destroy(error as Error);
        req.resume();
        const e =
          error instanceof StorageHttpError
            ? error
            : new StorageHttpError(500, 'InternalError', (error as Error).message);
        if (e.plain) {
          res.writeHead(e.statusCode, { 'content-type': 'text/plain', 'tus-resumable': '1.0.0' });
          return res.end(e.message);
        }
        // Storage answers every error as HTTP 400 but a 500; its own status is in the body.
        json(res, e.http ?? (e.statusCode === 500 ? 500 : 400), {
          statusCode: String(e.statusCode),
          code: e.code,
          error: e.legacy ?? e.code,
          message: e.message,
        });
      });
    },
    async createBucket(name, bucketOptions = {}) {
      objects.createBucket(name, bucketOptions.fileSizeLimit);
      await rows?.bucket(name, bucketOptions.fileSizeLimit);
    },
    async close() {
      await rows?.close();
    },
    async putObject(bucket, key, content, type = 'application/octet-stream') {
      await ready;
      const partial = objects.partialFile();
      await writeFile(partial, content);
      await commit(bucket, key, partial, type, Buffer.byteLength(content));
    },
    async readObject(bucket, key) {
      const found = objects.get(bucket, key);
      return found ? readFile(found.file) : undefined;
    },
    cutNextDownload(bytes) {
      cutAfter = bytes;
    },
    failNext(count, status, failOptions = {}) {
      faults = {
        count,
        status,
        error: failOptions.error ?? 'internal',
        ...(failOptions.method ? { method: failOptions.method } : {}),
      };
    },
  };
}

function json(res: ServerResponse, status: number, body: unknown) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

export async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
