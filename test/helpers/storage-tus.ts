import { randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { STORAGE_KEY, StorageHttpError, type StandInObjects } from './storage-objects.ts';
import type { Caller, StorageRequest } from './storage-server.ts';

/**
 * The resumable-upload (TUS 1.0.0) part of the Storage stand-in, as Supabase Storage
 * serves it at /upload/resumable: create (POST, Upload-Length, Upload-Metadata with
 * bucketName/objectName/contentType), append (PATCH at Upload-Offset, chunks of any
 * size, as on Storage's file backend), and where-am-I (HEAD). As Storage does, every
 * create and PATCH checks overwrite with its OWN `x-upsert` header, errors are plain
 * text with the real HTTP status, and Location is absolute (from X-Forwarded-*).
 * Signed (/upload/resumable/sign, Storage's tus lifecycle `onIncomingRequest`): every
 * request carries a signed upload URL's token in `x-signature`, checked against the
 * upload's bucket/key; overwrite then follows the token's `upsert`, not a header.
 */
export type Signature = (bucket: string, key: string) => { upsert: boolean };
interface Upload {
  bucket: string;
  key: string;
  file: string;
  length: number;
  offset: number;
  contentType: string;
}

export interface TusContext {
  objects: StandInObjects;
  commit(bucket: string, key: string, partial: string, type: string, size: number): Promise<void>;
}

const tusError = (status: number, message: string) =>
  new StorageHttpError(status, 'TusError', message, undefined, true);

function metadata(header: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of (header ?? '').split(',')) {
    const [name, value] = pair.trim().split(' ');
    if (name) out[name] = Buffer.from(value ?? '', 'base64').toString('utf8');
  }
  return out;
}

/** The absolute upload URL, from the forwarded host and protocol as Storage builds it. */
function locationOf(req: IncomingMessage, id: string, signed: boolean): string {
  const proto = (req.headers['x-forwarded-proto'] as string | undefined) ?? 'http';
  const host = (req.headers['x-forwarded-host'] as string | undefined) ?? req.headers.host;
  const prefix = (req.headers['x-forwarded-prefix'] as string | undefined) ?? '/storage/v1';
  const path = `/upload/resumable${signed ? '/sign' : ''}/${id}`;
  return `${proto}://${host}${prefix.replace(/\/+$/, '')}${path}`;
}

export function createTusHandler(ctx: TusContext) {
  const uploads = new Map<string, Upload>();

  /** Storage's overwrite check, with the header of THIS request (or its signed token). */
  const checkOverwrite = (
    req: IncomingMessage,
    bucket: string,
    key: string,
    signature?: Signature,
  ) => {
    const upsert = signature ? signature(bucket, key).upsert : req.headers['x-upsert'] === 'true';
    if (ctx.objects.get(bucket, key) && !upsert) {
      throw tusError(409, 'The resource already exists');
    }
  };
  const checkRole = (caller: Caller) => {
    if (caller.valid && caller.role !== 'service_role') {
      throw tusError(403, 'new row violates row-level security policy');
    }
  };

  return async function handleTus(
    req: IncomingMessage,
    res: ServerResponse,
    id: string | undefined,
    caller: Caller,
    seen: StorageRequest,
    signature?: Signature,
  ): Promise<void> {
    const method = req.method ?? 'GET';
    if (method === 'POST' && !id) {
      const meta = metadata(req.headers['upload-metadata'] as string | undefined);
      const length = Number(req.headers['upload-length']);
      const { bucketName: bucket, objectName: key } = meta;
      if (bucket === undefined || key === undefined || !Number.isInteger(length)) {
        throw tusError(
          400,
          'Upload-Length and Upload-Metadata (bucketName, objectName) are required',
        );
      }
      Object.assign(seen, { bucket, key });
      signature?.(bucket, key); // checked first, as Storage's onIncomingRequest does
      if (!STORAGE_KEY.test(key)) throw tusError(400, `Invalid key: ${key}`);
      const found = (() => {
        try {
          return ctx.objects.bucket(bucket);
        } catch {
          throw tusError(404, 'Bucket not found');
        }
      })();
      checkRole(caller);
      if (found.limit !== undefined && length > found.limit) {
        throw tusError(413, 'The object exceeded the maximum allowed size');
      }
      checkOverwrite(req, bucket, key, signature);
      const uploadId = Buffer.from(`${bucket}/${key}/${randomUUID()}`).toString('base64url');
      const file = ctx.objects.partialFile();
      await pipeline(req, createWriteStream(file));
      const contentType = meta.contentType ?? 'application/octet-stream';
      uploads.set(uploadId, { bucket, key, file, length, offset: 0, contentType });
      const location = locationOf(req, uploadId, !!signature);
      res.writeHead(201, { location, 'tus-resumable': '1.0.0' });
      res.end();
      return;
    }
    const upload = id ? uploads.get(id) : undefined;
    if (!upload) throw tusError(404, 'The file for this url was not found');
    signature?.(upload.bucket, upload.key);
    if (method === 'HEAD') {
      req.resume();
      res.writeHead(200, {
        'upload-offset': String(upload.offset),
        'upload-length': String(upload.length),
        'tus-resumable': '1.0.0',
        'cache-control': 'no-store',
      });
      res.end();
      return;
    }
    if (method !== 'PATCH') throw tusError(405, `${method} is not allowed`);
    checkRole(caller);
    checkOverwrite(req, upload.bucket, upload.key, signature);
    if (Number(req.headers['upload-offset']) !== upload.offset) {
      throw tusError(409, 'The Upload-Offset header does not match the current offset');
    }
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    if (upload.offset + body.length > upload.length) {
      throw tusError(413, 'The upload would exceed its Upload-Length');
    }
    await new Promise<void>((resolve, reject) => {
      const out = createWriteStream(upload.file, { flags: 'a' });
      out.on('error', reject);
      out.end(body, () => resolve());
    });
    upload.offset += body.length;
    if (upload.offset === upload.length) {
      await ctx.commit(upload.bucket, upload.key, upload.file, upload.contentType, upload.length);
      uploads.delete(id!);
    }
    res.writeHead(204, { 'upload-offset': String(upload.offset), 'tus-resumable': '1.0.0' });
    res.end();
  };
}
