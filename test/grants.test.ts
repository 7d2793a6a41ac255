import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import {
  CONTRACT_ROLES,
  parseMatrix,
  readGrantMatrix,
  readPolicies,
  type Matrix,
} from './helpers/grant-matrix.ts';

// The least-privilege contract (issue 11, migration 00010) as the database answers it:
// has_function_privilege / has_any_column_privilege read back for every object of schema
// public, compared exactly with the tables below. A grant added by mistake, a function
// created without hd__lock_down_functions(), or a policy turned `using (true)` is a diff.

// Every function in schema public. X: may EXECUTE, .: may not.
const FUNCTIONS = parseMatrix(`
  #                                  anon authenticated hd_runner hd_scheduler service_role
  has_role_on_account                 .    X             .         .            X
  # internal helpers: only the functions that use them (running as their owner) call them
  hd__apply_batch_deltas              .    .             .         .            .
  hd__artifact_target                 .    .             .         .            .
  hd__assert_batch                    .    .             .         .            .
  hd__assert_runner_job               .    .             .         .            .
  hd__batch_bucket                    .    .             .         .            .
  hd__check_document_chunks           .    .             .         .            .
  hd__chunk_sha256                    .    .             .         .            .
  hd__count_batch_jobs                .    .             .         .            .
  hd__cut_off_at                      .    .             .         .            .
  hd__delete_orphan_nodes             .    .             .         .            .
  hd__enqueue_batch_webhook           .    .             .         .            .
  hd__forget_deleted_graph_sources    .    .             .         .            .
  hd__forget_graph_evidence           .    .             .         .            .
  hd__job_event_data                  .    .             .         .            .
  hd__job_or_lease_ended              .    .             .         .            .
  hd__job_role_name                   .    .             .         .            .
  hd__lock                            .    .             .         .            .
  hd__lock_current_lease              .    .             .         .            .
  hd__lock_down_functions             .    .             .         .            .
  hd__lock_leased_job                 .    .             .         .            .
  hd__mark_batch_rows                 .    .             .         .            .
  hd__notify_jobs_queued              .    .             .         .            .
  hd__queued_groups                   .    .             .         .            .
  hd__reap_not_before                 .    .             .         .            .
  hd__refuse_distant_lease            .    .             .         .            .
  hd__release_llm_reservations        .    .             .         .            .
  hd__remember_ended_lease            .    .             .         .            .
  hd__retry_after_budget_reset        .    .             .         .            .
  hd__settle_failed_attempt           .    .             .         .            .
  hd__share_leased_job                .    .             .         .            .
  hd__webhook_payload                 .    .             .         .            .
  hd__take_claim_lock                 .    .             .         .            .
  hd__try_lock                        .    .             .         .            .
  hd__valid_progress_step             .    .             .         .            .
  # take a lease token: a runner's whole reach (hd_warm_up_session: calls the others with no
  # job, every call refused)
  hd_adopt_lease                      .    .             X         X            X
  hd_begin_artifact                   .    .             X         X            X
  hd_complete_job                     .    .             X         X            X
  hd_count_chunks_to_interpret        .    .             X         X            X
  hd_fail_job                         .    .             X         X            X
  hd_record_artifact                  .    .             X         X            X
  hd_get_node_context                 .    .             X         X            X
  hd_heartbeat                        .    .             X         X            X
  hd_list_chunks_to_interpret         .    .             X         X            X
  hd_list_document_files              .    .             X         X            X
  hd_list_document_interpretations    .    .             X         X            X
  hd_list_document_nodes              .    .             X         X            X
  hd_record_synthesis                 .    .             X         X            X
  hd_release_job                      .    .             X         X            X
  hd_replace_document_chunks          .    .             X         X            X
  hd_report_progress                  .    .             X         X            X
  hd_upsert_assets                    .    .             X         X            X
  hd_upsert_interpretations           .    .             X         X            X
  hd_warm_up_session                  .    .             X         X            X
  hd_write_document_graph             .    .             X         X            X
  # the scheduler's: claim, queue control, logs, batches, reports
  hd_add_webhook_endpoint             .    .             .         X            X
  hd_append_job_logs                  .    .             .         X            X
  hd_bind_warm_role                   .    .             .         X            X
  hd_cancel_batch                     .    .             .         X            X
  hd_cancel_job                       .    .             .         X            X
  hd_claim_jobs                       .    .             .         X            X
  hd_claim_leases                     .    .             .         X            X
  hd_claim_webhook_deliveries         .    .             .         X            X
  hd_complete_jobs                    .    .             .         X            X
  hd_create_job_role                  .    .             .         X            X
  hd_create_warm_role                 .    .             .         X            X
  hd_doctor_report                    .    .             .         X            X
  hd_drop_job_roles                   .    .             .         X            X
  hd_drop_warm_role                   .    .             .         X            X
  hd_drop_llm_credentials             .    .             .         X            X
  hd_enqueue_batch                    .    .             .         X            X
  hd_enqueue_job                      .    .             .         X            X
  hd_grant_artifact_upload            .    .             .         X            X
  hd_grant_llm_credential             .    .             .         X            X
  hd_llm_admit                        .    .             .         X            X
  hd_llm_credential                   .    .             .         X            X
  hd_llm_record                       .    .             .         X            X
  hd_queue_metrics                    .    .             .         X            X
  hd_reap_expired_leases              .    .             .         X            X
  hd_record_url_input                 .    .             .         X            X
  hd_record_webhook_attempt           .    .             .         X            X
  hd_replay_webhook                   .    .             .         X            X
  hd_requeue_batch                    .    .             .         X            X
  hd_requeue_job                      .    .             .         X            X
  hd_retry_delay                      .    .             .         X            X
  hd_set_account_limit                .    .             .         X            X
  hd_set_container_id                 .    .             .         X            X
  hd_set_job_type_limit               .    .             .         X            X
  hd_set_llm_budget                   .    .             .         X            X
  hd_take_unrecorded_uploads          .    .             .         X            X
  hd_webhook_signing_secret           .    .             .         X            X
`);

