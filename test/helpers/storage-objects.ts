import { createHash, randomUUID } from 'node:crypto';
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * The object store behind the Storage stand-in: buckets and keys in memory, bytes in
 * files named by a hash of bucket and key. Keys are kept exactly as Storage keeps them
 * (`dir//x` and `dir/x` are two objects), and no key can reach a path outside `root`.
 */
export interface StoredObject {
  file: string;
  contentType: string;
  size: number;
}

/** The characters Supabase Storage accepts in a key (`isValidKey` of supabase/storage). */
export const STORAGE_KEY = /^[A-Za-z0-9_/!.*'() &$@=;:+,?-]+$/;

/** Storage's error, rendered by the stand-in as Storage renders it (see storage-server.ts). */
export class StorageHttpError extends Error {
  /** Storage's status (the body's `statusCode`). */
  readonly statusCode: number;
  readonly code: string;
  /** The older `error` field, where Storage sets one. */
  readonly legacy: string | undefined;
  /** Plain text with the real HTTP status, as the resumable (TUS) endpoint answers. */
  readonly plain: boolean;
  /** An HTTP status other than Storage's (a gateway in front of it). */
  readonly http: number | undefined;

  constructor(
    statusCode: number,
    code: string,
    message: string,
    legacy?: string,
    plain = false,
    http?: number,
  ) {
    super(message);
    this.statusCode = statusCode;
    this.code = code;
    this.legacy = legacy;
    this.plain = plain;
    this.http = http;
  }
}

export const storageErrors = {
  noSuchKey: () => new StorageHttpError(404, 'NoSuchKey', 'Object not found', 'not_found'),
  noSuchBucket: () =>
    new StorageHttpError(404, 'NoSuchBucket', 'Bucket not found', 'Bucket not found'),
  invalidKey: (key: string) => new StorageHttpError(400, 'InvalidKey', `Invalid key: ${key}`),
  keyExists: () =>
    new StorageHttpError(409, 'KeyAlreadyExists', 'The resource already exists', 'Duplicate'),
  tooLarge: () =>
    new StorageHttpError(
      413,
      'EntityTooLarge',
      'The object exceeded the maximum allowed size',
      'Payload too large',
    ),
  accessDenied: (message: string) =>
    new StorageHttpError(403, 'AccessDenied', message, 'Unauthorized'),
};

export class StandInObjects {
  readonly #root: string;
  readonly #buckets = new Map<string, { limit: number | undefined }>();
  readonly #objects = new Map<string, StoredObject>();

  constructor(root: string) {
    this.#root = root;
  }

  createBucket(name: string, limit: number | undefined): void {
    this.#buckets.set(name, { limit });
  }

  /** The bucket's size limit; throws NoSuchBucket. */
  bucket(name: string): { limit: number | undefined } {
    const found = this.#buckets.get(name);
    if (!found) throw storageErrors.noSuchBucket();
    return found;
  }

  get(bucket: string, key: string): StoredObject | undefined {
    return this.#objects.get(`${bucket}\u0000${key}`);
  }

  /** Forgets an object (its file goes with the stand-in's root); whether it was there. */
  remove(bucket: string, key: string): boolean {
    return this.#objects.delete(`${bucket}\u0000${key}`);
  }

  /** A fresh file to write an upload into before commit. */
  partialFile(): string {
    return join(this.#root, `partial-${randomUUID()}`);
  }

  /** Moves a fully written partial file into place as the object. */
  async commit(bucket: string, key: string, partial: string, contentType: string, size: number) {
    const name = createHash('sha256').update(`${bucket}\u0000${key}`).digest('hex');
    const file = join(this.#root, name);
    await rename(partial, file).catch(async (error: unknown) => {
      await rm(partial, { force: true });
      throw error;
    });
    this.#objects.set(`${bucket}\u0000${key}`, { file, contentType, size });
  }

  /** Names directly under `prefix` (objects and folders), as Storage's list answers. */
  list(bucket: string, prefix: string, limit: number): { name: string; id: string | null }[] {
    this.bucket(bucket);
    const start = prefix === '' ? '' : `${prefix.replace(/\/+$/, '')}/`;
    const names = new Map<string, string | null>();
    for (const id of this.#objects.keys()) {
      const [b, key] = id.split('\u0000') as [string, string];
      if (b !== bucket || !key.startsWith(start)) continue;
      const rest = key.slice(start.length);
      const slash = rest.indexOf('/');
      names.set(slash === -1 ? rest : rest.slice(0, slash), slash === -1 ? id : null);
    }
    return [...names]
      .sort(([a], [b]) => a.localeCompare(b))
      .slice(0, limit)
      .map(([name, id]) => ({ name, id }));
  }
}
