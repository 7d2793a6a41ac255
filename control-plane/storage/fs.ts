import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, realpath, rename, rm, stat } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { dirname, join, resolve } from 'node:path';
import { HdError } from '../../contract/errors.ts';
import { assertBucketName, assertStorageKey } from '../../contract/storage-paths.ts';
import { hashingStream } from './hash.ts';
import type { LocalFile, StorageBackend, UploadCheck } from './storage.ts';

/**
 * Storage backend `fs`: `{root}/{bucket}/{key}`. Downloads hand out the stored file
 * itself (no copy): callers only read it. Keys and bucket names are checked here too
 * (the canonical form), and the real path is checked so a symlink cannot lead outside
 * the key's place.
 */
export class FsStorage implements StorageBackend {
  readonly root: string;

  constructor(root: string) {
    this.root = resolve(root);
  }

  #bucketDir(bucket: string): string {
    return join(this.root, assertBucketName(bucket));
  }

  async download(bucket: string, key: string): Promise<LocalFile> {
    const bucketDir = this.#bucketDir(bucket);
    assertStorageKey(key);
    const file = join(bucketDir, key);
    // At once, not one after the other: each is a round trip to libuv's threads (0.3-1 ms
    // apiece on a busy host, issue 13). stat follows links, so it describes `real` once
    // that is found to be the key's own place.
    const [realFile, realBucket, stats] = await Promise.allSettled([
      realpath(file),
      realpath(bucketDir),
      stat(file),
    ]);
    if (realFile.status === 'rejected') {
      const error: unknown = realFile.reason;
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new HdError('FILE_NOT_FOUND', `storage object ${bucket}/${key} does not exist`, {
          cause: error,
        });
      }
      throw new HdError(
        'DOWNLOAD_FAILED',
        `cannot read ${bucket}/${key}: ${(error as Error).message}`,
        {
          cause: error,
        },
      );
    }
    const real = realFile.value;
    if (realBucket.status === 'rejected') throw realBucket.reason;
    // The object must be exactly at its key: a symlink anywhere below the bucket could
    // lead outside it, or into another account's prefix inside it.
    if (real !== join(realBucket.value, key)) {
      throw new HdError(
        'PATH_OUTSIDE_TENANT',
        `storage object ${bucket}/${key} is, or lies under, a symbolic link (not followed)`,
      );
    }
    if (stats.status === 'rejected') throw stats.reason;
    if (!stats.value.isFile()) {
      throw new HdError('FILE_NOT_FOUND', `storage object ${bucket}/${key} is not a file`);
    }
    return { path: real, size: stats.value.size };
  }

  async upload(
    bucket: string,
    key: string,
    localPath: string,
    _contentType?: string,
    check: UploadCheck = {},
  ): Promise<void> {
    const bucketDir = this.#bucketDir(bucket);
    assertStorageKey(key);
    const target = join(bucketDir, key);
    await mkdir(dirname(target), { recursive: true });
    // As for downloads: a symlinked folder must not carry the write away from its key.
    if ((await realpath(dirname(target))) !== join(await realpath(bucketDir), dirname(key))) {
      throw new HdError(
        'PATH_OUTSIDE_TENANT',
        `storage object ${bucket}/${key} lies under a symbolic link (not followed)`,
      );
    }
    // Copy then rename: readers never see a half-written or mismatching object.
    const partial = `${target}.partial-${process.pid}`;
    try {
      const hash = hashingStream();
      await pipeline(createReadStream(localPath), hash, createWriteStream(partial));
      if (check.sha256 && hash.sha256() !== check.sha256)
        throw new Error(`the bytes stored hash to ${hash.sha256()}, not ${check.sha256}`);
      await rename(partial, target);
    } catch (error) {
      await rm(partial, { force: true });
      throw new HdError(
        'UPLOAD_FAILED',
        `cannot store ${bucket}/${key}: ${(error as Error).message}`,
        {
          cause: error,
        },
      );
    }
  }
}
