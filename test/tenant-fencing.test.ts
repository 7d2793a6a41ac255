import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { leaseCalls, refusal } from './helpers/lease-calls.ts';
import { ACCOUNT_A, ACCOUNT_B } from './helpers/runtime.ts';
import {
  seedTenant,
  snapshotAccount,
  TENANT_TABLES,
  type SeededTenant,
} from './helpers/tenant-rows.ts';

// The SQL tenant and lease checks called directly, connected as role hd_runner (what a
// runner container of tenant B holds): every attempt on tenant A is refused with a
// reason, and A's rows, read back as the superuser, are exactly as they were.

let t: TestDatabase;
let runner: pg.Pool;
let a: SeededTenant;
let b: SeededTenant;
/** A's job, running: attempt 3, after two leases that ended. */
const jobA = { id: '', token: '', firstToken: '', lastEndedToken: '' };
/** B's job, running, held by the runner under attack. */
const jobB = { id: '', token: '' };

async function enqueue(accountId: string, documentId: string | null, jobType = 'fencing_probe') {
  return (await t.db.enqueueJob({ accountId, jobType, documentId, debug: {} })).id;
}
async function claim(jobId: string): Promise<string> {
  const [job] = await t.db.claimJobs({ workerId: 'w', leaseSeconds: 600, jobId });
  if (!job?.lease_token) throw new Error(`could not claim ${jobId}`);
  return job.lease_token;
}

beforeAll(async () => {
  t = await createTestDatabase();
  runner = new pg.Pool({ connectionString: t.runnerUrl, max: 2 });
  runner.on('error', () => {});
  a = await seedTenant(t, ACCOUNT_A);
  b = await seedTenant(t, ACCOUNT_B);
  // A file of A's that carries B's document id: B's job must never see it.
  await t.sql.query(
    `insert into hd_document_files (account_id, document_id, storage_path)
     values ($1, $2, 'accounts/a/same-document-id.pdf')`,
    [ACCOUNT_A, b.documentId],
  );
  jobA.id = await enqueue(ACCOUNT_A, a.documentId);
  jobA.firstToken = await claim(jobA.id);
  await t.db.releaseJob(jobA.id, jobA.firstToken);
  jobA.lastEndedToken = await claim(jobA.id);
  await t.db.releaseJob(jobA.id, jobA.lastEndedToken);
  jobA.token = await claim(jobA.id);
  jobB.id = await enqueue(ACCOUNT_B, b.documentId);
  jobB.token = await claim(jobB.id);
});
afterAll(async () => {
  await runner?.end();
  await t?.drop();
});

describe("(a) A's job id with a token that is not its lease", () => {
  const notHeld = () => `HDL01 lease lost: job ${jobA.id} is not held by this lease`;
  const cases = {
    "B's own live token": () => jobB.token,
    'a random token': () => randomUUID(),
    "a stale token of A's job (not its last lease)": () => jobA.firstToken,
  };
  for (const [name, token] of Object.entries(cases)) {
    it(`refuses every lease function with ${name}, telling nothing, changing nothing`, async () => {
      const before = await snapshotAccount(t, ACCOUNT_A);
      const calls = leaseCalls(jobA.id, token(), a);
      const answers: Record<string, string> = {};
      for (const [fn, sql, params] of calls) answers[fn] = await refusal(runner, sql, params);
      expect(answers).toEqual(Object.fromEntries(calls.map(([fn]) => [fn, notHeld()])));
      expect(await snapshotAccount(t, ACCOUNT_A)).toEqual(before);
    });
  }

  it("tells the job's state only to the holder of its last lease", async () => {
    // The positive control of the tests above: the same call, by the runner whose lease
    // ended last, does learn why (it needs that to stop or to log its last lines).
    expect(
      await refusal(runner, 'select public.hd_heartbeat($1, $2, 600)', [
        jobA.id,
        jobA.lastEndedToken,
      ]),
    ).toBe(`HDL01 lease lost: job ${jobA.id} is running (no error), lease held by another attempt`);
  });

  it("tells a stranger nothing about a finished job's status or error code", async () => {
    const done = await enqueue(ACCOUNT_A, a.documentId);
    await claim(done);
    await t.sql.query(`select public.hd_cancel_job($1, 'tenant A cancelled this')`, [done]);
    const answer = await runner
      .query(`select * from public.hd_fail_job($1, $2, 'CRASHED', 'x', true)`, [done, jobB.token])
      .catch((e: pg.DatabaseError) => e);
    expect(answer).toMatchObject({
      code: 'HDL01',
      message: `lease lost: job ${done} is not held by this lease`,
    });
    expect(JSON.stringify(answer)).not.toMatch(/failed|CANCELLED|cancelled|running|queued/);
  });

  // A NULL token once slipped past the first check (`x is distinct from null` is false
  // where x is null) and was told the job's status.
  it('tells a caller with a NULL token nothing either', async () => {
    const queued = await enqueue(ACCOUNT_A, a.documentId);
    const firstAttempt = await enqueue(ACCOUNT_A, a.documentId);
    await claim(firstAttempt);
    const cancelled = await enqueue(ACCOUNT_A, a.documentId);
    await claim(cancelled);
    await t.sql.query(`select public.hd_cancel_job($1)`, [cancelled]);
    const answers: Record<string, string> = {};
    for (const job of [queued, firstAttempt, cancelled]) {
      answers[job] = await refusal(runner, 'select public.hd_heartbeat($1, $2, 600)', [job, null]);
    }
    expect(answers).toEqual({
      [queued]: `HDL01 lease lost: job ${queued} is not held by this lease`,
      [firstAttempt]: `HDL01 lease lost: job ${firstAttempt} is not held by this lease`,
      [cancelled]: `HDL01 lease lost: job ${cancelled} is not held by this lease`,
    });
  });
});

