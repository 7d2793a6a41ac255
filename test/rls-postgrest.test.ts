import { createClient, type SupabaseClient } from '@supabase/supabase-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, ACCOUNT_B } from './helpers/runtime.ts';
import { startLocalSupabase, type LocalSupabase } from './helpers/supabase-proxy.ts';

// Tenant isolation as the web app's users meet it: supabase-js → a real PostgREST with
// real JWTs (signed with the project's secret) → the RLS policies of the migrations.
let t: TestDatabase;
let supabase: LocalSupabase;
const USER_A = 'c0000000-0000-4000-8000-00000000000a'; // member of ACCOUNT_A via accounts_memberships
const STRANGER = 'c0000000-0000-4000-8000-00000000000f';
/** Rows seeded per account and table: what a member must see, and only that. */
const seeded = new Map<string, Map<string, number>>();
const jobOf: Record<string, string> = {};

const client = (key: string): SupabaseClient =>
  createClient(supabase.url, key, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  });

async function seed(account: string) {
  const one = async (sql: string, params: unknown[]) =>
    (await t.sql.query<{ id: string }>(sql, params)).rows[0]!.id;
  const job = (
    await t.db.enqueueJob({ accountId: account, jobType: 'rls_probe', debug: { path: 'x' } })
  ).id;
  jobOf[account] = job;
  await t.sql.query('select public.hd_set_account_limit($1, null, 2)', [account]);
  await t.sql.query('select public.hd_set_llm_budget($1, 1000)', [account]);
  await t.sql.query(
    `insert into hd_llm_usage (account_id, day, job_id, model, prompt_tokens) values ($1, current_date, $2, 'm', 1)`,
    [account, job],
  );
  await one(
    `select id from hd_enqueue_batch($1, 'rls', '[{"job_type": "rls_batch_probe", "debug": {"path": "x"}}]')`,
    [account],
  );
  await t.sql.query(
    `with w as (insert into hd_webhook_endpoints (account_id, url) values ($1, 'https://example.com/h') returning id)
       insert into hd_webhook_outbox (account_id, endpoint_id, event_type, payload)
       select $1, id, 'job.completed', '{}' from w`,
    [account],
  );
  const doc = crypto.randomUUID();
  const file = await one(
    `insert into hd_document_files (account_id, document_id, storage_path) values ($1, $2, $3) returning id`,
    [account, doc, `accounts/${account}/doc.pdf`],
  );
  await one(
    `insert into hd_assets (account_id, source_type, source_ref, title) values ($1, 'upload', 'r', 't') returning id`,
    [account],
  );
  const chunk = await one(
    `insert into hd_asset_chunks (account_id, document_id, file_id, chunk_index, content) values ($1, $2, $3, 0, 'text') returning id`,
    [account, doc, file],
  );
  await one(
    `insert into hd_interpretations (account_id, document_id, chunk_id, prompt_version) values ($1, $2, $3, 'v1') returning id`,
    [account, doc, chunk],
  );
  const node = await one(
    `insert into hd_kg_nodes (account_id, node_type, label, normalized_label) values ($1, 'person', 'Ada', 'ada') returning id`,
    [account],
  );
  const other = await one(
    `insert into hd_kg_nodes (account_id, node_type, label, normalized_label) values ($1, 'person', 'Bob', 'bob') returning id`,
    [account],
  );
  await one(
    `insert into hd_kg_edges (account_id, source_node_id, relation, target_node_id) values ($1, $2, 'knows', $3) returning id`,
    [account, node, other],
  );
  const synthesis = await one(
    `insert into hd_syntheses (account_id, node_id, version, content) values ($1, $2, 1, 's') returning id`,
    [account, node],
  );
  await one(
    `insert into hd_dynamics (account_id, node_id, synthesis_id, change_kind) values ($1, $2, $3, 'created') returning id`,
    [account, node, synthesis],
  );
  await one(
    `insert into hd_job_logs (account_id, job_id, attempt, seq, level, message) values ($1, $2, 1, 1, 'info', 'x') returning id`,
    [account, job],
  );
  await one(
    `insert into hd_artifacts (account_id, job_id, kind, name, bucket, storage_path, content_type, size_bytes, sha256, attempt)
     values ($1, $2, 'log', 'p', 'b', 'p', 'text/plain', 1, repeat('0', 64), 1) returning id`,
    [account, job],
  );
}

async function hdTables(): Promise<string[]> {
  const { rows } = await t.sql.query<{ tablename: string }>(
    `select tablename from pg_tables where schemaname = 'public' and tablename like 'hd\\_%'
        and tablename <> 'hd_schema_migrations' and tablename <> 'hd_job_type_limits' order by 1`,
  );
  return rows.map((r) => r.tablename);
}

