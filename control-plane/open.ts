import { ConfigError, requireSetting, type Config } from './config.ts';
import { PostgresDb } from './db/postgres.ts';
import { SupabaseDb } from './db/supabase.ts';
import type { ControlPlaneDb } from './db/transport.ts';
import { FsStorage } from './storage/fs.ts';
import { SignedUrlStorage, signedUrlMapSchema } from './storage/signed-urls.ts';
import type { StorageBackend } from './storage/storage.ts';
import { SupabaseStorage } from './storage/supabase.ts';
import { projectMismatch } from './supabase-target.ts';

/**
 * The configured queue/output transport. Refuses to start when HD_EXPECTED_PROJECT_REF
 * names another project than the one configured (`doctor` reports it instead).
 */
export function openDb(
  config: Config,
  options: {
    checkProject?: boolean;
    /** A runner's: idle connections kept for the job's life (its heartbeats come seconds apart). */
    runner?: boolean;
  } = {},
): ControlPlaneDb & { close(): Promise<void> } {
  const mismatch = options.checkProject === false ? undefined : projectMismatch(config);
  if (mismatch) throw new ConfigError(`invalid configuration: ${mismatch}`);
  if (config.HD_TRANSPORT === 'supabase') {
    if (config.HD_JOB_TOKEN)
      return new SupabaseDb({
        url: requireSetting(config, 'SUPABASE_URL', 'for the supabase transport'),
        // The gateway wants an API key; the anon key is public. PostgREST reads the token.
        serviceRoleKey: config.SUPABASE_ANON_KEY ?? config.HD_JOB_TOKEN,
        accessToken: config.HD_JOB_TOKEN,
        timeoutMs: config.HD_SUPABASE_TIMEOUT_MS,
      });
    return new SupabaseDb({
      url: requireSetting(config, 'SUPABASE_URL', 'for the supabase transport'),
      serviceRoleKey: requireSetting(
        config,
        'SUPABASE_SERVICE_ROLE_KEY',
        'for the supabase transport',
      ),
      realtime: config.HD_REALTIME,
      timeoutMs: config.HD_SUPABASE_TIMEOUT_MS,
    });
  }
  const connectionString = requireSetting(config, 'HD_DATABASE_URL', 'for the postgres transport');
  return new PostgresDb({
    connectionString,
    poolSize: config.HD_DATABASE_POOL_SIZE,
    listenConnectionString:
      config.HD_LISTEN_DATABASE_URL === 'off' ? null : config.HD_LISTEN_DATABASE_URL,
    ...(options.runner && { idleTimeoutMs: 0 }),
  });
}

/** The configured storage backend. */
export function openStorage(config: Config): StorageBackend {
  if (config.HD_STORAGE === 'supabase') {
    if (config.HD_JOB_STORAGE_URLS)
      return new SignedUrlStorage(jobStorageUrls(config), config.HD_UPLOAD_GRANT_URL);
    return new SupabaseStorage({
      url: requireSetting(config, 'SUPABASE_URL', 'for the supabase storage'),
      serviceRoleKey: requireSetting(
        config,
        'SUPABASE_SERVICE_ROLE_KEY',
        'for the supabase storage',
      ),
    });
  }
  return new FsStorage(config.HD_STORAGE_ROOT);
}

function jobStorageUrls(config: Config): Record<string, string> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(config.HD_JOB_STORAGE_URLS ?? '');
  } catch {
    parsed = undefined;
  }
  const urls = signedUrlMapSchema.safeParse(parsed);
  if (!urls.success)
    throw new ConfigError(
      'invalid configuration: HD_JOB_STORAGE_URLS: must be a JSON object of bucket/key to signed URL (set by the scheduler)',
    );
  return urls.data;
}
