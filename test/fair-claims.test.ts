import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';

// Migration 00012 on real PostgreSQL: which account a claim serves, the limits held by
// concurrent claimers on separate connections, and what a claim costs next to a backlog.

let t: TestDatabase;
beforeAll(async () => {
  t = await createTestDatabase();
});
afterAll(() => t.drop());
beforeEach(async () => {
  await t.sql.query(
    'truncate public.hd_ingestion_jobs, public.hd_account_limits, public.hd_job_type_limits cascade',
  );
});

const A = randomUUID();
const B = randomUUID();
const C = randomUUID();

/** `count` queued jobs for one account, enqueued `secondsAgo` (older first in claim order). */
async function enqueue(
  account: string,
  count: number,
  o: { jobType?: string; priority?: number; secondsAgo?: number } = {},
) {
  await t.sql.query(
    `insert into public.hd_ingestion_jobs (account_id, job_type, priority, run_after, debug)
     select $1, $2, $3, now() - make_interval(secs => $4 + i * 0.001), jsonb_build_object('n', i)
       from generate_series(1, $5) i`,
    [account, o.jobType ?? 'extract_text', o.priority ?? 0, o.secondsAgo ?? 60, count],
  );
}

type Claimed = { id: string; account_id: string; job_type: string; priority: number };

async function claim(
  limit: number,
  o: { accountMax?: number; jobTypes?: string[]; via?: pg.ClientBase | pg.Pool } = {},
): Promise<Claimed[]> {
  const { rows } = await (o.via ?? t.sql).query<Claimed>(
    `select id, account_id, job_type, priority
       from public.hd_claim_jobs('w', $1, $2, 60, null, now(), $3)`,
    [o.jobTypes ?? null, limit, o.accountMax ?? null],
  );
  return rows;
}

async function runningBy(column: 'account_id' | 'job_type'): Promise<Record<string, number>> {
  const { rows } = await t.sql.query<{ key: string; n: number }>(
    `select ${column}::text as key, count(*)::int as n from public.hd_ingestion_jobs
      where status = 'running' group by 1`,
  );
  return Object.fromEntries(rows.map((r) => [r.key, r.n]));
}

const tally = (jobs: Claimed[]) =>
  jobs.reduce<Record<string, number>>((acc, j) => {
    acc[j.account_id] = (acc[j.account_id] ?? 0) + 1;
    return acc;
  }, {});

it('serves a small account next to a big backlog: slots alternate, the backlog waits', async () => {
  await enqueue(A, 2000, { secondsAgo: 600 }); // A's backlog is older than everything of B
  await enqueue(B, 3, { secondsAgo: 1 });
  const first = await claim(1);
  expect(first.map((j) => j.account_id)).toEqual([A]); // the oldest job when nobody runs
  const second = await claim(1);
  expect(second.map((j) => j.account_id)).toEqual([B]); // B runs fewer than A
  const batch = await claim(6);
  expect(tally(batch)).toEqual({ [A]: 4, [B]: 2 }); // B's other two, A fills the rest
  expect(await runningBy('account_id')).toEqual({ [A]: 5, [B]: 3 });
});

it('gives slots in proportion to weight, and an idle account goes first', async () => {
  await enqueue(A, 50);
  await enqueue(B, 50);
  await t.sql.query('select public.hd_set_account_limit($1, null, 3)', [A]);
  expect(tally(await claim(8))).toEqual({ [A]: 6, [B]: 2 });
  await enqueue(C, 5, { secondsAgo: 1 }); // the newest jobs, but C runs nothing
  expect(tally(await claim(1))).toEqual({ [C]: 1 });
});

it('keeps priority and run_after within an account, and never claims a future job', async () => {
  await enqueue(A, 5, { secondsAgo: 100 });
  await enqueue(A, 1, { secondsAgo: 1, priority: 5 });
  await t.sql.query(
    `insert into public.hd_ingestion_jobs (account_id, job_type, priority, run_after)
     values ($1, 'extract_text', 100, now() + interval '1 hour')`,
    [A],
  );
  const [first, ...rest] = await claim(10);
  expect(first?.priority).toBe(5);
  expect(rest.map((j) => j.priority)).toEqual([0, 0, 0, 0, 0]);
});

