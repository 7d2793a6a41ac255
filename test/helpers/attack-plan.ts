import type pg from 'pg';

// The scenario: tenant A's object and tenant B's, at the same key in their own folders.
export const BUCKET = 'hd_uploads_raw';
const OBJECT = 'docs/report.txt';
export const keyOf = (account: string) => `accounts/${account}/${OBJECT}`;
export const A_OBJECT = 'A: quarterly numbers';
export const B_OBJECT = 'B: own input';
// The functions migration 00010 grants to hd_runner (each takes a lease token), written out
// here on purpose: a function that reaches runners must be added to this list knowingly.
export const LEASE_FUNCTIONS = [
  'hd_adopt_lease',
  'hd_heartbeat',
  'hd_report_progress',
  'hd_complete_job',
  'hd_fail_job',
  'hd_release_job',
  'hd_upsert_assets',
  'hd_list_document_files',
  'hd_replace_document_chunks',
  'hd_count_chunks_to_interpret',
  'hd_list_chunks_to_interpret',
  'hd_upsert_interpretations',
  'hd_list_document_interpretations',
  'hd_write_document_graph',
  'hd_list_document_nodes',
  'hd_get_node_context',
  'hd_record_synthesis',
  'hd_begin_artifact',
  'hd_record_artifact',
];

/**
 * What the attack script (test/helpers/attack-script.ts) is told, on its command line, about
 * the victim tenant A: ids an attacker might learn or guess, never a credential. Its own job
 * id, lease token and credentials it finds where any runner does (argv, environment).
 */
export interface AttackPlan {
  victim: {
    account: string;
    /** A's job that another runner is working on now (its lease token unknown to B). */
    runningJobId: string;
    /** A's job that no runner has claimed yet. */
    queuedJobId: string;
    completedJobId: string;
    documentId: string;
    fileId: string;
    chunkId: string;
    interpretationId: string;
    nodeId: string;
    /** A's asset: its id and its key (source_type, source_ref). */
    assetId: string;
    assetSourceType: string;
    assetSourceRef: string;
    /** A's object: bucket and key. */
    bucket: string;
    key: string;
  };
  /** Every table of schema public whose name starts with hd_. */
  tables: string[];
  /** Every function of schema public whose name starts with hd_, with the arguments to pass. */
  functions: FunctionCall[];
  /** Functions that take a lease token (hd_runner may call them): each is tried twice. */
  leaseFunctions: string[];
}

export interface FunctionCall {
  name: string;
  /** A trigger function (PostgreSQL refuses to call it directly). */
  trigger: boolean;
  /** Arguments, by name, with their SQL type; the script passes values for required ones. */
  args: { name: string; type: string; required: boolean }[];
}

/** One line the script prints per attempt. */
export interface AttemptLine {
  attempt: string;
  ok: boolean;
  /** Why it was refused: the server's or the kernel's own message. */
  reason?: string;
  /** What a successful attempt got back (JSON, cut short). */
  result?: unknown;
}

/** The tables and functions of the contract, read from the database itself. */
export async function contractObjects(
  sql: pg.Pool,
): Promise<Pick<AttackPlan, 'tables' | 'functions'>> {
  const { rows: tables } = await sql.query<{ name: string }>(
    `select c.relname as name from pg_class c
      where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'f')
        and c.relname like 'hd\\_%' order by 1`,
  );
  const { rows: functions } = await sql.query<{
    name: string;
    trigger: boolean;
    names: string[] | null;
    types: string[];
    required: number;
  }>(
    `select p.proname as name, p.prorettype = 'trigger'::regtype as trigger,
            p.proargnames as names, p.pronargs - p.pronargdefaults as required,
            array(select format_type(t, null) from unnest(p.proargtypes) with ordinality x(t, o)
                   order by o) as types
       from pg_proc p
      where p.pronamespace = 'public'::regnamespace and p.proname like 'hd\\_%'
      order by 1`,
  );
  return {
    tables: tables.map((t) => t.name),
    functions: functions.map((f) => ({
      name: f.name,
      trigger: f.trigger,
      args: f.types.map((type, i) => ({
        name: f.names?.[i] ?? '',
        type,
        required: i < f.required,
      })),
    })),
  };
}