// Every table in schema public: s select, i insert, u update, d delete, t truncate
// (select/insert/update also on any single column); - none. Members read their account's
// rows through RLS; hd_runner reaches rows only through the functions above.
const TABLES = parseMatrix(`
  #                      anon authenticated hd_runner hd_scheduler service_role
  accounts_memberships    -    -             -         -            -
  hd_account_limits       -    s             -         -            siudt
  hd_artifacts            -    s             -         -            siudt
  hd_asset_chunks         -    s             -         -            siudt
  hd_assets               -    s             -         -            siudt
  hd_batches              -    s             -         s            siudt
  hd_document_files       -    s             -         -            siudt
  hd_dynamics             -    s             -         -            siudt
  hd_ingestion_jobs       -    s             -         s            siudt
  hd_interpretations      -    s             -         -            siudt
  hd_job_logs             -    s             -         s            siudt
  hd_job_type_limits      -    -             -         -            siudt
  hd_kg_edges             -    s             -         -            siudt
  hd_kg_nodes             -    s             -         -            siudt
  hd_llm_budgets          -    s             -         -            siudt
  hd_llm_usage            -    s             -         -            siudt
  hd_schema_migrations    -    -             -         -            -
  hd_syntheses            -    s             -         -            siudt
  hd_webhook_endpoints    -    s             -         s            siudt
  hd_webhook_outbox       -    s             -         s            siudt
`);

// Schemas: U usage, C create. Extensions (pgcrypto) are nobody's to call directly.
const SCHEMAS = parseMatrix(`
  #             anon authenticated hd_runner hd_scheduler service_role
  auth           U    U             -         -            U
  extensions     -    -             -         -            -
  public         U    U             U         U            U
`);

