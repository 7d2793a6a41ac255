import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { dirname, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createTusHandler } from './storage-tus.ts';

/**
 * A stand-in for Supabase Storage, which cannot run here (it needs its own service,
 * database schema and S3 backend). It speaks the part of the Storage object API that
 * supabase-js's storage client uses — upload (POST, x-upsert), update (PUT), download,
 * list, get bucket, resumable (TUS) upload — with Supabase's error bodies `{statusCode, error, message}`,
 * including its habit of answering "not found" as HTTP 400 with statusCode "404".
 * Objects live under `{root}/{bucket}/{key}`; bodies are streamed both ways.
 * Only the service role may act (this stand-in has no storage RLS policies).
 */
export interface StorageStandIn {
  handle(req: IncomingMessage, res: ServerResponse, path: string): void;
  createBucket(name: string, options?: { fileSizeLimit?: number }): Promise<void>;
  /** The next `count` requests (of `method`, if given) answer `status` with Storage's error body. */
  failNext(count: number, status: number, options?: { error?: string; method?: string }): void;
  /** The next download sends its headers and `bytes` of the body, then drops the connection. */
  cutNextDownload(bytes: number): void;
  /** Requests seen: method, path, content type, x-upsert. */
  readonly requests: { method: string; path: string; contentType?: string; upsert?: string }[];
  /** Content type each object was stored with. */
  readonly contentTypes: Map<string, string>;
}

class StorageHttpError extends Error {
  readonly http: number;
  readonly statusCode: string;
  readonly error: string;

  constructor(http: number, statusCode: string, error: string, message: string) {
    super(message);
    this.http = http;
    this.statusCode = statusCode;
    this.error = error;
  }
}

const notFound = (what: string) =>
  new StorageHttpError(400, '404', 'not_found', `${what} not found`);

function verifyServiceRole(req: IncomingMessage, secret: string): void {
  const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
  const [header, payload, signature] = token.split('.');
  if (!header || !payload || !signature) {
    throw new StorageHttpError(
      400,
      '403',
      'Unauthorized',
      'headers must have required property authorization',
    );
  }
  const expected = createHmac('sha256', secret).update(`${header}.${payload}`).digest();
  const given = Buffer.from(signature, 'base64url');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    throw new StorageHttpError(400, '403', 'Unauthorized', 'invalid signature');
  }
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as {
    role?: string;
  };
  if (claims.role !== 'service_role') {
    throw new StorageHttpError(
      403,
      '403',
      'Unauthorized',
      'new row violates row-level security policy',
    );
  }
}