beforeAll(async () => {
  t = await createTestDatabase();
  supabase = await startLocalSupabase(t.url);
  await t.sql.query(`insert into accounts_memberships (user_id, account_id) values ($1, $2)`, [
    USER_A,
    ACCOUNT_A,
  ]);
  await seed(ACCOUNT_A);
  await seed(ACCOUNT_B);
  for (const table of await hdTables()) {
    const { rows } = await t.sql.query<{ account_id: string; n: number }>(
      `select account_id, count(*)::int as n from public.${table} group by account_id`,
    );
    seeded.set(table, new Map(rows.map((r) => [r.account_id, r.n])));
  }
});
afterAll(async () => {
  await supabase.stop();
  await t.drop();
});

describe('row level security through PostgREST', () => {
  it('seeds rows of both accounts in every hd_ table (so no check below is vacuous)', async () => {
    for (const table of await hdTables()) {
      expect(seeded.get(table)?.get(ACCOUNT_A), `${table}: add seed rows for it`).toBeGreaterThan(
        0,
      );
      expect(seeded.get(table)?.get(ACCOUNT_B), table).toBeGreaterThan(0);
    }
  });

  it("shows a member all of their account's rows in every hd_ table and none of another's", async () => {
    const member = client(supabase.userKey(USER_A));
    // A personal account: its owner's user id is the account id (has_role_on_account).
    const owner = client(supabase.userKey(ACCOUNT_B));
    for (const table of await hdTables()) {
      for (const [who, account] of [
        [member, ACCOUNT_A],
        [owner, ACCOUNT_B],
      ] as const) {
        const { data, error } = await who.from(table).select('account_id');
        expect(error, table).toBeNull();
        expect(new Set(data!.map((r) => r.account_id)), table).toEqual(new Set([account]));
        expect(data, table).toHaveLength(seeded.get(table)!.get(account)!);
      }
    }
  });

  it("shows a member their webhook endpoints but not the endpoints' signing secrets", async () => {
    const member = client(supabase.userKey(USER_A));
    const urls = await member.from('hd_webhook_endpoints').select('account_id, url');
    expect(urls).toMatchObject({ error: null, data: [{ account_id: ACCOUNT_A }] });
    const secret = await member.from('hd_webhook_endpoints').select('secret');
    expect(secret.error?.code).toBe('42501');
  });

  it("hides B's job rows from A even when A asks for them by id", async () => {
    const member = client(supabase.userKey(USER_A));
    const job = await member.from('hd_ingestion_jobs').select('*').eq('id', jobOf[ACCOUNT_B]!);
    expect(job).toMatchObject({ error: null, data: [] });
    const logs = await member.from('hd_job_logs').select('*').eq('job_id', jobOf[ACCOUNT_B]!);
    expect(logs).toMatchObject({ error: null, data: [] });
    const stranger = client(supabase.userKey(STRANGER));
    expect((await stranger.from('hd_assets').select('*')).data).toEqual([]);
  });

  it('gives anon nothing: no table, no function', async () => {
    const anon = client(supabase.anonKey);
    for (const table of [...(await hdTables()), 'hd_schema_migrations']) {
      const { data, error } = await anon.from(table).select('*');
      expect(data, table).toBeNull();
      expect(error?.code, table).toBe('42501');
    }
    const rpc = await anon.rpc('hd_cancel_job', { p_job_id: jobOf[ACCOUNT_A] });
    expect(rpc.error?.code).toBe('42501');
  });

  it('lets only the service role write or call queue functions', async () => {
    const member = client(supabase.userKey(USER_A));
    const row = { account_id: ACCOUNT_A, source_type: 's', source_ref: 'member-write', title: 't' };
    expect((await member.from('hd_assets').insert(row)).error?.code).toBe('42501');
    expect(
      (
        await member
          .from('hd_ingestion_jobs')
          .update({ status: 'queued' })
          .eq('account_id', ACCOUNT_A)
      ).error?.code,
    ).toBe('42501');
    expect((await member.from('hd_assets').delete().eq('account_id', ACCOUNT_A)).error?.code).toBe(
      '42501',
    );
    for (const fn of ['hd_claim_jobs', 'hd_enqueue_job', 'hd_doctor_report']) {
      const args =
        fn === 'hd_claim_jobs'
          ? { p_worker_id: 'member' }
          : fn === 'hd_enqueue_job'
            ? { p_account_id: ACCOUNT_A, p_job_type: 'x' }
            : {};
      expect((await member.rpc(fn, args)).error?.code, fn).toBe('42501');
    }

    const service = client(supabase.serviceRoleKey);
    expect((await service.from('hd_assets').insert(row)).error).toBeNull();
    const all = await service.from('hd_ingestion_jobs').select('account_id');
    expect(new Set(all.data!.map((r) => r.account_id))).toEqual(new Set([ACCOUNT_A, ACCOUNT_B]));
    const claimed = await service.rpc('hd_claim_jobs', {
      p_worker_id: 'service',
      p_job_types: ['rls_probe'],
      p_limit: 5,
    });
    expect(claimed.error).toBeNull();
    expect(claimed.data).toHaveLength(2);
  });
});