// The tables members read through RLS: their account's rows only, nothing else.
const MEMBER_READ_TABLES = [
  'hd_account_limits',
  'hd_artifacts',
  'hd_asset_chunks',
  'hd_assets',
  'hd_batches',
  'hd_document_files',
  'hd_dynamics',
  'hd_ingestion_jobs',
  'hd_interpretations',
  'hd_job_logs',
  'hd_kg_edges',
  'hd_kg_nodes',
  'hd_llm_budgets',
  'hd_llm_usage',
  'hd_syntheses',
  'hd_webhook_endpoints',
  'hd_webhook_outbox',
];
const POLICIES = MEMBER_READ_TABLES.map(
  (table) =>
    `${table} | hd_members_read | PERMISSIVE | SELECT | {authenticated} | has_role_on_account(account_id) | (no check)`,
);

function diff(kind: string, expected: Matrix, actual: Matrix): string[] {
  const names = [...new Set([...Object.keys(expected), ...Object.keys(actual)])].sort();
  return names
    .filter((name) => expected[name] !== actual[name])
    .map(
      (name) =>
        `${kind} ${name}: expected ${expected[name] ?? '(absent)'}, got ${actual[name] ?? '(absent)'}`,
    );
}

async function readSchemaMatrix(sql: pg.Pool | pg.ClientBase): Promise<Matrix> {
  const { rows } = await sql.query<{ name: string; cells: string[] }>(
    `select n.nspname as name,
            array(select case when has_schema_privilege(r, n.oid, 'usage') then 'U' else '' end
                      || case when has_schema_privilege(r, n.oid, 'create') then 'C' else '' end
                    from unnest($1::text[]) with ordinality as x(r, o) order by o) as cells
       from pg_namespace n
      where n.nspname in ('public', 'auth', 'extensions')`,
    [CONTRACT_ROLES],
  );
  return Object.fromEntries(rows.map((r) => [r.name, r.cells.map((c) => c || '-').join(' ')]));
}

/**
 * Everything in which the database differs from the contract, one readable line each;
 * empty when it holds. Works on any database, so the tests below can show it catches
 * planted mistakes.
 */
async function contractViolations(sql: pg.Pool | pg.ClientBase): Promise<string[]> {
  const { functions, tables } = await readGrantMatrix(sql);
  const { policies, tablesWithoutRls } = await readPolicies(sql);
  const found = [
    ...diff('function', FUNCTIONS, functions),
    ...diff('table', TABLES, tables),
    ...diff('schema', SCHEMAS, await readSchemaMatrix(sql)),
    ...tablesWithoutRls.map((table) => `table ${table}: row level security is off`),
  ];
  const missing = POLICIES.filter((p) => !policies.includes(p));
  const extra = policies.filter((p) => !POLICIES.includes(p));
  found.push(...missing.map((p) => `policy missing: ${p}`));
  found.push(...extra.map((p) => `policy not in the contract: ${p}`));

  // Functions anyone may call run as their owner: no caller's search_path may redirect
  // them (other settings, e.g. the claim's plan_cache_mode, may sit beside it), and
  // internal helpers (hd__*) are never called by a role directly.
  const { rows: definers } = await sql.query<{ name: string; problem: string }>(
    `select p.proname as name,
            concat_ws(', ', case when not p.prosecdef then 'not security definer' end,
                      case when not coalesce('search_path=""' = any (p.proconfig), false) then
                        'config ' || coalesce(array_to_string(p.proconfig, ' '), '(none)') end) as problem
       from pg_proc p
      where p.pronamespace = 'public'::regnamespace and p.proname like 'hd\\_%'
        and p.proname not like 'hd\\_\\_%'
        and (not p.prosecdef or not coalesce('search_path=""' = any (p.proconfig), false))
      order by 1`,
  );
  found.push(...definers.map((d) => `function ${d.name}: ${d.problem}`));

  const { rows: extensionFunctions } = await sql.query<{ line: string }>(
    `select e.extname || ' puts ' || p.proname || ' in public' as line
       from pg_depend d join pg_extension e on e.oid = d.refobjid
       join pg_proc p on p.oid = d.objid
      where d.classid = 'pg_proc'::regclass and d.refclassid = 'pg_extension'::regclass
        and d.deptype = 'e' and p.pronamespace = 'public'::regnamespace
      order by 1`,
  );
  found.push(...extensionFunctions.map((r) => r.line));

  // hd_runner and hd_scheduler hold no role's rights: a membership would let them
  // SET ROLE to it, which has_function_privilege (noinherit) would not show.
  const { rows: roles } = await sql.query<{ line: string }>(
    `select r.rolname || ': ' || concat_ws(', ',
              case when r.rolsuper then 'superuser' end,
              case when r.rolbypassrls then 'bypasses RLS' end,
              case when r.rolcreaterole then 'creates roles' end,
              case when r.rolcreatedb then 'creates databases' end,
              case when r.rolinherit then 'inherits' end,
              (select 'member of ' || string_agg(g.rolname, ' ' order by g.rolname)
                 from pg_auth_members m join pg_roles g on g.oid = m.roleid
                where m.member = r.oid)) as line
       from pg_roles r
      where r.rolname in ('hd_runner', 'hd_scheduler')
        and (r.rolsuper or r.rolbypassrls or r.rolcreaterole or r.rolcreatedb or r.rolinherit
             or exists (select 1 from pg_auth_members m where m.member = r.oid))
      order by 1`,
  );
  found.push(...roles.map((r) => r.line));
  return found;
}

