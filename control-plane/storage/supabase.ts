import { randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import type { SupabaseClient } from '@supabase/supabase-js';
import { HdError, type ErrorCode } from '../../contract/errors.ts';
import { createServiceClient } from '../supabase-client.ts';
import { TUS_CHUNK_BYTES, uploadResumable } from './resumable.ts';
import type { LocalFile, StorageBackend } from './storage.ts';

type Operation = 'download' | 'upload' | 'read bucket';

// Storage names its errors in the body; older versions answer "not found" as HTTP 400
// with statusCode "404", so the body decides before the HTTP status does.
const STATUS_BY_NAME: Record<string, number> = {
  NoSuchKey: 404,
  NoSuchBucket: 404,
  not_found: 404,
  InvalidJWT: 401,
  AccessDenied: 403,
  Unauthorized: 403,
  EntityTooLarge: 413,
  'Payload too large': 413,
  ResourceAlreadyExists: 409,
  Duplicate: 409,
};

interface StorageFailure {
  message?: string;
  status?: number;
  statusCode?: string;
  code?: string;
  error?: string;
}

/** The status a Storage error stands for: body statusCode, then error name, then HTTP. */
export function storageStatus(error: StorageFailure): number | undefined {
  const fromBody = Number.parseInt(error.statusCode ?? '', 10);
  if (Number.isFinite(fromBody) && fromBody >= 400) return fromBody;
  for (const name of [error.code, error.error, error.statusCode]) {
    if (name && STATUS_BY_NAME[name]) return STATUS_BY_NAME[name];
  }
  return error.status && error.status >= 400 ? error.status : undefined;
}

/**
 * Maps a Storage failure to our codes. Not found and refusals are permanent (retrying
 * cannot help); throttling, server errors and network failures are retryable.
 */
export function mapStorageError(
  op: Operation,
  bucket: string,
  key: string,
  error: StorageFailure,
): HdError {
  const status = storageStatus(error);
  const what = `${bucket}/${key}`;
  const said = `Supabase Storage: ${status ?? 'no answer'} ${error.message ?? ''}`.trim();
  const fail = (code: ErrorCode, message: string, retryable?: boolean) =>
    new HdError(code, `${message} (${said})`, {
      cause: error,
      details: { storage_status: status, bucket, key },
      ...(retryable === undefined ? {} : { retryable }),
    });
  const transfer: ErrorCode = op === 'upload' ? 'INTERNAL_ERROR' : 'DOWNLOAD_FAILED';
  if (status === 404) {
    const bucketMissing = /bucket/i.test(error.message ?? '') || op === 'read bucket';
    return fail(
      'FILE_NOT_FOUND',
      bucketMissing ? `bucket ${bucket} does not exist` : `storage object ${what} does not exist`,
    );
  }
  if (status === 401 || status === 403) {
    return fail(
      transfer,
      `${op} of ${what} refused: check SUPABASE_SERVICE_ROLE_KEY (it must be the service-role key of this project)`,
      false,
    );
  }
  if (status === 413) return fail('INVALID_INPUT', `${what} is larger than the bucket allows`);
  if (status === 409) return fail(transfer, `${op} of ${what} conflicted with another write`, true);
  if (status !== undefined && status < 500 && status !== 408 && status !== 429) {
    return fail('INVALID_INPUT', `${op} of ${what} was refused as invalid`);
  }
  return fail(transfer, `${op} of ${what} failed`, true);
}

export interface SupabaseStorageOptions {
  url: string;
  serviceRoleKey: string;
  /** Files larger than this go by resumable (TUS) upload, in bytes. Default 6 MiB, as Supabase advises. */
  resumableAboveBytes?: number;
  client?: SupabaseClient;
}

/**
 * Storage backend `supabase`: objects in Supabase Storage buckets. Downloads stream to
 * a file in the job's work dir and uploads stream from disk, so memory stays flat
 * whatever the file size; files above 6 MiB go by resumable upload in 6 MiB chunks.
 * Uploads always upsert (jobs are retried) with an explicit
 * content type. Keys arrive checked by TenantStorage.
 */
export class SupabaseStorage implements StorageBackend {
  readonly client: SupabaseClient;
  readonly #options: SupabaseStorageOptions;

  constructor(options: SupabaseStorageOptions) {
    this.#options = options;
    // No overall timeout: a large transfer may take long; a dead connection still fails.
    this.client =
      options.client ??
      createServiceClient({ url: options.url, serviceRoleKey: options.serviceRoleKey });
  }

  async download(bucket: string, key: string, workDir: string): Promise<LocalFile> {
    const { data, error } = await this.client.storage.from(bucket).download(key).asStream();
    if (error) throw mapStorageError('download', bucket, key, error);
    const target = join(workDir, `${randomUUID()}-${basename(key).replace(/[^\w.-]/g, '_')}`);
    let size = 0;
    const count = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        size += chunk.length;
        done(null, chunk);
      },
    });
    try {
      const body = Readable.fromWeb(data as unknown as WebReadableStream<Uint8Array>);
      await pipeline(body, count, createWriteStream(target, { flags: 'wx' }));
    } catch (cause) {
      await rm(target, { force: true });
      throw mapStorageError('download', bucket, key, {
        message: `transfer interrupted: ${(cause as Error).message}`,
      });
    }
    return { path: target, size };
  }

  async upload(bucket: string, key: string, localPath: string, contentType: string) {
    // A missing local file is our error (it throws here), not a storage failure.
    const { size } = await stat(localPath);
    if (size > (this.#options.resumableAboveBytes ?? TUS_CHUNK_BYTES)) {
      const storageUrl = `${this.#options.url.replace(/\/+$/, '')}/storage/v1`;
      const { serviceRoleKey } = this.#options;
      await uploadResumable({
        storageUrl,
        serviceRoleKey,
        bucket,
        key,
        localPath,
        size,
        contentType,
      }).catch((failure: Parameters<typeof mapStorageError>[3]) => {
        throw mapStorageError('upload', bucket, key, failure);
      });
      return;
    }
    const { error } = await this.client.storage
      .from(bucket)
      .upload(key, createReadStream(localPath), { contentType, upsert: true, duplex: 'half' });
    if (error) throw mapStorageError('upload', bucket, key, error);
  }

  /** Whether the bucket exists and its objects can be listed (for `hd-runner doctor`). */
  async checkBucket(bucket: string): Promise<{ listed: number }> {
    const found = await this.client.storage.getBucket(bucket);
    if (found.error) throw mapStorageError('read bucket', bucket, '', found.error);
    const listed = await this.client.storage.from(bucket).list('accounts', { limit: 1 });
    if (listed.error) throw mapStorageError('read bucket', bucket, 'accounts/', listed.error);
    return { listed: listed.data.length };
  }
}
