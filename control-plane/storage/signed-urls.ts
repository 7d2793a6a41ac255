import { createWriteStream } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { z } from 'zod';
import { HdError } from '../../contract/errors.ts';
import { assertBucketName, assertStorageKey } from '../../contract/storage-paths.ts';
import { retryAfterMs } from '../../runner/llm/retry.ts';
import { sleep } from '../../scheduler/retry.ts';
import { TUS_CHUNK_BYTES, uploadResumableChecked } from './resumable.ts';
import { sendFile } from './send-file.ts';
import type { LocalFile, StorageBackend, UploadCheck } from './storage.ts';
import { mapStorageError } from './supabase-errors.ts';
import { authHeaders, noAnswer, objectUrl, readFailure, storageBaseUrl } from './supabase-http.ts';

// Asks of one upload grant answered 429 before the upload fails (retryable), and the
// longest wait between two, whatever Retry-After says.
const GRANT_TRIES = 30;
const MAX_GRANT_WAIT_MS = 30_000;

/** HD_JOB_STORAGE_URLS: `{"bucket/key": "https://…/object/sign/bucket/key?token=…"}`. */
export const signedUrlMapSchema = z.record(z.string(), z.url());

/** The map's key for one object. */
export const signedUrlKey = (bucket: string, key: string) => `${bucket}/${key}`;

/**
 * Storage backend of a runner with a job-scoped credential (supabase storage): it holds
 * no key, only one time-limited signed download URL per input object of its job, made by
 * the scheduler, and the address where the scheduler grants it upload URLs for keys under
 * its job's output prefix. Any other object is out of reach, whatever path the job names.
 */
export class SignedUrlStorage implements StorageBackend {
  readonly #urls: ReadonlyMap<string, string>;
  readonly #uploadGrantUrl: string | undefined;
  readonly #resumableAboveBytes: number;

  /** `resumableAboveBytes`: files larger go by resumable upload (default 6 MiB, as Supabase advises). */
  constructor(urls: Record<string, string>, uploadGrantUrl?: string, resumableAboveBytes?: number) {
    this.#urls = new Map(Object.entries(urls));
    this.#uploadGrantUrl = uploadGrantUrl;
    this.#resumableAboveBytes = resumableAboveBytes ?? TUS_CHUNK_BYTES;
  }

  async download(bucket: string, key: string, workDir: string): Promise<LocalFile> {
    const name = signedUrlKey(assertBucketName(bucket), assertStorageKey(key));
    const url = this.#urls.get(name);
    if (!url)
      throw new HdError(
        'FILE_NOT_FOUND',
        `storage object ${name} is not an input of this job (the scheduler granted no URL for it: it did not exist when the job started, or the job does not read it)`,
        { details: { bucket, key } },
      );
    const response = await fetch(url).catch((cause: unknown) => {
      throw mapStorageError('download', bucket, key, noAnswer('download', cause));
    });
    if (!response.ok)
      throw mapStorageError('download', bucket, key, await readFailure(response, 'download'));
    return saveDownload(response, workDir, bucket, key);
  }

  /**
   * Asks the scheduler (HD_UPLOAD_GRANT_URL) for a signed upload URL for this one key,
   * showing the job's lease, then streams the file to it (one PUT), or above 6 MiB sends
   * it in chunks by resumable upload with the URL's token. The scheduler grants keys
   * under the job's own prefix of the outputs bucket only.
   */
  async upload(
    bucket: string,
    key: string,
    localPath: string,
    contentType: string,
    check: UploadCheck = {},
  ): Promise<void> {
    if (!this.#uploadGrantUrl || !check.lease)
      throw new HdError(
        'UPLOAD_FAILED',
        `upload of ${bucket}/${key} refused: this runner holds no upload grant`,
        { retryable: false },
      );
    const { size } = await stat(localPath);
    const url = await this.#grant(bucket, assertStorageKey(key), check.lease);
    // Large files by resumable upload on the grant's token (Storage's /upload/resumable/sign).
    if (size > this.#resumableAboveBytes) {
      const signature = new URL(url).searchParams.get('token') ?? '';
      const storageUrl = url.slice(0, url.indexOf('/object/upload/sign/'));
      const upload = { storageUrl, auth: { signature }, bucket, key, localPath, size };
      return uploadResumableChecked({ ...upload, contentType }, check.sha256);
    }
    // No upsert: the scheduler removed what was at the key before it granted it.
    await sendFile({
      url,
      method: 'PUT',
      headers: { 'content-type': contentType },
      ...{ localPath, size, bucket, key, sha256: check.sha256 },
    });
  }

  /**
   * The grant, asked again after the scheduler's Retry-After while it answers 429 (this
   * runner asked for more grants than HD_UPLOAD_GRANT_RATE lets through), at most
   * GRANT_TRIES times.
   */
  async #grant(bucket: string, key: string, lease: NonNullable<UploadCheck['lease']>) {
    for (let tries = 1; ; tries++) {
      const response = await this.#askGrant(bucket, key, lease);
      if (response.status !== 429 || tries >= GRANT_TRIES)
        return this.#grantUrl(bucket, key, response);
      await response.body?.cancel();
      const wait = Math.min(retryAfterMs(response.headers) ?? 1000, MAX_GRANT_WAIT_MS);
      await sleep(wait + Math.random() * 250);
    }
  }