export function createStorageStandIn(options: { root: string; jwtSecret: string }): StorageStandIn {
  const { root, jwtSecret } = options;
  const limits = new Map<string, number | undefined>();
  const contentTypes = new Map<string, string>();
  const requests: StorageStandIn['requests'] = [];
  let faults:
    { count: number; status: number; error: string; method?: string | undefined } | undefined;
  let cutAfter: number | undefined;

  const tus = createTusHandler({
    objectFile: (bucket, key) => objectFile(bucket, key),
    limitOf: (bucket) => limits.get(bucket),
    stored: (bucket, key, type) => contentTypes.set(`${bucket}/${key}`, type),
    fail: (http, statusCode, error, message) =>
      new StorageHttpError(http, statusCode, error, message),
  });
  const bucketDir = async (bucket: string) => {
    const dir = join(root, bucket);
    if (!(await stat(dir).catch(() => undefined))?.isDirectory()) throw notFound('Bucket');
    return dir;
  };
  const objectFile = async (bucket: string, key: string) => {
    const segments = key.split('/');
    if (!key || segments.some((s) => s === '' || s === '.' || s === '..')) {
      throw new StorageHttpError(400, '400', 'InvalidKey', `Invalid key: ${key}`);
    }
    return join(await bucketDir(bucket), ...segments);
  };

  async function upload(req: IncomingMessage, bucket: string, key: string, mode: 'POST' | 'PUT') {
    const file = await objectFile(bucket, key);
    const exists = (await stat(file).catch(() => undefined))?.isFile() ?? false;
    if (mode === 'POST' && exists && req.headers['x-upsert'] !== 'true') {
      throw new StorageHttpError(400, '409', 'Duplicate', 'The resource already exists');
    }
    if (mode === 'PUT' && !exists) throw notFound('Object');
    const type = req.headers['content-type'] ?? 'application/octet-stream';
    if (type.startsWith('multipart/form-data')) {
      throw new StorageHttpError(
        415,
        '415',
        'invalid_mime_type',
        'this stand-in takes raw bodies only',
      );
    }
    const limit = limits.get(bucket);
    let size = 0;
    const guard = new Transform({
      transform(chunk: Buffer, _enc, done) {
        size += chunk.length;
        if (limit !== undefined && size > limit) {
          done(
            new StorageHttpError(
              413,
              '413',
              'Payload too large',
              'The object exceeded the maximum allowed size',
            ),
          );
        } else done(null, chunk);
      },
    });
    await mkdir(dirname(file), { recursive: true });
    const partial = `${file}.upload-${randomUUID()}`;
    try {
      await pipeline(req, guard, createWriteStream(partial));
      await rename(partial, file);
    } catch (error) {
      await rm(partial, { force: true });
      req.resume();
      throw error;
    }
    contentTypes.set(`${bucket}/${key}`, type);
    return { Key: `${bucket}/${key}`, Id: randomUUID() };
  }

  async function route(req: IncomingMessage, res: ServerResponse, path: string) {
    const method = req.method ?? 'GET';
    const parts = path.split('?')[0]!.split('/').filter(Boolean).map(decodeURIComponent);
    requests.push({
      method,
      path,
      ...(req.headers['content-type'] ? { contentType: req.headers['content-type'] } : {}),
      ...(typeof req.headers['x-upsert'] === 'string' ? { upsert: req.headers['x-upsert'] } : {}),
    });
    if (faults && faults.count > 0 && (!faults.method || faults.method === method)) {
      faults.count--;
      req.resume();
      throw new StorageHttpError(
        faults.status,
        String(faults.status),
        faults.error,
        'injected fault',
      );
    }
    verifyServiceRole(req, jwtSecret);
    const [area, ...rest] = parts;
    if (area === 'upload' && rest[0] === 'resumable') return tus(req, res, rest[1]);
    if (area === 'bucket' && method === 'GET' && rest.length === 1) {
      await bucketDir(rest[0]!);
      const limit = limits.get(rest[0]!) ?? null;
      return json(res, 200, { id: rest[0], name: rest[0], public: false, file_size_limit: limit });
    }
    if (area !== 'object')
      throw new StorageHttpError(404, '404', 'not_found', `no route ${method} ${path}`);
    if (rest[0] === 'list' && method === 'POST') {
      const body = JSON.parse((await readBody(req)) || '{}') as { prefix?: string; limit?: number };
      const dir = join(
        await bucketDir(rest[1]!),
        ...(body.prefix ?? '').split('/').filter(Boolean),
      );
      const names = (await readdir(dir).catch(() => [])).filter((n) => !n.includes('.upload-'));
      return json(
        res,
        200,
        names
          .sort()
          .slice(0, body.limit ?? 100)
          .map((name) => ({ name })),
      );
    }
    const [bucket, ...key] = rest[0] === 'authenticated' ? rest.slice(1) : rest;
    if (!bucket) throw notFound('Bucket');
    if (method === 'POST' || method === 'PUT') {
      return json(res, 200, await upload(req, bucket, key.join('/'), method));
    }
    if (method === 'GET') {
      const file = await objectFile(bucket, key.join('/'));
      const info = await stat(file).catch(() => undefined);
      if (!info?.isFile()) throw notFound('Object');
      res.writeHead(200, {
        'content-type':
          contentTypes.get(`${bucket}/${key.join('/')}`) ?? 'application/octet-stream',
        'content-length': String(info.size),
      });
      if (cutAfter !== undefined) {
        const end = cutAfter;
        cutAfter = undefined;
        const head = createReadStream(file, { start: 0, end: Math.max(0, end - 1) });
        for await (const chunk of head) res.write(chunk);
        res.destroy();
        return;
      }
      await pipeline(createReadStream(file), res);
      return;
    }
    throw new StorageHttpError(405, '405', 'method_not_allowed', `${method} ${path}`);
  }

  return {
    requests,
    contentTypes,
    handle(req, res, path) {
      route(req, res, path).catch((error: unknown) => {
        if (res.headersSent) return res.destroy(error as Error);
        const e =
          error instanceof StorageHttpError
            ? error
            : new StorageHttpError(500, '500', 'internal', (error as Error).message);
        json(res, e.http, { statusCode: e.statusCode, error: e.error, message: e.message });
      });
    },
    async createBucket(name, bucketOptions = {}) {
      await mkdir(join(root, name), { recursive: true });
      limits.set(name, bucketOptions.fileSizeLimit);
    },
    cutNextDownload(bytes) {
      cutAfter = bytes;
    },
    failNext(count, status, options = {}) {
      faults = { count, status, error: options.error ?? 'internal', method: options.method };
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

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
