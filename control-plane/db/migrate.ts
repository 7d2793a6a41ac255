import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type pg from 'pg';
import { MIGRATIONS_DIR } from '../package-root.ts';

export interface Migration {
  version: string;
  name: string;
  sql: string;
  checksum: string;
}

export interface MigrationResult {
  applied: string[];
  current: string[];
}

// Any constant works; it only has to be the same for every hd-runner process.
const MIGRATION_LOCK_KEY = 4_824_171;

export async function readMigrations(dir = MIGRATIONS_DIR): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => /^\d+_.+\.sql$/.test(f)).sort();
  return Promise.all(
    files.map(async (file) => {
      const sql = await readFile(join(dir, file), 'utf8');
      return {
        version: file.split('_')[0]!,
        name: file,
        sql,
        checksum: createHash('sha256').update(sql).digest('hex'),
      };
    }),
  );
}

/**
 * Applies the numbered SQL files of supabase/migrations in order, each in its own
 * transaction, under an advisory lock so concurrent workers do not race. Files are
 * written to be re-runnable, so a file whose content changed since it was applied is
 * applied again, and so is every file after it; `force` re-applies every file.
 */
export async function migrate(
  client: pg.ClientBase,
  options: { force?: boolean; dir?: string } = {},
): Promise<MigrationResult> {
  const migrations = await readMigrations(options.dir);
  const result: MigrationResult = { applied: [], current: [] };
  await client.query('select pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
  try {
    await client.query(`create table if not exists public.hd_schema_migrations (
      version text primary key,
      name text not null,
      checksum text not null,
      applied_at timestamptz not null default now())`);
    await client.query('alter table public.hd_schema_migrations enable row level security');
    const { rows } = await client.query<{ version: string; checksum: string }>(
      'select version, checksum from public.hd_schema_migrations',
    );
    const applied = new Map(rows.map((r) => [r.version, r.checksum]));
    // Once one file is (re)applied, every later one is applied again too: a later file
    // may redefine what an earlier one creates (e.g. hd_complete_job in 00007).
    let reapplyRest = options.force === true;
    for (const m of migrations) {
      if (!reapplyRest && applied.get(m.version) === m.checksum) {
        result.current.push(m.name);
        continue;
      }
      await client.query('begin');
      try {
        await client.query(m.sql);
        await client.query(
          `insert into public.hd_schema_migrations (version, name, checksum) values ($1, $2, $3)
           on conflict (version) do update set name = $2, checksum = $3, applied_at = now()`,
          [m.version, m.name, m.checksum],
        );
        await client.query('commit');
      } catch (error) {
        await client.query('rollback');
        throw new Error(`migration ${m.name} failed: ${(error as Error).message}`, {
          cause: error,
        });
      }
      result.applied.push(m.name);
      reapplyRest = true;
    }
    // PostgREST (the supabase transport) caches the schema: tell it functions changed.
    if (result.applied.length > 0) await client.query(`notify pgrst, 'reload schema'`);
  } finally {
    await client.query('select pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]);
  }
  return result;
}

/** Versions whose file is missing from the database or differs from what was applied. */
export async function pendingMigrations(client: pg.ClientBase): Promise<string[]> {
  const migrations = await readMigrations();
  const exists = await client.query(`select to_regclass('public.hd_schema_migrations') as t`);
  if (!exists.rows[0]?.t) return migrations.map((m) => m.name);
  const { rows } = await client.query<{ version: string; checksum: string }>(
    'select version, checksum from public.hd_schema_migrations',
  );
  const applied = new Map(rows.map((r) => [r.version, r.checksum]));
  return migrations.filter((m) => applied.get(m.version) !== m.checksum).map((m) => m.name);
}
