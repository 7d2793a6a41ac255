import { requireSetting, type Config } from './config.ts';
import { PostgresDb } from './db/postgres.ts';
import type { ControlPlaneDb } from './db/transport.ts';
import { FsStorage } from './storage/fs.ts';
import type { StorageBackend } from './storage/storage.ts';

/** The configured queue/output transport. */
export function openDb(config: Config): ControlPlaneDb & { close(): Promise<void> } {
  const connectionString = requireSetting(config, 'HD_DATABASE_URL', 'for the postgres transport');
  return new PostgresDb({ connectionString, poolSize: config.HD_DATABASE_POOL_SIZE });
}

/** The configured storage backend. */
export function openStorage(config: Config): StorageBackend {
  return new FsStorage(config.HD_STORAGE_ROOT);
}
