import { randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, stat } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { dirname } from 'node:path';
import { pipeline } from 'node:stream/promises';

/**
 * The resumable-upload (TUS 1.0.0) part of the Storage stand-in, as Supabase Storage
 * serves it at /upload/resumable: create (POST, Upload-Length, Upload-Metadata with
 * bucketName/objectName/contentType, x-upsert), append (PATCH at Upload-Offset, chunks
 * of exactly 6 MiB but the last), and where-am-I (HEAD).
 */
export const TUS_CHUNK = 6 * 1024 * 1024;

interface Upload {
  bucket: string;
  key: string;
  file: string;
  length: number;
  offset: number;
  contentType: string;
}

export interface TusContext {
  objectFile(bucket: string, key: string): Promise<string>;
  limitOf(bucket: string): number | undefined;
  stored(bucket: string, key: string, contentType: string): void;
  fail(http: number, statusCode: string, error: string, message: string): Error;
}

function metadata(header: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of (header ?? '').split(',')) {
    const [name, value] = pair.trim().split(' ');
    if (name) out[name] = Buffer.from(value ?? '', 'base64').toString('utf8');
  }
  return out;
}

export function createTusHandler(ctx: TusContext) {
  const uploads = new Map<string, Upload>();

  return async function handleTus(
    req: IncomingMessage,
    res: ServerResponse,
    id: string | undefined,
  ): Promise<void> {
    const method = req.method ?? 'GET';
    if (method === 'POST' && !id) {
      const meta = metadata(req.headers['upload-metadata'] as string | undefined);
      const length = Number(req.headers['upload-length']);
      const { bucketName: bucket, objectName: key } = meta;
      if (!bucket || !key || !Number.isInteger(length)) {
        throw ctx.fail(400, '400', 'InvalidRequest', 'Upload-Length and metadata are required');
      }
      const file = await ctx.objectFile(bucket, key);
      const limit = ctx.limitOf(bucket);
      if (limit !== undefined && length > limit) {
        throw ctx.fail(
          413,
          '413',
          'Payload too large',
          'The object exceeded the maximum allowed size',
        );
      }
      const exists = (await stat(file).catch(() => undefined))?.isFile() ?? false;
      if (exists && req.headers['x-upsert'] !== 'true') {
        throw ctx.fail(409, '409', 'Duplicate', 'The resource already exists');
      }
      const uploadId = randomUUID();
      const partial = `${file}.upload-${uploadId}`;
      await mkdir(dirname(file), { recursive: true });
      await pipeline(req, createWriteStream(partial));
      const contentType = meta.contentType ?? 'application/octet-stream';
      uploads.set(uploadId, { bucket, key, file: partial, length, offset: 0, contentType });
      res.writeHead(201, {
        location: `/storage/v1/upload/resumable/${uploadId}`,
        'tus-resumable': '1.0.0',
      });
      res.end();
      return;
    }
    const upload = id ? uploads.get(id) : undefined;
    if (!upload) throw ctx.fail(404, '404', 'not_found', 'Upload not found');
    if (method === 'HEAD') {
      res.writeHead(200, {
        'upload-offset': String(upload.offset),
        'upload-length': String(upload.length),
        'tus-resumable': '1.0.0',
      });
      res.end();
      return;
    }
    if (method !== 'PATCH') throw ctx.fail(405, '405', 'method_not_allowed', method);
    if (Number(req.headers['upload-offset']) !== upload.offset) {
      req.resume();
      throw ctx.fail(409, '409', 'Conflict', `offset is ${upload.offset}`);
    }
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    const last = upload.offset + body.length >= upload.length;
    if ((!last && body.length !== TUS_CHUNK) || upload.offset + body.length > upload.length) {
      throw ctx.fail(400, '400', 'InvalidChunkSize', `chunks must be ${TUS_CHUNK} bytes`);
    }
    await new Promise<void>((resolve, reject) => {
      const out = createWriteStream(upload.file, { flags: 'a' });
      out.on('error', reject);
      out.end(body, () => resolve());
    });
    upload.offset += body.length;
    if (upload.offset === upload.length) {
      await rename(upload.file, upload.file.replace(/\.upload-[^/]+$/, ''));
      ctx.stored(upload.bucket, upload.key, upload.contentType);
      uploads.delete(id!);
    }
    res.writeHead(204, { 'upload-offset': String(upload.offset), 'tus-resumable': '1.0.0' });
    res.end();
  };
}