describe('the grant matrix of the migrated database', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await createTestDatabase();
  });
  afterAll(() => t.drop());

  it('is exactly the contract: functions, tables, schemas, policies, definers, roles', async () => {
    expect(await contractViolations(t.sql)).toEqual([]);
  });

  it('lets anon execute no public function and authenticated only has_role_on_account', async () => {
    const { functions } = await readGrantMatrix(t.sql);
    const callers = (role: number) =>
      Object.keys(functions).filter((name) => functions[name]!.split(' ')[role] === 'X');
    expect(callers(CONTRACT_ROLES.indexOf('anon'))).toEqual([]);
    expect(callers(CONTRACT_ROLES.indexOf('authenticated'))).toEqual(['has_role_on_account']);
    // hd_runner: exactly the functions that take a lease token, all of them, but the
    // scheduler's own (logs, container id, making the job's login role and gateway credential,
    // a URL input's record, the upload grant's check); and a warm runner's warm-up, which
    // calls some of them with no job.
    const { rows } = await t.sql.query<{ name: string }>(
      `select p.proname as name from pg_proc p
        where p.pronamespace = 'public'::regnamespace and p.proname like 'hd\\_%'
          and p.proname not like 'hd\\_\\_%'
          and (p.proargnames[2] = 'p_lease_token' or p.proname = 'hd_warm_up_session')
          and p.proname not in ('hd_append_job_logs', 'hd_set_container_id', 'hd_create_job_role',
                                'hd_grant_llm_credential', 'hd_record_url_input',
                                'hd_grant_artifact_upload')
        order by 1`,
    );
    expect(callers(CONTRACT_ROLES.indexOf('hd_runner'))).toEqual(rows.map((r) => r.name));
  });

  it('keeps pgcrypto in schema extensions, not public', async () => {
    const { rows } = await t.sql.query(
      `select extnamespace::regnamespace::text as schema from pg_extension where extname = 'pgcrypto'`,
    );
    expect(rows).toEqual([{ schema: 'extensions' }]);
    const { rows: inPublic } = await t.sql.query(
      `select proname from pg_proc where pronamespace = 'public'::regnamespace
          and proname in ('gen_salt', 'crypt', 'armor', 'dearmor', 'digest', 'gen_random_bytes')`,
    );
    expect(inPublic).toEqual([]);
  });
});

