import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toHdError } from '../../contract/errors.ts';
import type { Job } from '../../contract/jobs.ts';
import type { ControlPlaneDb } from '../../control-plane/db/transport.ts';
import { describeJobLogs } from './job-logs-suite.ts';
import { ACCOUNT_A } from './runtime.ts';

/** What the queue suite runs against: a transport, and SQL access to the same database. */
export interface QueueSuiteTarget {
  db: ControlPlaneDb;
  /** Direct SQL for setup, assertions and calls with a moved clock (p_now). */
  sql: pg.Pool;
  /** `notify`: listen() delivers LISTEN/NOTIFY wake-ups; `poll`: the scheduler polls. */
  wakeups: 'notify' | 'poll';
  close(): Promise<void>;
}

/**
 * The queue's behaviour, the same for every transport: each transport's test file calls
 * this with its own way to open the database (DESIGN principle 5, "two transports, one
 * behaviour").
 */
export function describeQueueSuite(name: string, open: () => Promise<QueueSuiteTarget>) {
  describe(`queue over the ${name} transport`, () => {
    let t: QueueSuiteTarget;
    beforeAll(async () => {
      t = await open();
    });
    afterAll(() => t.close());

    const LEASE = 60;
    const enqueue = (
      overrides: Partial<{ maxAttempts: number; jobType: string; priority: number }> = {},
    ) =>
      t.db.enqueueJob({
        accountId: ACCOUNT_A,
        jobType: overrides.jobType ?? 'import_assets_jsonl',
        debug: { path: 'x' },
        maxAttempts: overrides.maxAttempts,
        priority: overrides.priority,
      });
    const claimOne = async (jobId: string, worker = 'w1') => {
      const [job] = await t.db.claimJobs({ workerId: worker, leaseSeconds: LEASE, jobId });
      if (!job?.lease_token) throw new Error(`could not claim ${jobId}`);
      return job as Job & { lease_token: string };
    };
    /** Calls a queue function with a moved clock (p_now), as a test-only time machine. */
    const at = async (sql: string, params: unknown[]) => (await t.sql.query(sql, params)).rows;
    const errorOf = async (promise: Promise<unknown>) => {
      try {
        await promise;
      } catch (error) {
        return toHdError(error);
      }
      throw new Error('expected a rejection');
    };

    describe('claim', () => {
      it('never hands the same job to two of many concurrent claimers', async () => {
        const ids = new Set<string>();
        for (let i = 0; i < 300; i++) ids.add((await enqueue({ jobType: 'concurrency_probe' })).id);
        const claimed: string[] = [];
        await Promise.all(
          Array.from({ length: 24 }, async (_, w) => {
            for (;;) {
              const options = {
                workerId: `w${w}`,
                jobTypes: ['concurrency_probe'],
                limit: 1 + (w % 3),
                leaseSeconds: LEASE,
              };
              // Half claim as a scheduler does (the claim's columns), half whole rows.
              const jobs = w % 2 ? await t.db.claimLeases(options) : await t.db.claimJobs(options);
              if (jobs.length === 0) return;
              for (const job of jobs) expect(job.lease_expires_at).toBeInstanceOf(Date);
              claimed.push(...jobs.map((j) => j.id));
            }
          }),
        );
        expect(claimed.length).toBe(300);
        expect(new Set(claimed)).toEqual(ids);
        const { rows } = await t.sql.query(
          `select count(*)::int as n from hd_ingestion_jobs where job_type = 'concurrency_probe' and status = 'running' and attempts = 1 and lease_token is not null`,
        );
        expect(rows[0].n).toBe(300);
      });

      it('claims by priority, then by run_after, and only the requested types', async () => {
        const low = await enqueue({ jobType: 'prio_probe', priority: 0 });
        const high = await enqueue({ jobType: 'prio_probe', priority: 5 });
        await enqueue({ jobType: 'other_probe', priority: 100 });
        const first = await t.db.claimJobs({
          workerId: 'w',
          jobTypes: ['prio_probe'],
          leaseSeconds: LEASE,
        });
        const second = await t.db.claimJobs({
          workerId: 'w',
          jobTypes: ['prio_probe'],
          leaseSeconds: LEASE,
        });
        expect(first.map((j) => j.id)).toEqual([high.id]);
        expect(second.map((j) => j.id)).toEqual([low.id]);
      });
    });

    describe('lease fencing', () => {
      it('refuses every call of a runner whose lease expired and was taken over', async () => {
        const job = await enqueue();
        const stale = await claimOne(job.id, 'zombie');
        // Two minutes later the reaper finds the lease expired and requeues the job.
        const reaped = await at(
          `select * from hd_reap_expired_leases(now() + interval '2 minutes')`,
          [],
        );
        expect(reaped.map((r) => r.id)).toContain(job.id);
        expect(reaped.find((r) => r.id === job.id)).toMatchObject({
          status: 'queued',
          error_code: 'LEASE_EXPIRED',
        });
        // A new worker takes it (after the backoff) and holds a fresh lease.
        const [fresh] = await at(
          `select * from hd_claim_jobs('w2', null, 1, 600, $1, now() + interval '10 minutes')`,
          [job.id],
        );
        expect(fresh.lease_token).not.toBe(stale.lease_token);
        expect(fresh.attempts).toBe(2);

        const refusals = await Promise.all([
          errorOf(t.db.completeJob(job.id, stale.lease_token, { zombie: true })),
          errorOf(t.db.heartbeat(job.id, stale.lease_token, LEASE)),
          errorOf(t.db.reportProgress(job.id, stale.lease_token, 50)),
          errorOf(
            t.db.upsertAssets(job.id, stale.lease_token, [
              { title: 't', source_type: 's', source_ref: 'zombie', metadata: {} },
            ]),
          ),
          errorOf(
            t.db.failJob(job.id, stale.lease_token, {
              code: 'CRASHED',
              message: 'x',
              retryable: true,
            }),
          ),
        ]);
        expect(refusals.map((e) => e.code)).toEqual([
          'LEASE_LOST',
          'LEASE_LOST',
          'LEASE_LOST',
          'LEASE_LOST',
          'LEASE_LOST',
        ]);
        const { rows: zombieRows } = await t.sql.query(
          `select count(*)::int as n from hd_assets where source_ref = 'zombie'`,
        );
        expect(zombieRows[0].n).toBe(0);

        // The lease holder is unaffected by the zombie's attempts.
        const after = await t.db.getJob(job.id);
        expect(after).toMatchObject({
          status: 'running',
          locked_by: 'w2',
          error_code: 'LEASE_EXPIRED',
        });
      });

      it('keeps an expired lease with its holder until the reaper or a claim takes it (00019)', async () => {
        const job = await claimOne((await enqueue()).id);
        // Expired, but nobody else has the job: its holder may still renew it.
        await expect(
          at(`select hd_heartbeat($1, $2, 60, now() + interval '61 seconds')`, [
            job.id,
            job.lease_token,
          ]),
        ).resolves.toHaveLength(1);
        const reaped = await at(
          `select id from hd_reap_expired_leases(now() + interval '200 seconds')`,
          [],
        );
        expect(reaped.map((r) => r.id)).toContain(job.id);
        await expect(
          at(`select hd_heartbeat($1, $2, 60, now() + interval '201 seconds')`, [
            job.id,
            job.lease_token,
          ]),
        ).rejects.toMatchObject({ code: 'HDL01' });
      });

      it('tells a cancelled runner that it was cancelled', async () => {
        const job = await claimOne((await enqueue()).id);
        const cancelled = await t.db.cancelJob(job.id, 'operator said stop');
        expect(cancelled).toMatchObject({
          status: 'failed',
          error_code: 'CANCELLED',
          error: 'operator said stop',
          lease_token: null,
        });
        const error = await errorOf(t.db.heartbeat(job.id, job.lease_token, LEASE));
        expect(error.code).toBe('CANCELLED');
      });
    });

    describe('progress', () => {
      const progressOf = async (jobId: string) => {
        const job = await t.db.getJob(jobId);
        return { percent: job?.progress_percent, step: job?.progress_step };
      };

      it('says initializing when a runner adopts its handed-over lease, after the claim only', async () => {
        const job = await claimOne((await enqueue({ jobType: 'progress_probe' })).id);
        const adopted = await t.db.adoptLease(job.id, job.lease_token, LEASE);
        expect(adopted).toMatchObject({ id: job.id, progress_percent: 0 });
        expect(adopted.progress_step).toBe('initializing');
        expect(adopted.lease_expires_at!.getTime()).toBeGreaterThan(Date.now() + 30_000);
        expect(await progressOf(job.id)).toEqual({ percent: 0, step: 'initializing' });
        // A step further on stays (the percent only rises; so does the step).
        await t.db.reportProgress(job.id, job.lease_token, 20, 'processing:1/5');
        await t.db.adoptLease(job.id, job.lease_token, LEASE);
        expect(await progressOf(job.id)).toEqual({ percent: 20, step: 'processing:1/5' });
        // Refused as a heartbeat is: another lease, a cancelled job.
        expect((await errorOf(t.db.adoptLease(job.id, ACCOUNT_A, LEASE))).code).toBe('LEASE_LOST');
        await t.db.cancelJob(job.id, 'operator said stop');
        expect((await errorOf(t.db.adoptLease(job.id, job.lease_token, LEASE))).code).toBe(
          'CANCELLED',
        );
      });

      it('keeps the percent rising within an attempt and starts over on the next', async () => {
        const job = await enqueue({ maxAttempts: 2, jobType: 'progress_probe' });
        const first = await claimOne(job.id);
        await t.db.reportProgress(job.id, first.lease_token, 0, 'initializing');
        await t.db.reportProgress(job.id, first.lease_token, 60, 'processing_pages:3/5');
        // Out of order (pages OCRed in parallel): a lower report is ignored, its step too.
        await t.db.reportProgress(job.id, first.lease_token, 40, 'processing_pages:2/5');
        expect(await progressOf(job.id)).toEqual({ percent: 60, step: 'processing_pages:3/5' });
        await t.db.reportProgress(job.id, first.lease_token, 60, 'postprocessing');
        await t.db.reportProgress(job.id, first.lease_token, 30);
        expect(await progressOf(job.id)).toEqual({ percent: 60, step: 'postprocessing' });

        await t.db.failJob(job.id, first.lease_token, {
          code: 'DOWNLOAD_FAILED',
          message: 'storage flaked',
          retryable: true,
        });
        const [second] = await at(
          `select * from hd_claim_jobs('w', array['progress_probe'], 1, 600, $1, now() + interval '10 minutes')`,
          [job.id],
        );
        expect(second.attempts).toBe(2);
        expect(await progressOf(job.id)).toEqual({ percent: 0, step: 'claimed' });
        await t.db.reportProgress(job.id, second.lease_token, 10, 'downloading');
        expect(await progressOf(job.id)).toEqual({ percent: 10, step: 'downloading' });
      });

      it('refuses a step outside the concept, naming it, and keeps the recorded one', async () => {
        const job = await claimOne((await enqueue()).id);
        await t.db.reportProgress(job.id, job.lease_token, 20, 'processing:1/4');
        for (const step of [
          'extracting a.pdf',
          'processing_pages:6/5',
          'processing:1/',
          'completed',
        ]) {
          const error = await errorOf(t.db.reportProgress(job.id, job.lease_token, 30, step));
          expect(error.message).toContain(`unknown progress step ${step}`);
          expect((error.cause as { code?: string }).code).toBe('22023');
        }
        expect(await progressOf(job.id)).toEqual({ percent: 20, step: 'processing:1/4' });
      });

      it("commits a report without waiting for the WAL flush, and only the report's (00038)", async () => {
        const job = await claimOne((await enqueue()).id);
        const session = await t.sql.connect(); // one session, as a runner's connection
        const setting = async () =>
          (await session.query<{ s: string }>("select current_setting('synchronous_commit') as s"))
            .rows[0]!.s;
        try {
          await session.query('begin');
          await session.query('select public.hd_report_progress($1, $2, 10, $3)', [
            job.id,
            job.lease_token,
            'downloading',
          ]);
          expect(await setting()).toBe('off');
          await session.query('commit');
          // The session's next call (a chunk write, the completion) commits durably.
          expect(await setting()).toBe('on');
          await session.query('select public.hd_report_progress($1, $2, 20, $3)', [
            job.id,
            job.lease_token,
            'processing',
          ]);
          expect(await setting()).toBe('on');
        } finally {
          session.release();
        }
        expect(await progressOf(job.id)).toEqual({ percent: 20, step: 'processing' });
      });
    });

    describe('complete, fail, retry', () => {
      it('merges stats into debug.stats and keeps the payload', async () => {
        const job = await claimOne((await enqueue()).id);
        const done = await t.db.completeJob(job.id, job.lease_token, { lines: 3 });
        expect(done).toMatchObject({
          status: 'completed',
          progress_percent: 100,
          lease_token: null,
          error: null,
        });
        expect(done.debug).toEqual({ path: 'x', stats: { lines: 3 } });
        expect(done.finished_at).toBeInstanceOf(Date);
      });

      it('answers a completion asked again by the lease that completed it with the row, once (00037)', async () => {
        // A runner whose first answer was lost (the connection dropped after the commit).
        const job = await t.db.enqueueJob({
          accountId: ACCOUNT_A,
          jobType: 'import_assets_jsonl',
          debug: { path: 'x', next_stages: ['text2kg'] },
        });
        const claimed = await claimOne(job.id);
        const first = await t.db.completeJob(job.id, claimed.lease_token, { lines: 3 });
        const again = await t.db.completeJob(job.id, claimed.lease_token, { lines: 9 });
        expect(again).toEqual(first); // stats, finish time and next stage as the first call left them
        const next = await at(
          `select count(*)::int as n from hd_ingestion_jobs where debug #>> '{pipeline,parent_job_id}' = $1`,
          [job.id],
        );
        expect(next).toEqual([{ n: 1 }]);
        // Anyone else is refused, as before.
        const stranger = await errorOf(
          t.db.completeJob(job.id, '00000000-0000-4000-8000-000000000000', {}),
        );
        expect(stranger.code).toBe('LEASE_LOST');

        // A lease that ended any other way completes nothing.
        const failed = await claimOne((await enqueue({ maxAttempts: 1 })).id);
        await t.db.failJob(failed.id, failed.lease_token, {
          code: 'INVALID_INPUT',
          message: 'bad',
          retryable: false,
        });
        expect((await errorOf(t.db.completeJob(failed.id, failed.lease_token, {}))).code).toBe(
          'LEASE_LOST',
        );
        expect(await t.db.getJob(failed.id)).toMatchObject({ status: 'failed' });

        // Requeued and claimed again: the old lease is not the one that ended last any more.
        const redone = await claimOne((await enqueue()).id);
        await t.db.completeJob(redone.id, redone.lease_token, {});
        await t.db.requeueJob(redone.id);
        const second = await claimOne(redone.id, 'w2');
        expect((await errorOf(t.db.completeJob(redone.id, redone.lease_token, {}))).code).toBe(
          'LEASE_LOST',
        );
        expect(await t.db.getJob(redone.id)).toMatchObject({
          status: 'running',
          lease_token: second.lease_token,
        });
      });

      it('retries a retryable failure after a backoff until max_attempts, then fails', async () => {
        const job = await enqueue({ maxAttempts: 3, jobType: 'retry_probe' });
        let now = 0; // minutes from the real now, moved forward by hand
        for (let attempt = 1; attempt <= 3; attempt++) {
          const [claimed] = await at(
            `select * from hd_claim_jobs('w', array['retry_probe'], 1, 60, null, now() + make_interval(mins => $1)) where id = $2`,
            [now, job.id],
          );
          expect(claimed, `attempt ${attempt} claimable`).toBeDefined();
          expect(claimed.attempts).toBe(attempt);
          const [failed] = await at(
            `select * from hd_fail_job($1, $2, 'DOWNLOAD_FAILED', 'storage flaked', true, '{"try":1}', now() + make_interval(mins => $3))`,
            [job.id, claimed.lease_token, now],
          );
          if (attempt < 3) {
            expect(failed).toMatchObject({
              status: 'queued',
              error_code: 'DOWNLOAD_FAILED',
              error: 'storage flaked',
              attempts: attempt,
            });
            // Not claimable before run_after…
            const early = await at(
              `select * from hd_claim_jobs('w', array['retry_probe'], 1, 60, null, now() + make_interval(mins => $1)) where id = $2`,
              [now, job.id],
            );
            expect(early).toHaveLength(0);
            // The delay from the failure's own time (updated_at is p_now), not the clock's:
            // README's 5 s · 2ⁿ⁻¹, of which up to half is random.
            const delay = (failed.run_after.getTime() - failed.updated_at.getTime()) / 1000;
            const base = 5 * 2 ** (attempt - 1);
            expect(delay).toBeGreaterThanOrEqual(base * 0.5);
            expect(delay).toBeLessThanOrEqual(base);
            now += 2; // …and claimable after it
          } else {
            expect(failed).toMatchObject({
              status: 'failed',
              attempts: 3,
              error_code: 'DOWNLOAD_FAILED',
            });
            expect(failed.error_details).toMatchObject({ retryable: true, attempt: 3, try: 1 });
          }
        }
      });

      it('completes a batch together, each job fenced by its own lease', async () => {
        const jobs = await Promise.all([1, 2, 3].map(() => enqueue({ jobType: 'batch_probe' })));
        const claimed = await t.db.claimJobs({
          workerId: 'w',
          jobTypes: ['batch_probe'],
          limit: 3,
          leaseSeconds: LEASE,
        });
        expect(claimed.map((j) => j.id).sort()).toEqual(jobs.map((j) => j.id).sort());
        const [lost, ...held] = claimed;
        await t.db.cancelJob(lost!.id);
        const result = await t.db.completeJobs(
          claimed.map((j) => ({ jobId: j.id, leaseToken: j.lease_token! })),
          { batch: true },
        );
        expect(
          result
            .filter((r) => r.completed)
            .map((r) => r.jobId)
            .sort(),
        ).toEqual(held.map((j) => j.id).sort());
        expect(result.find((r) => r.jobId === lost!.id)).toEqual({
          jobId: lost!.id,
          completed: false,
        });
        for (const job of held) {
          expect(await t.db.getJob(job.id)).toMatchObject({
            status: 'completed',
            lease_token: null,
            debug: { path: 'x', stats: { batch: true } },
          });
        }
        expect(await t.db.getJob(lost!.id)).toMatchObject({
          status: 'failed',
          error_code: 'CANCELLED',
        });
      });

      it('queues the next pipeline stage once when a batch completes a pipeline job', async () => {
        const job = await t.db.enqueueJob({
          accountId: ACCOUNT_A,
          jobType: 'batch_pipeline_probe',
          debug: { next_stages: ['text2kg'] },
        });
        // A plain job in the same call: one UPDATE takes it, the pipeline job goes its own way.
        const plain = await enqueue({ jobType: 'batch_pipeline_probe' });
        const claimed = await claimOne(job.id);
        const claimedPlain = await claimOne(plain.id);
        const lease = [
          { jobId: job.id, leaseToken: claimed.lease_token },
          { jobId: plain.id, leaseToken: claimedPlain.lease_token },
        ];
        expect(await t.db.completeJobs(lease, { n: 1 })).toEqual([
          { jobId: job.id, completed: true },
          { jobId: plain.id, completed: true },
        ]);
        expect(await t.db.completeJobs(lease, {})).toEqual([
          { jobId: job.id, completed: false },
          { jobId: plain.id, completed: false },
        ]);
        for (const id of [job.id, plain.id]) {
          expect(await t.db.getJob(id)).toMatchObject({
            status: 'completed',
            debug: { stats: { n: 1 } },
          });
        }
        const next = await at(
          `select job_type, status from hd_ingestion_jobs where debug #>> '{pipeline,parent_job_id}' = $1`,
          [job.id],
        );
        expect(next).toEqual([{ job_type: 'text2kg', status: 'queued' }]);
      });

      it('reports a pipeline job completed by a concurrent batch as not completed by this one (00037)', async () => {
        const job = await t.db.enqueueJob({
          accountId: ACCOUNT_A,
          jobType: 'batch_race_probe',
          debug: { next_stages: ['text2kg'] },
        });
        const claimed = await claimOne(job.id);
        const call = 'select * from public.hd_complete_jobs($1::uuid[], $2::uuid[], $3)';
        const args = [[job.id], [claimed.lease_token], {}];
        const first = await t.sql.connect();
        try {
          await first.query('begin');
          expect((await first.query(call, args)).rows).toEqual([
            { job_id: job.id, completed: true },
          ]);
          // The same batch again, from another session: it waits for the first one's lock.
          const second = t.sql.query(call, args);
          await expect
            .poll(
              async () =>
                (
                  await t.sql.query(
                    `select count(*)::int as n from pg_stat_activity
                      where wait_event_type = 'Lock' and query like '%hd_complete_jobs%'`,
                  )
                ).rows[0].n,
              { timeout: 30_000 },
            )
            .toBe(1);
          await first.query('commit');
          expect((await second).rows).toEqual([{ job_id: job.id, completed: false }]);
        } finally {
          first.release();
        }
      });

      it('fails a permanent error at once', async () => {
        const job = await claimOne((await enqueue({ maxAttempts: 5 })).id);
        const failed = await t.db.failJob(job.id, job.lease_token, {
          code: 'INVALID_INPUT',
          message: 'bad',
          retryable: false,
        });
        expect(failed).toMatchObject({
          status: 'failed',
          attempts: 1,
          error_code: 'INVALID_INPUT',
        });
      });

      it('spreads retries: the random half of the backoff is uniform, not a constant', async () => {
        const rows = await at(
          `select extract(epoch from hd_retry_delay(3))::float as s from generate_series(1, 200)`,
          [],
        );
        const delays = rows.map((r) => r.s as number);
        // Attempt 3: 20 s, half of it random, so uniform in [10, 20]. With 200 draws both
        // ends are reached within 1 s (each miss has odds below 1e-9), and few values repeat.
        expect(Math.min(...delays)).toBeGreaterThanOrEqual(10);
        expect(Math.max(...delays)).toBeLessThanOrEqual(20);
        expect(Math.min(...delays)).toBeLessThan(11);
        expect(Math.max(...delays)).toBeGreaterThan(19);
        expect(new Set(delays.map((d) => d.toFixed(3))).size).toBeGreaterThan(150);
      });

      it('caps the backoff exponent', async () => {
        const rows = await at(
          `select extract(epoch from hd_retry_delay(n))::float as s, n from generate_series(1, 40) n`,
          [],
        );
        for (const { s, n } of rows) {
          const base = Math.min(3600, 5 * 2 ** Math.min(n - 1, 12));
          expect(s).toBeGreaterThanOrEqual(base * 0.5);
          expect(s).toBeLessThanOrEqual(base);
        }
      });
    });

    describeJobLogs(() => t);

    describe('operations', () => {
      it('requeues a failed job with the error cleared and attempts reset', async () => {
        const job = await claimOne((await enqueue({ maxAttempts: 1 })).id);
        await t.db.failJob(job.id, job.lease_token, {
          code: 'CRASHED',
          message: 'boom',
          retryable: true,
        });
        const requeued = await t.db.requeueJob(job.id);
        expect(requeued).toMatchObject({
          status: 'queued',
          attempts: 0,
          error: null,
          error_code: null,
          error_details: null,
        });
      });

      it('refuses to requeue a running job', async () => {
        const job = await claimOne((await enqueue()).id);
        await expect(t.db.requeueJob(job.id)).rejects.toMatchObject({ code: 'HDS01' });
      });

      it('hands a released job back without spending an attempt', async () => {
        const job = await claimOne((await enqueue()).id);
        const released = await t.db.releaseJob(job.id, job.lease_token);
        expect(released).toMatchObject({ status: 'queued', attempts: 0, lease_token: null });
      });

      it('wakes listeners on insert, requeue and cancel (notify), or subscribes to nothing (poll)', async () => {
        if (t.wakeups === 'poll') {
          // Without LISTEN the scheduler polls; listen() must still resolve and unsubscribe.
          const wakes: unknown[] = [];
          const unlisten = await t.db.listen((reason) => wakes.push(reason));
          await enqueue({ jobType: 'wake_probe_poll' });
          await unlisten();
          expect(wakes).toEqual([]);
          return;
        }
        const wakes: string[] = [];
        const unlisten = await t.db.listen((reason) =>
          wakes.push(
            reason.kind === 'queued' ? `queued:${reason.jobType}` : `cancelled:${reason.jobId}`,
          ),
        );
        try {
          // Inserted directly, as the web app does.
          await t.sql.query(
            `insert into hd_ingestion_jobs (account_id, job_type) values ($1, 'wake_probe')`,
            [ACCOUNT_A],
          );
          const job = await enqueue({ jobType: 'wake_probe2' });
          await t.db.cancelJob(job.id);
          await expect
            .poll(() => wakes)
            .toEqual(['queued:wake_probe', 'queued:wake_probe2', `cancelled:${job.id}`]);
        } finally {
          await unlisten();
        }
      });
    });
  });
}
