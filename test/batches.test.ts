import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job } from '../contract/jobs.ts';
import { batchesOf, type Batch, type BatchStore } from '../control-plane/db/batches.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, ACCOUNT_B } from './helpers/runtime.ts';

// Batches (00013) on a real PostgreSQL: enqueued all or none, idempotent, and counts the
// database keeps exact whoever changes a job, also under many concurrent changes.
let t: TestDatabase;
let batches: BatchStore;
const LEASE = 60;

beforeAll(async () => {
  t = await createTestDatabase();
  batches = batchesOf(t.db);
});
afterAll(() => t.drop());

const probe = (n: number) =>
  Array.from({ length: n }, (_, i) => ({ jobType: 'batch_probe', debug: { n: i } }));

/** The batch's counts as a recount of its jobs would give them. */
async function recount(batchId: string) {
  const { rows } = await t.sql.query<{ bucket: string; n: number }>(
    `select public.hd__batch_bucket(status, error_code) as bucket, count(*)::int as n
       from hd_ingestion_jobs where batch_id = $1 group by 1`,
    [batchId],
  );
  const by = Object.fromEntries(rows.map((r) => [r.bucket, r.n]));
  const counts = {
    queued: by.queued ?? 0,
    running: by.running ?? 0,
    completed: by.completed ?? 0,
    failed: by.failed ?? 0,
    cancelled: by.cancelled ?? 0,
  };
  return { ...counts, total: Object.values(counts).reduce((a, b) => a + b, 0) };
}

const countsOf = (b: Batch) => ({
  total: b.total,
  queued: b.queued,
  running: b.running,
  completed: b.completed,
  failed: b.failed,
  cancelled: b.cancelled,
});

async function claimAll(batchId: string, n: number): Promise<Job[]> {
  const claimed: Job[] = [];
  // A batch's jobs only: claim by id, as `hd-runner run --job-id` does.
  for (const job of await batches.listBatchJobs(batchId, n)) {
    const [c] = await t.db.claimJobs({ workerId: 'w', leaseSeconds: LEASE, jobId: job.id });
    claimed.push(c!);
  }
  return claimed;
}

describe('enqueueing a batch', () => {
  it('inserts every job with its batch and counts them', async () => {
    const batch = await batches.enqueueBatch({ accountId: ACCOUNT_A, name: 'q1', jobs: probe(3) });
    expect(batch).toMatchObject({ status: 'active', total: 3, queued: 3, percent: 0 });
    const jobs = await batches.listBatchJobs(batch.id, 10);
    const seen = jobs.map((j) => [j.account_id, j.status, j.debug]);
    expect(seen.sort((p, q) => JSON.stringify(p).localeCompare(JSON.stringify(q)))).toEqual([
      [ACCOUNT_A, 'queued', { n: 0 }],
      [ACCOUNT_A, 'queued', { n: 1 }],
      [ACCOUNT_A, 'queued', { n: 2 }],
    ]);
  });

  it('returns the first batch for a key used again, adding nothing', async () => {
    const request = {
      accountId: ACCOUNT_A,
      name: 'nightly',
      idempotencyKey: 'k-1',
      jobs: probe(2),
    };
    const [first, second] = await Promise.all([
      batches.enqueueBatch(request),
      batches.enqueueBatch(request),
    ]);
    expect(second!.id).toBe(first!.id);
    const again = await batches.enqueueBatch({ ...request, jobs: probe(5) });
    expect(again).toMatchObject({ id: first!.id, total: 2 });
    expect(await recount(first!.id)).toMatchObject({ total: 2 });
    // The key is the account's: another account's batch with the same key is its own.
    const other = await batches.enqueueBatch({ ...request, accountId: ACCOUNT_B });
    expect(other.id).not.toBe(first!.id);
  });

  it('adds nothing when one job is invalid, and names it', async () => {
    const before = await t.sql.query('select count(*)::int as n from hd_ingestion_jobs');
    const jobs = [...probe(2), { jobType: '', debug: {} }];
    await expect(batches.enqueueBatch({ accountId: ACCOUNT_A, name: 'bad', jobs })).rejects.toThrow(
      'hd_enqueue_batch: job 2 has no job_type',
    );
    await expect(
      batches.enqueueBatch({ accountId: ACCOUNT_A, name: 'empty', jobs: [] }),
    ).rejects.toThrow('jobs must be a non-empty JSON array');
    const after = await t.sql.query('select count(*)::int as n from hd_ingestion_jobs');
    expect(after.rows[0].n).toBe(before.rows[0].n);
    const named = await batches.listBatches({ accountId: ACCOUNT_A });
    expect(named.map((b) => b.name)).not.toContain('bad');
  });
});

