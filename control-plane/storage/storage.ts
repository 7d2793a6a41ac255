import { assertBucketName, assertTenantPath } from '../../contract/storage-paths.ts';

export interface LocalFile {
  /** A file on local disk with the object's bytes (read-only for the caller). */
  path: string;
  size: number;
}

/** An object store laid out as buckets of keys (Supabase Storage, or a local folder). */
export interface StorageBackend {
  /**
   * Makes the object available as a local file; throws FILE_NOT_FOUND, DOWNLOAD_FAILED,
   * STORAGE_UNAUTHORIZED. Backends refuse keys that are not canonical (assertStorageKey)
   * and bucket names that are not plain (assertBucketName).
   */
  download(bucket: string, key: string, workDir: string): Promise<LocalFile>;
  /**
   * Stores a local file under the key, replacing what is there; throws UPLOAD_FAILED, …
   * With `check.sha256` the bytes sent must hash to it, or UPLOAD_FAILED (the fs backend
   * then stores nothing). `check.lease` names the job a per-object upload grant is for.
   */
  upload(
    bucket: string,
    key: string,
    localPath: string,
    contentType: string,
    check?: UploadCheck,
  ): Promise<void>;
}

export interface UploadCheck {
  sha256?: string;
  lease?: { jobId: string; leaseToken: string };
}

/**
 * Storage as a handler sees it: every key is checked to be canonical and to lie under
 * the job's `accounts/{account_id}/` prefix, and every bucket name to be plain, before
 * the backend is touched (backends check both again).
 */
export class TenantStorage {
  readonly #backend: StorageBackend;
  readonly accountId: string;
  readonly #workDir: string;

  constructor(backend: StorageBackend, accountId: string, workDir: string) {
    this.#backend = backend;
    this.accountId = accountId;
    this.#workDir = workDir;
  }

  // async: a refused path rejects the promise like any other storage error.
  async download(bucket: string, key: string): Promise<LocalFile> {
    const checked = assertTenantPath(this.accountId, key);
    return this.#backend.download(assertBucketName(bucket), checked, this.#workDir);
  }

  async upload(bucket: string, key: string, localPath: string, contentType: string): Promise<void> {
    const checked = assertTenantPath(this.accountId, key);
    return this.#backend.upload(assertBucketName(bucket), checked, localPath, contentType);
  }
}
