import pg from 'pg';

/**
 * The rows Supabase Storage keeps in its project's database, written by the Storage
 * stand-in as the real service writes them: `storage.buckets` and `storage.objects`, one
 * object row per stored key (bucket_id, name) with `metadata` as Storage fills it after an
 * upload (size, mimetype, contentLength, …). hd_record_artifact (00030) reads the size from
 * there, so tests exercise that check against the same shape of row. Only the columns
 * hd-runner and Storage's own uniqueness need; the real tables have more.
 */
export class StorageRows {
  readonly #pool: pg.Pool;
  readonly ready: Promise<void>;

  constructor(databaseUrl: string) {
    this.#pool = new pg.Pool({ connectionString: databaseUrl, max: 2 });
    this.ready = this.#createSchema();
  }

  async #createSchema() {
    const client = await this.#pool.connect();
    try {
      await client.query('begin');
      // One stand-in at a time creates it (several may share a test database).
      await client.query(`select pg_advisory_xact_lock(hashtext('hd-test storage schema'))`);
      await client.query(`
        create schema if not exists storage;
        create table if not exists storage.buckets (
          id text primary key, name text not null, public boolean default false,
          file_size_limit bigint, allowed_mime_types text[],
          created_at timestamptz default now(), updated_at timestamptz default now());
        create table if not exists storage.objects (
          id uuid primary key default gen_random_uuid(),
          bucket_id text references storage.buckets (id), name text, owner uuid,
          created_at timestamptz default now(), updated_at timestamptz default now(),
          last_accessed_at timestamptz default now(), metadata jsonb, version text);
        create unique index if not exists bucketid_objname on storage.objects (bucket_id, name);
        alter table storage.objects enable row level security;`);
      await client.query('commit');
    } catch (error) {
      await client.query('rollback');
      throw error;
    } finally {
      client.release();
    }
  }

  async bucket(name: string, fileSizeLimit: number | undefined) {
    await this.ready;
    await this.#pool.query(
      `insert into storage.buckets (id, name, file_size_limit) values ($1, $1, $2)
       on conflict (id) do update set file_size_limit = excluded.file_size_limit`,
      [name, fileSizeLimit ?? null],
    );
  }

  /** After an upload completed: the object's row, its metadata as Storage records it. */
  async put(bucket: string, key: string, size: number, contentType: string) {
    await this.ready;
    const metadata = {
      size,
      mimetype: contentType,
      contentLength: size,
      cacheControl: 'max-age=3600',
      lastModified: new Date().toISOString(),
      httpStatusCode: 200,
    };
    await this.#pool.query(
      `insert into storage.objects (bucket_id, name, metadata, version)
       values ($1, $2, $3, gen_random_uuid()::text)
       on conflict (bucket_id, name) do update
          set metadata = excluded.metadata, version = excluded.version, updated_at = now()`,
      [bucket, key, JSON.stringify(metadata)],
    );
  }

  async remove(bucket: string, keys: readonly string[]) {
    await this.ready;
    await this.#pool.query(`delete from storage.objects where bucket_id = $1 and name = any ($2)`, [
      bucket,
      keys,
    ]);
  }

  async close() {
    await this.ready.catch(() => undefined);
    await this.#pool.end();
  }
}
