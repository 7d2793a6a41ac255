import { stat } from 'node:fs/promises';
import type { SupabaseClient } from '@supabase/supabase-js';
import { assertBucketName } from '../../contract/storage-paths.ts';
import { createServiceClient } from '../supabase-client.ts';
import { saveDownload } from './signed-urls.ts';
import { TUS_CHUNK_BYTES, uploadResumableChecked } from './resumable.ts';
import { sendFile } from './send-file.ts';
import type { LocalFile, StorageBackend, UploadCheck } from './storage.ts';
import {
  isMissingBucket,
  mapStorageError,
  storageStatus,
  storageUnauthorized,
  type StorageFailure,
} from './supabase-errors.ts';
import { authHeaders, noAnswer, objectUrl, readFailure, storageBaseUrl } from './supabase-http.ts';

export { mapStorageError, storageStatus } from './supabase-errors.ts';

export interface SupabaseStorageOptions {
  url: string;
  serviceRoleKey: string;
  /** Files larger than this go by resumable (TUS) upload, in bytes. Default 6 MiB, as Supabase advises. */
  resumableAboveBytes?: number;
  client?: SupabaseClient;
}

/**
 * Storage backend `supabase`: objects in Supabase Storage buckets. Object requests are
 * built here, segment by segment (supabase-js would pass a key into the URL as it is,
 * where `%2e%2e` becomes `..`). Downloads stream to a file in the job's work dir and
 * uploads stream from disk with their length declared (Storage checks a bucket's size
 * limit against it); files above 6 MiB go by resumable upload. Uploads always upsert
 * (jobs are retried) with an explicit content type.
 */
export class SupabaseStorage implements StorageBackend {
  /** supabase-js, for the bucket calls of `doctor` (no object keys in their URLs). */
  readonly client: SupabaseClient;
  readonly #options: SupabaseStorageOptions;
  readonly #storageUrl: string;

  constructor(options: SupabaseStorageOptions) {
    this.#options = options;
    this.#storageUrl = storageBaseUrl(options.url);
    // No overall timeout: a large transfer may take long; a dead connection still fails.
    this.client =
      options.client ??
      createServiceClient({ url: options.url, serviceRoleKey: options.serviceRoleKey });
  }

  async download(bucket: string, key: string, workDir: string): Promise<LocalFile> {
    const url = objectUrl(this.#storageUrl, bucket, key);
    const response = await fetch(url, { headers: authHeaders(this.#options.serviceRoleKey) }).catch(
      (cause: unknown) => {
        throw mapStorageError('download', bucket, key, noAnswer('download', cause));
      },
    );
    if (!response.ok) {
      const failure = await readFailure(response, 'download');
      throw await this.#explainDownloadFailure(bucket, key, failure);
    }
    return saveDownload(response, workDir, bucket, key);
  }

  /**
   * Storage reads an invalid or expired JWT on GET /object as anonymous and answers
   * NoSuchBucket; the bucket endpoint does check the key, so one call there tells a
   * missing bucket from a refused key.
   */
  async #explainDownloadFailure(bucket: string, key: string, failure: StorageFailure) {
    if (storageStatus(failure) !== 404 || !isMissingBucket(failure)) {
      return mapStorageError('download', bucket, key, failure);
    }
    const probe = await fetch(`${this.#storageUrl}/bucket/${encodeURIComponent(bucket)}`, {
      headers: authHeaders(this.#options.serviceRoleKey),
    }).catch((cause: unknown) => noAnswer('bucket check', cause));
    if (!(probe instanceof Response)) return mapStorageError('download', bucket, key, probe);
    const probed = probe.ok ? undefined : await readFailure(probe, 'bucket check');
    await probe.body?.cancel().catch(() => undefined);
    const status = probed ? storageStatus(probed) : 200;
    // The bucket is there, or the key is refused outright: the object route saw no valid key.
    if (status === 200 || status === 401 || status === 403) {
      return storageUnauthorized('download', bucket, key, probed ?? failure);
    }
    return mapStorageError('download', bucket, key, status === 404 ? failure : probed!);
  }

  async upload(
    bucket: string,
    key: string,
    localPath: string,
    contentType: string,
    check: UploadCheck = {},
  ) {
    // A missing local file is our error (it throws here), not a storage failure.
    const { size } = await stat(localPath);
    const url = objectUrl(this.#storageUrl, bucket, key);
    if (size > (this.#options.resumableAboveBytes ?? TUS_CHUNK_BYTES)) {
      const auth = { serviceRoleKey: this.#options.serviceRoleKey };
      const upload = { storageUrl: this.#storageUrl, auth, bucket, key, localPath, size };
      return uploadResumableChecked({ ...upload, contentType }, check.sha256);
    }
    await sendFile({
      url,
      method: 'POST',
      headers: {
        ...authHeaders(this.#options.serviceRoleKey),
        'content-type': contentType,
        'cache-control': 'max-age=3600',
        'x-upsert': 'true',
      },
      ...{ localPath, size, bucket, key, sha256: check.sha256 },
    });
  }

  /** Whether the bucket exists and its objects can be listed (for `hd-runner doctor`). */
  async checkBucket(bucket: string): Promise<{ listed: number }> {
    const found = await this.client.storage.getBucket(assertBucketName(bucket));
    if (found.error) throw mapStorageError('read bucket', bucket, '', found.error);
    const listed = await this.client.storage.from(bucket).list('accounts', { limit: 1 });
    if (listed.error) throw mapStorageError('read bucket', bucket, 'accounts/', listed.error);
    return { listed: listed.data.length };
  }
}