describe("(b) B's valid lease with A's rows and ids", () => {
  const asB = (sql: string, ...params: unknown[]) =>
    refusal(runner, sql, [jobB.id, jobB.token, ...params]);
  let before: Awaited<ReturnType<typeof snapshotAccount>>;
  beforeAll(async () => {
    before = await snapshotAccount(t, ACCOUNT_A);
  });

  it("refuses a chunk that points at A's file", async () => {
    const chunks = [{ chunk_index: 0, file_id: a.fileId, content: 'stolen' }];
    expect(
      await asB(
        'select * from public.hd_replace_document_chunks($1, $2, $3)',
        JSON.stringify(chunks),
      ),
    ).toBe(`22023 a chunk refers to a file that is not part of document ${b.documentId}`);
  });

  it("refuses an interpretation of A's chunk", async () => {
    const rows = [{ chunk_id: a.chunkId, prompt_version: 'v1', payload: { stolen: true } }];
    expect(
      await asB('select * from public.hd_upsert_interpretations($1, $2, $3)', JSON.stringify(rows)),
    ).toBe(`HDT01 1 interpretation(s) name a chunk outside the document of job ${jobB.id}`);
  });

  it("refuses a synthesis of A's node and shows B no context of it", async () => {
    const synthesis = { content: 'stolen', sources: [], input_sha256: 'x', summary: 's' };
    expect(
      await asB(
        'select * from public.hd_record_synthesis($1, $2, $3, $4)',
        a.nodeId,
        JSON.stringify(synthesis),
      ),
    ).toBe(`HDT01 node ${a.nodeId} is not a node of the account of job ${jobB.id}`);
    const { rows } = await runner.query(
      'select public.hd_get_node_context($1, $2, $3) as context',
      [jobB.id, jobB.token, a.nodeId],
    );
    expect(rows).toEqual([{ context: null }]);
  });

  it("drops graph evidence citing A's interpretation and writes nothing under A", async () => {
    const nodes = [
      { node_type: 'person', label: 'Ada', normalized_label: 'ada' },
      { node_type: 'person', label: 'Bob', normalized_label: 'bob' },
    ];
    const edges = [
      {
        source_type: 'person',
        source_key: 'ada',
        relation: 'stole_from',
        target_type: 'person',
        target_key: 'bob',
        evidence: [{ interpretation_id: a.interpretationId, quote: 'stolen' }],
      },
    ];
    const { rows } = await runner.query(
      'select * from public.hd_write_document_graph($1, $2, $3, $4)',
      [jobB.id, jobB.token, JSON.stringify(nodes), JSON.stringify(edges)],
    );
    // B's own Ada and Bob exist already; the edge has no evidence of B's, so none is made,
    // and B's seeded edge loses this document's evidence (the graph is replaced): removed,
    // and B's Ada and Bob with it, left without an edge (00016).
    expect(rows).toEqual([
      {
        nodes_inserted: 0,
        nodes_existing: 2,
        edges_inserted: 0,
        edges_updated: 0,
        edges_unchanged: 0,
        edges_removed: 1,
        nodes_removed: 2,
        evidence_dropped: 0,
      },
    ]);
    const { rows: cited } = await t.sql.query(
      `select account_id from hd_kg_edges where relation = 'stole_from' or evidence::text like $1`,
      [`%${a.interpretationId}%`],
    );
    expect(cited).toEqual([{ account_id: ACCOUNT_A }]); // A's own edge, untouched
  });

  it("writes assets that name A's account and key under B only", async () => {
    const rows = [
      {
        title: 'overwritten?',
        source_type: 'upload',
        source_ref: 'ref-1',
        metadata: {},
        account_id: ACCOUNT_A,
      },
    ];
    expect(
      await asB('select * from public.hd_upsert_assets($1, $2, $3)', JSON.stringify(rows)),
    ).toBe('resolved');
    const { rows: titles } = await t.sql.query(
      `select account_id, title from hd_assets where source_ref = 'ref-1' order by account_id`,
    );
    expect(titles).toEqual([
      { account_id: ACCOUNT_A, title: 'confidential title' },
      { account_id: ACCOUNT_B, title: 'overwritten?' },
    ]);
  });

  it("lists only B's files, chunks and interpretations, even where A shares the document id", async () => {
    const files = await runner.query('select id from public.hd_list_document_files($1, $2)', [
      jobB.id,
      jobB.token,
    ]);
    expect(files.rows).toEqual([{ id: b.fileId }]);
    const chunks = await runner.query(
      `select chunk_id from public.hd_list_chunks_to_interpret($1, $2, 'v2')`,
      [jobB.id, jobB.token],
    );
    expect(chunks.rows).toEqual([{ chunk_id: b.chunkId }]);
    const interpretations = await runner.query(
      'select interpretation_id from public.hd_list_document_interpretations($1, $2)',
      [jobB.id, jobB.token],
    );
    expect(interpretations.rows).toEqual([{ interpretation_id: b.interpretationId }]);
  });

  it('left every row of A as it was', async () => {
    expect(await snapshotAccount(t, ACCOUNT_A)).toEqual(before);
  });
});