// The power of the check above: each mistake of the kind issue 11 guards against is
// planted in a scratch database (in a transaction, rolled back) and must show up, as
// exactly the lines it adds to what the scratch database reports unplanted.
describe('contractViolations catches a planted mistake', () => {
  let scratch: TestDatabase;
  let client: pg.PoolClient;
  let baseline: string[];
  beforeAll(async () => {
    scratch = await createTestDatabase();
    client = await scratch.sql.connect();
    baseline = await contractViolations(client);
  });
  afterAll(async () => {
    client.release();
    await scratch.drop();
  });

  async function violationsWith(plant: string): Promise<string[]> {
    await client.query('begin');
    try {
      await client.query(plant);
      return (await contractViolations(client)).filter((line) => !baseline.includes(line));
    } finally {
      await client.query('rollback');
    }
  }

  it('a claim granted to hd_runner', async () => {
    expect(
      await violationsWith(`grant execute on function public.hd_claim_jobs to hd_runner`),
    ).toEqual(['function hd_claim_jobs: expected . . . X X, got . . X X X']);
  });

  it('a new function left with PostgreSQL default grants (EXECUTE to PUBLIC)', async () => {
    expect(
      await violationsWith(
        `create function public.hd_peek_assets() returns bigint language sql
           as $$ select count(*) from public.hd_assets $$`,
      ),
    ).toEqual([
      'function hd_peek_assets: expected (absent), got X X X X X',
      'function hd_peek_assets: not security definer, config (none)',
    ]);
  });

  it('one column of a tenant table readable by hd_runner', async () => {
    expect(await violationsWith(`grant select (title) on public.hd_assets to hd_runner`)).toEqual([
      'table hd_assets: expected - s - - siudt, got - s s - siudt',
    ]);
  });

  it('a members policy turned into using (true)', async () => {
    expect(
      await violationsWith(`alter policy hd_members_read on public.hd_kg_edges using (true)`),
    ).toEqual([
      'policy missing: hd_kg_edges | hd_members_read | PERMISSIVE | SELECT | {authenticated} | has_role_on_account(account_id) | (no check)',
      'policy not in the contract: hd_kg_edges | hd_members_read | PERMISSIVE | SELECT | {authenticated} | true | (no check)',
    ]);
  });

  it('a second, permissive policy that opens a table', async () => {
    const found = await violationsWith(
      `create policy hd_all on public.hd_job_logs for select to authenticated using (true)`,
    );
    expect(found).toEqual([
      'policy not in the contract: hd_job_logs | hd_all | PERMISSIVE | SELECT | {authenticated} | true | (no check)',
    ]);
  });

  it('row level security switched off on a tenant table', async () => {
    expect(
      await violationsWith(`alter table public.hd_syntheses disable row level security`),
    ).toEqual(['table hd_syntheses: row level security is off']);
  });

  it('pgcrypto back in public', async () => {
    const found = await violationsWith(`alter extension pgcrypto set schema public`);
    expect(found).toContain('pgcrypto puts gen_salt in public');
    expect(found).toContain('function gen_salt(text): expected (absent), got X X X X X');
  });

  it('a worker function running as its caller, or with a search_path', async () => {
    expect(
      await violationsWith(
        `alter function public.hd_upsert_assets security invoker;
         alter function public.hd_heartbeat set search_path = public`,
      ),
    ).toEqual([
      'function hd_heartbeat: config search_path=public',
      'function hd_upsert_assets: not security definer',
    ]);
  });

  it('hd_runner made a member of service_role', async () => {
    expect(await violationsWith(`grant service_role to hd_runner`)).toEqual([
      'hd_runner: member of service_role',
    ]);
  });

  it('CREATE on public for hd_runner', async () => {
    expect(await violationsWith(`grant create on schema public to hd_runner`)).toEqual([
      'schema public: expected U U U U U, got U U UC U U',
    ]);
  });
});
