import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate, readMigrations } from '../control-plane/db/migrate.ts';
import { createEmptyDatabase, createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, ACCOUNT_B } from './helpers/runtime.ts';

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client(url);
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

describe('migrations', () => {
  it('apply to an empty database, again without changes, and again by force', async () => {
    const empty = await createEmptyDatabase();
    try {
      await withClient(empty.url, async (c) => {
        const first = await migrate(c);
        const files = (await readMigrations()).map((m) => m.name);
        expect(first.applied).toEqual(files);
        expect((await migrate(c)).applied).toEqual([]);
        expect((await migrate(c, { force: true })).applied).toEqual(files);
        // Every file on its own is re-runnable too (as `supabase db push` may replay it).
        for (const m of await readMigrations()) await c.query(m.sql);
        const { rows } = await c.query(
          `select count(*)::int as n from pg_proc where proname = 'hd_claim_jobs'`,
        );
        expect(rows[0].n).toBe(1);
      });
    } finally {
      await empty.drop();
    }
  });

  it('extend a pre-existing hd_ingestion_jobs created by the web app, keeping its rows', async () => {
    const empty = await createEmptyDatabase();
    try {
      await withClient(empty.url, async (c) => {
        await c.query(`create table public.hd_ingestion_jobs (
          id uuid primary key default gen_random_uuid(),
          account_id uuid not null,
          document_id uuid,
          job_type text not null,
          status text not null default 'queued',
          attempts integer not null default 0,
          error text,
          debug jsonb)`);
        await c.query(
          `insert into public.hd_ingestion_jobs (account_id, job_type, status, attempts, debug)
           values ($1, 'import_assets_jsonl', 'queued', 0, '{"path":"p"}'),
                  ($1, 'import_assets_jsonl', 'completed', 1, null)`,
          [ACCOUNT_A],
        );
        await migrate(c);
        const { rows: claimed } = await c.query(`select * from hd_claim_jobs('w', null, 5, 60)`);
        expect(claimed).toHaveLength(1);
        expect(claimed[0]).toMatchObject({ status: 'running', attempts: 1, debug: { path: 'p' } });
        const { rows: all } = await c.query(`select status from hd_ingestion_jobs order by status`);
        expect(all.map((r) => r.status)).toEqual(['completed', 'running']);
        await expect(c.query(`update hd_ingestion_jobs set status = 'done'`)).rejects.toThrow(
          /status_check/,
        );
      });
    } finally {
      await empty.drop();
    }
  });
});