describe('what hd_runner may not do at all', () => {
  it('reads and writes no table directly', async () => {
    const answers: Record<string, string> = {};
    for (const table of TENANT_TABLES) {
      answers[table] = await refusal(runner, `select * from public.${table} limit 1`, []);
    }
    expect(answers).toEqual(
      Object.fromEntries(TENANT_TABLES.map((x) => [x, `42501 permission denied for table ${x}`])),
    );
    expect(await refusal(runner, `update public.hd_assets set title = 'x'`, [])).toBe(
      '42501 permission denied for table hd_assets',
    );
    expect(await refusal(runner, 'delete from public.hd_asset_chunks', [])).toBe(
      '42501 permission denied for table hd_asset_chunks',
    );
  });

  it('calls no scheduler or internal function, and no extension', async () => {
    const queued = await enqueue(ACCOUNT_A, null);
    const before = await snapshotAccount(t, ACCOUNT_A);
    const calls: [string, string, unknown[]][] = [
      ['hd_claim_jobs', `select * from public.hd_claim_jobs('evil', null, 10, 600)`, []],
      ['hd_enqueue_job', `select * from public.hd_enqueue_job($1, 'fencing_probe')`, [ACCOUNT_A]],
      ['hd_cancel_job', 'select * from public.hd_cancel_job($1)', [jobA.id]],
      ['hd_requeue_job', 'select * from public.hd_requeue_job($1)', [queued]],
      ['hd_doctor_report', 'select public.hd_doctor_report()', []],
      ['hd_reap_expired_leases', 'select * from public.hd_reap_expired_leases()', []],
      [
        'hd_complete_jobs',
        'select * from public.hd_complete_jobs($1, $2)',
        [[jobA.id], [jobB.token]],
      ],
      [
        'hd_append_job_logs',
        `select public.hd_append_job_logs($1, $2, '[]')`,
        [jobB.id, jobB.token],
      ],
      [
        'hd_set_container_id',
        `select public.hd_set_container_id($1, $2, 'x')`,
        [jobB.id, jobB.token],
      ],
      [
        'hd__lock_leased_job',
        'select public.hd__lock_leased_job($1, $2, now())',
        [jobA.id, jobB.token],
      ],
      ['hd__lock_down_functions', 'select public.hd__lock_down_functions()', []],
      ['has_role_on_account', 'select public.has_role_on_account($1)', [ACCOUNT_A]],
    ];
    const answers: Record<string, string> = {};
    for (const [fn, sql, params] of calls) answers[fn] = await refusal(runner, sql, params);
    expect(answers).toEqual(
      Object.fromEntries(calls.map(([fn]) => [fn, `42501 permission denied for function ${fn}`])),
    );
    expect(await refusal(runner, `select extensions.gen_salt('bf')`, [])).toBe(
      '42501 permission denied for schema extensions',
    );
    expect(await snapshotAccount(t, ACCOUNT_A)).toEqual(before);
  });
});

