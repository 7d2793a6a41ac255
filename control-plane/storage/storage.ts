import { assertTenantPath } from '../../contract/storage-paths.ts';

export interface LocalFile {
  /** A file on local disk with the object's bytes (read-only for the caller). */
  path: string;
  size: number;
}

/** An object store laid out as buckets of keys (Supabase Storage, or a local folder). */
export interface StorageBackend {
  /** Makes the object available as a local file; throws FILE_NOT_FOUND / DOWNLOAD_FAILED. */
  download(bucket: string, key: string, workDir: string): Promise<LocalFile>;
  /** Stores a local file under the key, replacing what is there. */
  upload(bucket: string, key: string, localPath: string, contentType: string): Promise<void>;
}

/**
 * Storage as a handler sees it: every key is checked to lie under the job's
 * `accounts/{account_id}/` prefix before the backend is touched.
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
    return this.#backend.download(bucket, assertTenantPath(this.accountId, key), this.#workDir);
  }

  async upload(bucket: string, key: string, localPath: string, contentType: string): Promise<void> {
    const checked = assertTenantPath(this.accountId, key);
    return this.#backend.upload(bucket, checked, localPath, contentType);
  }
}