it('holds max_running per account: the table, else the default the claimer passes', async () => {
  await enqueue(A, 20);
  await enqueue(B, 20);
  await t.sql.query('select public.hd_set_account_limit($1, 2)', [A]);
  expect(tally(await claim(10))).toEqual({ [A]: 2, [B]: 8 });
  await t.sql.query('truncate public.hd_ingestion_jobs cascade');
  await enqueue(A, 20);
  await enqueue(B, 20);
  expect(tally(await claim(10, { accountMax: 3 }))).toEqual({ [A]: 2, [B]: 3 });
});

it('takes the default limit from the claimer (HD_ACCOUNT_MAX_RUNNING through the transport)', async () => {
  await enqueue(A, 5);
  const jobs = await t.db.claimLeases({
    workerId: 'w',
    limit: 5,
    leaseSeconds: 60,
    accountMaxRunning: 2,
  });
  expect(jobs.map((j) => j.account_id)).toEqual([A, A]);
});

it("hands the scheduler only the claim's columns, and holds every limit when one account alone waits", async () => {
  await enqueue(A, 10);
  const claimLeases = (o: { limit: number; accountMaxRunning?: number }) =>
    t.db.claimLeases({ workerId: 'w', leaseSeconds: 60, ...o });
  const [job, ...none] = await claimLeases({ limit: 1 });
  expect(none).toEqual([]);
  expect(Object.keys(job!).sort()).toEqual(
    [
      'id',
      'account_id',
      'document_id',
      'job_type',
      'attempts',
      'max_attempts',
      'priority',
      'debug',
      'run_after',
      'started_at',
      'lease_token',
      'lease_expires_at',
    ].sort(),
  );
  expect(await t.db.getJob(job!.id)).toMatchObject({
    status: 'running',
    attempts: 1,
    locked_by: 'w',
    lease_token: job!.lease_token,
    debug: job!.debug,
  });
  // One queued group skips the fair pick, never a limit: 1 running, then up to 3, 4, 6.
  await t.sql.query('select public.hd_set_account_limit($1, 3)', [A]);
  expect(await claimLeases({ limit: 10 })).toHaveLength(2);
  await t.sql.query('select public.hd_set_account_limit($1, null)', [A]);
  await t.sql.query(`select public.hd_set_job_type_limit('extract_text', 4)`);
  expect(await claimLeases({ limit: 10 })).toHaveLength(1);
  await t.sql.query(`select public.hd_set_job_type_limit('extract_text', null)`);
  expect(await claimLeases({ limit: 10, accountMaxRunning: 6 })).toHaveLength(2);
  expect(await claimLeases({ limit: 10 })).toHaveLength(4); // the rest: no limit left
});

it('holds a job type limit over all accounts, and claims other types past it', async () => {
  await enqueue(A, 10, { jobType: 'extract_interpretations' });
  await enqueue(B, 10, { jobType: 'extract_interpretations' });
  await enqueue(B, 10, { jobType: 'extract_text' });
  await t.sql.query(`select public.hd_set_job_type_limit('extract_interpretations', 3)`);
  await claim(12);
  expect(await runningBy('job_type')).toEqual({ extract_interpretations: 3, extract_text: 9 });
});