describe('batch counts and status', () => {
  it('follows claim, retry, permanent failure, cancel, requeue and completion', async () => {
    const batch = await batches.enqueueBatch({ accountId: ACCOUNT_A, name: 's', jobs: probe(3) });
    const [a, b] = await claimAll(batch.id, 2);
    expect(countsOf((await batches.getBatch(batch.id))!)).toEqual({
      total: 3,
      queued: 1,
      running: 2,
      completed: 0,
      failed: 0,
      cancelled: 0,
    });
    await t.db.completeJob(a!.id, a!.lease_token!, {});
    // Retryable: back to queued (attempts remain).
    await t.db.failJob(b!.id, b!.lease_token!, { code: 'X', message: 'x', retryable: true });
    let now = (await batches.getBatch(batch.id))!;
    expect(now).toMatchObject({ status: 'active', queued: 2, running: 0, completed: 1 });

    const [b2] = await t.db.claimJobs({ workerId: 'w', leaseSeconds: LEASE, jobId: b!.id });
    await t.db.failJob(b2!.id, b2!.lease_token!, { code: 'X', message: 'x', retryable: false });
    now = await batches.cancelBatch(batch.id, 'enough');
    expect(now).toMatchObject({ queued: 0, completed: 1, failed: 1, cancelled: 1 });
    // A job failed for good: failed, whatever else was cancelled.
    expect(now.status).toBe('failed');
    expect(now.finished_at).toBeInstanceOf(Date);
    expect(Number(now.percent)).toBe(100);

    now = await batches.requeueBatch(batch.id);
    expect(now).toMatchObject({ status: 'active', queued: 2, completed: 1, failed: 0 });
    expect(now.finished_at).toBeNull();
    for (const job of await claimAll(batch.id, 3)) {
      if (job) await t.db.completeJob(job.id, job.lease_token!, {});
    }
    now = (await batches.getBatch(batch.id))!;
    expect(now).toMatchObject({ status: 'completed', completed: 3, percent: 100 });
  });

  it('is cancelled when jobs were cancelled and none failed', async () => {
    const batch = await batches.enqueueBatch({ accountId: ACCOUNT_A, name: 'c', jobs: probe(2) });
    const [a] = await claimAll(batch.id, 1);
    const cancelled = await batches.cancelBatch(batch.id);
    expect(cancelled).toMatchObject({ status: 'cancelled', cancelled: 2, running: 0 });
    // The running job's lease is gone: its runner can record nothing more.
    await expect(t.db.completeJob(a!.id, a!.lease_token!, {})).rejects.toMatchObject({
      code: 'HDL01',
    });
    expect(countsOf((await batches.getBatch(batch.id))!)).toEqual(await recount(batch.id));
  });

  it('counts direct writes of the web app (service_role) and deletes too', async () => {
    const batch = await batches.enqueueBatch({ accountId: ACCOUNT_B, name: 'd', jobs: probe(3) });
    const [first, second] = await batches.listBatchJobs(batch.id, 3);
    const client = await t.sql.connect();
    try {
      await client.query('begin');
      await client.query('set local role service_role');
      await client.query(`update hd_ingestion_jobs set status = 'completed' where id = $1`, [
        first!.id,
      ]);
      await client.query('delete from hd_ingestion_jobs where id = $1', [second!.id]);
      await client.query('commit');
    } finally {
      client.release();
    }
    expect((await batches.getBatch(batch.id))!).toMatchObject({
      total: 2,
      queued: 1,
      completed: 1,
    });
  });

  it('counts a statement whose row trigger writes another batch job in between (00028)', async () => {
    // The mark is set by a BEFORE row trigger and read by the statement's count; a trigger
    // named to run after it writes a second job of the batch from inside the first's
    // UPDATE: that nested statement's count must not take the outer statement's mark.
    const batch = await batches.enqueueBatch({ accountId: ACCOUNT_B, name: 'n', jobs: probe(2) });
    const [outer, inner] = await batches.listBatchJobs(batch.id, 2);
    await t.sql.query(
      `create function public.test_nested_write() returns trigger language plpgsql as $$
       begin
         update public.hd_ingestion_jobs set status = 'completed' where id = '${inner!.id}';
         return new;
       end $$;
       create trigger hd_zz_test_nested before update on public.hd_ingestion_jobs
         for each row when (new.id = '${outer!.id}') execute function public.test_nested_write()`,
    );
    try {
      await t.sql.query(`update hd_ingestion_jobs set status = 'completed' where id = $1`, [
        outer!.id,
      ]);
    } finally {
      await t.sql.query(`drop trigger hd_zz_test_nested on public.hd_ingestion_jobs;
        drop function public.test_nested_write()`);
    }
    const now = (await batches.getBatch(batch.id))!;
    expect(countsOf(now)).toEqual(await recount(batch.id));
    expect(now).toMatchObject({ total: 2, completed: 2, status: 'completed' });
  });

  it('stays exact under many concurrent completions, retries, cancels and requeues', async () => {
    const n = 60;
    const [x, y] = await Promise.all([
      batches.enqueueBatch({ accountId: ACCOUNT_A, name: 'race-x', jobs: probe(n) }),
      batches.enqueueBatch({ accountId: ACCOUNT_A, name: 'race-y', jobs: probe(n) }),
    ]);
    const jobsX = await claimAll(x!.id, n);
    const jobsY = await claimAll(y!.id, n);
    // Per job i: 0 complete, 1 retryable failure, 2 permanent failure, 3 cancel, and pairs
    // from both batches completed in one hd_complete_jobs call, in opposite orders (two
    // statements locking both batches: deadlock-free only if they lock in one order).
    const ops: Promise<unknown>[] = [];
    for (let i = 0; i < n - 10; i++) {
      for (const job of [jobsX[i]!, jobsY[i]!]) {
        const token = job.lease_token!;
        const op = i % 4;
        if (op === 0) ops.push(t.db.completeJob(job.id, token, {}));
        if (op === 1)
          ops.push(t.db.failJob(job.id, token, { code: 'X', message: 'x', retryable: true }));
        if (op === 2)
          ops.push(t.db.failJob(job.id, token, { code: 'X', message: 'x', retryable: false }));
        if (op === 3) ops.push(t.db.cancelJob(job.id));
      }
    }
    for (let i = n - 10; i < n; i++) {
      const pair = [jobsX[i]!, jobsY[i]!].map((j) => ({ jobId: j.id, leaseToken: j.lease_token! }));
      ops.push(t.db.completeJobs(i % 2 ? pair : pair.reverse(), {}));
    }
    await Promise.all(ops);
    for (const batch of [x!, y!]) {
      const now = (await batches.getBatch(batch.id))!;
      expect(countsOf(now)).toEqual(await recount(batch.id));
      expect(countsOf(now)).toEqual({
        total: n,
        queued: 13, // i % 4 === 1 for i < 50
        running: 0,
        completed: 13 + 10,
        failed: 12,
        cancelled: 12,
      });
    }
    // Then a requeue of X racing the claims and completions of its queued jobs.
    const queued = (await batches.listBatchJobs(x!.id, n)).filter((j) => j.status === 'queued');
    await Promise.all([
      batches.requeueBatch(x!.id),
      ...queued.map(async (j) => {
        const [c] = await t.db.claimJobs({ workerId: 'w', leaseSeconds: LEASE, jobId: j.id });
        if (c) await t.db.completeJob(c.id, c.lease_token!, {});
      }),
    ]);
    const after = (await batches.getBatch(x!.id))!;
    expect(countsOf(after)).toEqual(await recount(x!.id));
    expect(after).toMatchObject({ status: 'active', failed: 0, cancelled: 0, running: 0 });
    expect(after.queued).toBe(24);
    expect(after.completed).toBe(36);
  });
});

describe('realtime publication', () => {
  it('publishes jobs, batches and log lines where supabase_realtime exists', async () => {
    const published = async () =>
      (
        await t.sql.query<{ tablename: string }>(
          `select tablename from pg_publication_tables
            where pubname = 'supabase_realtime' order by 1`,
        )
      ).rows.map((r) => r.tablename);
    await t.sql.query('create publication supabase_realtime for table public.hd_job_logs');
    const migration = await readFile(
      new URL('../supabase/migrations/00013_batches.sql', import.meta.url),
      'utf8',
    );
    await t.sql.query(migration); // re-runnable: applied again on a database that has it
    expect(await published()).toEqual(['hd_batches', 'hd_ingestion_jobs', 'hd_job_logs']);
    await t.sql.query(migration);
    expect(await published()).toEqual(['hd_batches', 'hd_ingestion_jobs', 'hd_job_logs']);
  });
});
