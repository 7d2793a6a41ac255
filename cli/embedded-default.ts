import { join, resolve } from 'node:path';
import type { Env } from './command-spec.ts';

/**
 * Runs an operator command (jobs, enqueue, doctor, migrate) against the demo's embedded
 * PostgreSQL when no database is configured and `hd-runner demo` left one in HD_DEMO_DIR
 * (default .hd-data): the server is started for the command, as the demo starts it, and
 * stopped after. A configured database (HD_DATABASE_URL, or the supabase transport)
 * always wins.
 */
export async function withEmbeddedDefault(
  env: Env,
  run: (env: Env) => Promise<number>,
): Promise<number> {
  const dir = resolve(env.HD_DEMO_DIR || '.hd-data');
  if (env.HD_DATABASE_URL || env.HD_TRANSPORT === 'supabase') return run(env);
  const { hasEmbeddedData, startEmbeddedPostgres } =
    await import('../control-plane/embedded-postgres.ts');
  if (!hasEmbeddedData(join(dir, 'postgres'))) return run(env);
  console.error(
    `hd-runner: no HD_DATABASE_URL; using the demo's embedded PostgreSQL in ${join(dir, 'postgres')}`,
  );
  const database = await startEmbeddedPostgres({ dir: join(dir, 'postgres') });
  try {
    return await run({
      ...env,
      HD_DATABASE_URL: database.connectionString(),
      HD_STORAGE_ROOT: env.HD_STORAGE_ROOT || join(dir, 'storage'),
    });
  } finally {
    await database.stop();
  }
}