it('holds every limit under concurrent claimers on separate connections', async () => {
  await enqueue(A, 300);
  await enqueue(B, 300);
  await enqueue(C, 300, { jobType: 'extract_interpretations' });
  await t.sql.query('select public.hd_set_account_limit($1, 7)', [A]);
  await t.sql.query(`select public.hd_set_job_type_limit('extract_interpretations', 5)`);
  const clients = await Promise.all(
    Array.from({ length: 8 }, async () => {
      const c = new pg.Client(t.url);
      await c.connect();
      return c;
    }),
  );
  try {
    const claimed: Claimed[] = [];
    // Each round every connection claims at once; B (default 4) fills up in round one.
    for (let round = 0; round < 6; round++) {
      const batches = await Promise.all(clients.map((c) => claim(2, { via: c, accountMax: 4 })));
      claimed.push(...batches.flat());
    }
    expect(new Set(claimed.map((j) => j.id)).size).toBe(claimed.length); // no double claim
    expect(await runningBy('account_id')).toEqual({ [A]: 7, [B]: 4, [C]: 4 });
    expect((await runningBy('job_type')).extract_interpretations).toBe(4);
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
});

it('makes a second claimer under a limit wait for the first, then count its claims', async () => {
  await enqueue(A, 10);
  await t.sql.query('select public.hd_set_account_limit($1, 2)', [A]);
  const first = new pg.Client(t.url);
  const second = new pg.Client({ connectionString: t.url, application_name: 'second-claimer' });
  await Promise.all([first.connect(), second.connect()]);
  try {
    await first.query('begin');
    expect(await claim(2, { via: first })).toHaveLength(2); // not committed yet
    const secondClaim = claim(2, { via: second });
    // The second claimer reaches the account's lock and waits there (or, without the
    // lock, has already claimed past the limit and returned).
    let settled = false;
    void secondClaim.finally(() => (settled = true));
    for (;;) {
      const { rows } = await t.sql.query(
        `select 1 from pg_stat_activity where application_name = 'second-claimer' and wait_event_type = 'Lock'`,
      );
      if (rows.length > 0 || settled) break;
    }
    await first.query('commit');
    expect(await secondClaim).toEqual([]);
    expect(await runningBy('account_id')).toEqual({ [A]: 2 });
  } finally {
    await Promise.all([first.end(), second.end()]);
  }
});

/**
 * Buffers (8 kB pages) one claim reads: a measure of its work that no clock disturbs. The
 * most of two plans: the one PostgreSQL picks for the arguments, and a generic one (what
 * PL/pgSQL may keep after five calls, and all it uses under plan_cache_mode =
 * force_generic_plan), which once turned the claim into a scan of the whole table.
 */
async function claimBuffers(jobTypes?: string[]): Promise<number> {
  const c = await t.sql.connect();
  try {
    let most = 0;
    for (const mode of ['auto', 'force_generic_plan']) {
      await c.query('begin');
      await c.query(`set local plan_cache_mode = ${mode}`);
      let pages = 0;
      // The second of two claims: the first also reads the catalog to plan its statements.
      for (let i = 0; i < 2; i++) {
        const { rows } = await c.query<{ 'QUERY PLAN': unknown }>(
          `explain (analyze, buffers, format json)
           select * from public.hd_claim_leases('w', $1, 1, 60, null)`,
          [jobTypes ?? null],
        );
        const [plan] = rows[0]?.['QUERY PLAN'] as [{ Plan: Record<string, number> }];
        pages = plan.Plan['Shared Hit Blocks']! + plan.Plan['Shared Read Blocks']!;
      }
      await c.query('rollback');
      most = Math.max(most, pages);
    }
    return most;
  } finally {
    c.release();
  }
}

it('reads as few pages with 50,000 jobs queued for one account as with 10', async () => {
  await enqueue(B, 10, { jobType: 'text2kg' });
  await enqueue(A, 10);
  await t.sql.query('analyze public.hd_ingestion_jobs');
  const small = await claimBuffers();
  const smallOtherType = await claimBuffers(['text2kg']);
  await enqueue(A, 50_000);
  await t.sql.query('vacuum analyze public.hd_ingestion_jobs');
  const big = await claimBuffers();
  const bigOtherType = await claimBuffers(['text2kg']);
  // 50,000 rows fill about 1,500 heap pages and 200 index pages, so a scan of them shows;
  // measured: 32 and 24 pages with 10 queued, 55 and 46 with 50,010 (a deeper index).
  expect(big).toBeLessThan(small + 60);
  expect(bigOtherType).toBeLessThan(smallOtherType + 60);
});