  #askGrant(bucket: string, key: string, lease: NonNullable<UploadCheck['lease']>) {
    return fetch(this.#uploadGrantUrl!, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ job_id: lease.jobId, lease_token: lease.leaseToken, bucket, key }),
    }).catch((cause: unknown) => {
      throw new HdError(
        'UPLOAD_FAILED',
        `upload grant for ${bucket}/${key}: no answer: ${(cause as Error).message}`,
        { cause },
      );
    });
  }

  async #grantUrl(bucket: string, key: string, response: Response) {
    const body = (await response.json().catch(() => ({}))) as { url?: unknown; error?: unknown };
    if (!response.ok || typeof body.url !== 'string')
      throw new HdError(
        'UPLOAD_FAILED',
        `upload grant for ${bucket}/${key} refused (HTTP ${response.status}): ${String(body.error ?? 'no URL')}`,
        // Refused (4xx) stays refused; the scheduler's own trouble (5xx, or 429 after
        // GRANT_TRIES asks) may pass.
        { retryable: response.status >= 500 || response.status === 429 },
      );
    return body.url;
  }
}

/**
 * The scheduler's side: signed download URLs for objects of one bucket, in one request
 * (Storage's `POST /object/sign/{bucket}`; keys travel in the JSON body, not the URL).
 * Objects Storage will not sign (absent) are left out; the runner then names them.
 */
export function supabaseUrlSigner(supabaseUrl: string, serviceRoleKey: string) {
  const storageUrl = storageBaseUrl(supabaseUrl);
  return async (bucket: string, keys: readonly string[], expiresIn: number) => {
    const signed = new Map<string, string>();
    if (keys.length === 0) return signed;
    const url = `${storageUrl}/object/sign/${encodeURIComponent(assertBucketName(bucket))}`;
    const response = await fetch(url, {
      method: 'POST',
      headers: { ...authHeaders(serviceRoleKey), 'content-type': 'application/json' },
      body: JSON.stringify({ expiresIn, paths: keys }),
    }).catch((cause: unknown) => {
      throw mapStorageError('download', bucket, keys[0]!, noAnswer('sign', cause));
    });
    if (!response.ok)
      throw mapStorageError('download', bucket, keys[0]!, await readFailure(response, 'sign'));
    const rows = z
      .array(z.object({ path: z.string().nullable(), signedURL: z.string().nullable() }))
      .parse(await response.json());
    for (const row of rows)
      if (row.path && row.signedURL) signed.set(row.path, `${storageUrl}${row.signedURL}`);
    return signed;
  };
}

/**
 * The scheduler's side: a signed upload URL for one object (Storage's
 * `POST /object/upload/sign/{bucket}/{key}`, as supabase-js `createSignedUploadUrl`),
 * without upsert: it creates the object once and cannot overwrite it (00030: an object
 * checked at record time stays as it was checked).
 */
export function supabaseUploadSigner(supabaseUrl: string, serviceRoleKey: string) {
  const storageUrl = storageBaseUrl(supabaseUrl);
  return async (bucket: string, key: string): Promise<string> => {
    const target = objectUrl(storageUrl, bucket, key).replace('/object/', '/object/upload/sign/');
    const response = await fetch(target, {
      method: 'POST',
      headers: authHeaders(serviceRoleKey),
    }).catch((cause: unknown) => {
      throw mapStorageError('upload', bucket, key, noAnswer('sign upload', cause));
    });
    if (!response.ok)
      throw mapStorageError('upload', bucket, key, await readFailure(response, 'sign upload'));
    const { url } = z
      .object({ url: z.string().startsWith('/object/upload/sign/') })
      .parse(await response.json());
    return `${storageUrl}${url}`;
  };
}

/**
 * The scheduler's side: removes objects of one bucket (Storage's `DELETE /object/{bucket}`
 * with `{prefixes}`, as supabase-js `remove`); absent ones are no error.
 */
export function supabaseObjectRemover(supabaseUrl: string, serviceRoleKey: string) {
  const storageUrl = storageBaseUrl(supabaseUrl);
  return async (bucket: string, keys: readonly string[]): Promise<void> => {
    if (keys.length === 0) return;
    const response = await fetch(
      `${storageUrl}/object/${encodeURIComponent(assertBucketName(bucket))}`,
      {
        method: 'DELETE',
        headers: { ...authHeaders(serviceRoleKey), 'content-type': 'application/json' },
        body: JSON.stringify({ prefixes: keys.map((key) => assertStorageKey(key)) }),
      },
    ).catch((cause: unknown) => {
      throw mapStorageError('upload', bucket, keys[0]!, noAnswer('remove', cause));
    });
    if (!response.ok)
      throw mapStorageError('upload', bucket, keys[0]!, await readFailure(response, 'remove'));
    await response.body?.cancel();
  };
}

/** Streams a download's body into a new file of the work dir (memory stays flat). */
export async function saveDownload(
  response: Response,
  workDir: string,
  bucket: string,
  key: string,
): Promise<LocalFile> {
  const target = join(workDir, `${crypto.randomUUID()}-${basename(key).replace(/[^\w.-]/g, '_')}`);
  let size = 0;
  const count = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      size += chunk.length;
      done(null, chunk);
    },
  });
  try {
    const body = Readable.fromWeb(response.body as unknown as WebReadableStream<Uint8Array>);
    await pipeline(body, count, createWriteStream(target, { flags: 'wx' }));
  } catch (cause) {
    await rm(target, { force: true });
    throw mapStorageError('download', bucket, key, {
      message: `transfer interrupted: ${(cause as Error).message}`,
    });
  }
  return { path: target, size };
}