describe('row level security', () => {
  let t: TestDatabase;
  const USER_A = 'c0000000-0000-4000-8000-00000000000a';
  beforeAll(async () => {
    t = await createTestDatabase();
    await t.sql.query(`insert into accounts_memberships (user_id, account_id) values ($1, $2)`, [
      USER_A,
      ACCOUNT_A,
    ]);
    for (const account of [ACCOUNT_A, ACCOUNT_B]) {
      const job = await t.db.enqueueJob({
        accountId: account,
        jobType: 'import_assets_jsonl',
        debug: { path: 'x' },
      });
      await t.sql.query(
        `insert into hd_assets (account_id, source_type, source_ref, title) values ($1, 'upload', $2, 'asset')`,
        [account, `ref-${account}`],
      );
      await t.sql.query(
        `insert into hd_job_logs (account_id, job_id, attempt, seq, level, message) values ($1, $2, 1, 1, 'info', 'x')`,
        [account, job.id],
      );
      await t.sql.query(SEED_OUTPUTS, [account, job.id]);
      await t.sql.query('select public.hd_set_account_limit($1, null, 2)', [account]);
      await t.sql.query('select public.hd_set_llm_budget($1, 1000)', [account]);
      await t.sql.query(
        `insert into hd_llm_usage (account_id, day, job_id, model, prompt_tokens) values ($1, current_date, $2, 'm', 1)`,
        [account, job.id],
      );
      await t.sql.query(`insert into hd_batches (account_id, name) values ($1, 'rls')`, [account]);
      await t.sql.query(
        `with w as (insert into hd_webhook_endpoints (account_id, url) values ($1, 'https://example.com/h') returning id)
       insert into hd_webhook_outbox (account_id, endpoint_id, event_type, payload)
       select $1, id, 'job.completed', '{}' from w`,
        [account],
      );
    }
  });

  // One row of every output table for an account, as the pipeline stages would leave them.
  const SEED_OUTPUTS = `
    with f as (insert into hd_document_files (account_id, document_id, storage_path)
                 values ($1::uuid, gen_random_uuid(), 'accounts/' || $1::uuid || '/doc.pdf') returning *),
         c as (insert into hd_asset_chunks (account_id, document_id, file_id, chunk_index, content)
                 select account_id, document_id, id, 0, 'text' from f returning *),
         i as (insert into hd_interpretations (account_id, document_id, chunk_id, prompt_version)
                 select account_id, document_id, id, 'v1' from c returning id),
         n as (insert into hd_kg_nodes (account_id, node_type, label, normalized_label)
                 values ($1::uuid, 'entity', 'A', 'a'), ($1::uuid, 'entity', 'B', 'b') returning id, label),
         e as (insert into hd_kg_edges (account_id, source_node_id, relation, target_node_id)
                 select $1::uuid, (select id from n where label = 'A'), 'knows',
                        (select id from n where label = 'B') returning id),
         s as (insert into hd_syntheses (account_id, node_id, version, content)
                 select $1::uuid, id, 1, 'about A' from n where label = 'A' returning *),
         d as (insert into hd_dynamics (account_id, node_id, synthesis_id, change_kind)
                 select account_id, node_id, id, 'created' from s returning id)
    insert into hd_artifacts (account_id, job_id, kind, name, bucket, storage_path, content_type, size_bytes, sha256, attempt)
      values ($1::uuid, $2::uuid, 'probe', 'a', 'hd_outputs', 'accounts/' || $1::uuid || '/artifact',
              'text/plain', 1, repeat('0', 64), 1)`;
  afterAll(() => t.drop());

  /** Runs `sql` as a PostgREST request would: a role, and the JWT claims in a setting. */
  async function as(role: 'anon' | 'authenticated', sub: string | null, sql: string) {
    const client = await t.sql.connect();
    try {
      await client.query('begin');
      await client.query(`select set_config('request.jwt.claims', $1, true)`, [
        JSON.stringify({ sub, role }),
      ]);
      await client.query(`set local role ${role}`);
      return (await client.query(sql)).rows;
    } finally {
      await client.query('rollback');
      client.release();
    }
  }

  it("lets a member read only their account's rows in every hd_ table", async () => {
    const { rows: tables } = await t.sql.query(
      `select tablename from pg_tables where schemaname = 'public' and tablename like 'hd\\_%'
          and tablename not in ('hd_schema_migrations', 'hd_job_type_limits')`,
    );
    expect(tables.length).toBeGreaterThanOrEqual(11);
    for (const { tablename } of tables) {
      const query = `select distinct account_id from public.${tablename} order by 1`;
      // Both accounts have rows here (a new table must be seeded above), and the member
      // sees exactly their own: an empty answer would prove nothing.
      const all = await t.sql.query(query);
      expect(
        all.rows.map((r) => r.account_id),
        `${tablename} seeded`,
      ).toEqual([ACCOUNT_A, ACCOUNT_B]);
      const seen = await as('authenticated', USER_A, query);
      expect(
        seen.map((r) => r.account_id),
        tablename,
      ).toEqual([ACCOUNT_A]);
    }
    const jobs = await as('authenticated', USER_A, `select account_id from hd_ingestion_jobs`);
    expect(jobs.map((r) => r.account_id)).toEqual([ACCOUNT_A]);
    const assets = await as('authenticated', USER_A, `select account_id from hd_assets`);
    expect(assets.map((r) => r.account_id)).toEqual([ACCOUNT_A]);
  });

  it('shows a non-member nothing and anon no table at all', async () => {
    const stranger = 'c0000000-0000-4000-8000-00000000000f';
    expect(await as('authenticated', stranger, `select * from hd_assets`)).toEqual([]);
    await expect(as('anon', null, `select * from hd_assets`)).rejects.toThrow(/permission denied/);
    await expect(as('anon', null, `select * from hd_ingestion_jobs`)).rejects.toThrow(
      /permission denied/,
    );
  });

  it('lets only the service role write or run queue functions', async () => {
    await expect(
      as(
        'authenticated',
        USER_A,
        `insert into hd_assets (account_id, source_type, source_ref, title) values ('${ACCOUNT_A}', 's', 'r', 't')`,
      ),
    ).rejects.toThrow(/permission denied/);
    await expect(
      as('authenticated', USER_A, `select * from hd_claim_jobs('x', null, 1, 60)`),
    ).rejects.toThrow(/permission denied/);
    await expect(as('anon', null, `select * from hd_cancel_job('${ACCOUNT_A}')`)).rejects.toThrow(
      /permission denied/,
    );
  });
});