describe("B's own lease and a clock of its choosing (every lease function takes p_now)", () => {
  it('cannot stretch its lease past an hour from now, whatever p_now it passes', async () => {
    const lease = async () =>
      (
        await t.sql.query<{ until: Date }>(
          'select lease_expires_at as until from hd_ingestion_jobs where id = $1',
          [jobB.id],
        )
      ).rows[0]!.until;
    const before = await lease();
    expect(
      await refusal(runner, `select hd_heartbeat($1, $2, 3600, '2100-01-01'::timestamptz)`, [
        jobB.id,
        jobB.token,
      ]),
    ).toMatch(/^22023 a lease cannot end more than an hour from now/);
    expect(await lease()).toEqual(before);
    // Its own clock, within the hour, is still its business (the tests move clocks this way).
    await runner.query(`select hd_heartbeat($1, $2, 60, now() + interval '1 minute')`, [
      jobB.id,
      jobB.token,
    ]);
  });
});

describe('hd_complete_jobs (the scheduler’s batch) with a token of another job', () => {
  it("completes the job whose token matches and leaves A's job running", async () => {
    const batchB = await enqueue(ACCOUNT_B, null);
    const batchToken = await claim(batchB);
    const before = await snapshotAccount(t, ACCOUNT_A);
    const client = await t.sql.connect();
    try {
      await client.query('begin');
      await client.query('set local role hd_scheduler');
      const { rows } = await client.query(
        'select * from public.hd_complete_jobs($1::uuid[], $2::uuid[])',
        [
          [jobA.id, batchB],
          [batchToken, batchToken],
        ],
      );
      await client.query('commit');
      expect(rows).toEqual([
        { job_id: jobA.id, completed: false },
        { job_id: batchB, completed: true },
      ]);
    } finally {
      client.release();
    }
    expect(await snapshotAccount(t, ACCOUNT_A)).toEqual(before);
  });
});

describe("a runner's JWT claims (as PostgREST sets them) name its one job", () => {
  async function withClaims(claims: Record<string, unknown>, sql: string, params: unknown[]) {
    const client = await runner.connect();
    try {
      await client.query('begin');
      await client.query(`select set_config('request.jwt.claims', $1, true)`, [
        JSON.stringify(claims),
      ]);
      return await refusal(client, sql, params);
    } finally {
      await client.query('rollback');
      client.release();
    }
  }

  it("refuses job C with C's own valid token under B's claim, and allows it under C's", async () => {
    const jobC = await enqueue(ACCOUNT_B, null);
    const tokenC = await claim(jobC);
    const heartbeatC = ['select public.hd_heartbeat($1, $2, 600)', [jobC, tokenC]] as const;
    expect(
      await withClaims({ role: 'hd_runner', job_id: jobB.id }, heartbeatC[0], [...heartbeatC[1]]),
    ).toBe(
      `42501 permission denied: this runner credential is for job ${jobB.id}, not job ${jobC}`,
    );
    expect(
      await withClaims({ role: 'hd_runner' }, 'select * from public.hd_complete_job($1, $2)', [
        jobC,
        tokenC,
      ]),
    ).toBe(`42501 permission denied: this runner credential is for job (none), not job ${jobC}`);
    // The positive control: the claim that names C lets C's token through.
    expect(
      await withClaims({ role: 'hd_runner', job_id: jobC }, heartbeatC[0], [...heartbeatC[1]]),
    ).toBe('resolved');
  });

  it('checks the claim before the token: every lease function refuses', async () => {
    const claims = { role: 'hd_runner', job_id: jobB.id };
    const calls = leaseCalls(jobA.id, jobA.token, a);
    const answers: Record<string, string> = {};
    for (const [fn, sql, params] of calls) answers[fn] = await withClaims(claims, sql, params);
    const denied = `42501 permission denied: this runner credential is for job ${jobB.id}, not job ${jobA.id}`;
    expect(answers).toEqual(Object.fromEntries(calls.map(([fn]) => [fn, denied])));
  });
});
