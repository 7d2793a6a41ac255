import { describe, expect, it } from 'vitest';
import { toHdError } from '../../contract/errors.ts';
import type { QueueSuiteTarget } from './queue-suite.ts';
import { ACCOUNT_A } from './runtime.ts';

/** hd_append_job_logs and the hd_job_logs read, the same for every transport. */
export function describeJobLogs(target: () => QueueSuiteTarget) {
  describe('job logs', () => {
    const line = (seq: number, message: string) => ({
      seq,
      level: 'info',
      message,
      fields: { n: seq },
      logged_at: new Date(Date.UTC(2025, 0, 1, 0, 0, seq)).toISOString(),
    });
    const claimed = async (maxAttempts = 3) => {
      const { db } = target();
      const job = await db.enqueueJob({
        accountId: ACCOUNT_A,
        jobType: 'logs_probe',
        debug: {},
        maxAttempts,
      });
      return claim(job.id);
    };
    const claim = async (jobId: string) => {
      const [job] = await target().db.claimJobs({ workerId: 'w1', leaseSeconds: 60, jobId });
      return { id: jobId, token: job!.lease_token! };
    };
    const codeOf = (promise: Promise<unknown>) =>
      promise.then(
        () => 'accepted',
        (error: unknown) => toHdError(error).code,
      );
    const stored = async (jobId: string) =>
      (
        await target().sql.query(
          `select account_id, attempt, seq, message from hd_job_logs where job_id = $1 order by attempt, seq`,
          [jobId],
        )
      ).rows;

    it("appends under the lease, and after it ended only for the lease's own attempt", async () => {
      const { db } = target();
      const first = await claimed();
      const job = first.id;
      expect(await db.appendJobLogs(job, first.token, [line(1, 'a'), line(2, 'b')])).toBe(2);
      // A retried batch is not stored twice.
      expect(await db.appendJobLogs(job, first.token, [line(2, 'b')])).toBe(0);
      await db.failJob(job, first.token, { code: 'CRASHED', message: 'x', retryable: true });
      // The runner settled the attempt itself; its last lines still reach attempt 1.
      expect(await db.appendJobLogs(job, first.token, [line(3, 'c')])).toBe(1);
      const second = await claim(job);
      await db.appendJobLogs(job, second.token, [line(1, 'second')]);
      await db.completeJob(job, second.token, {});
      // Once a newer lease has ended, the older one is refused; so is a stranger.
      expect(
        await Promise.all([
          codeOf(db.appendJobLogs(job, first.token, [line(4, 'late')])),
          codeOf(db.appendJobLogs(job, crypto.randomUUID(), [line(9, 'forged')])),
        ]),
      ).toEqual(['LEASE_LOST', 'LEASE_LOST']);
      expect(await db.appendJobLogs(job, second.token, [line(2, 'done')])).toBe(1);
      expect(await stored(job)).toEqual([
        { account_id: ACCOUNT_A, attempt: 1, seq: 1, message: 'a' },
        { account_id: ACCOUNT_A, attempt: 1, seq: 2, message: 'b' },
        { account_id: ACCOUNT_A, attempt: 1, seq: 3, message: 'c' },
        { account_id: ACCOUNT_A, attempt: 2, seq: 1, message: 'second' },
        { account_id: ACCOUNT_A, attempt: 2, seq: 2, message: 'done' },
      ]);
    });

    it('stores a batch that races the transaction ending its lease', async () => {
      const { db, sql } = target();
      const job = await claimed();
      const settling = await sql.connect();
      try {
        await settling.query('begin');
        const { rows } = await settling.query<{ pid: number }>('select pg_backend_pid() as pid');
        await settling.query('select public.hd_complete_job($1, $2)', [job.id, job.token]);
        const append = codeOf(db.appendJobLogs(job.id, job.token, [line(1, 'job completed')]));
        // The batch arrived while the lease was still live: it waits on the job row.
        await expect
          .poll(async () => {
            const blocked = await sql.query(
              `select 1 from pg_stat_activity where $1 = any (pg_blocking_pids(pid))`,
              [rows[0]!.pid],
            );
            return blocked.rowCount;
          })
          .toBe(1);
        await settling.query('commit');
        expect(await append).toBe('accepted');
      } finally {
        settling.release();
      }
      expect(await stored(job.id)).toEqual([
        { account_id: ACCOUNT_A, attempt: 1, seq: 1, message: 'job completed' },
      ]);
    });

    it('refuses many batches of an ended lease at once, each with LEASE_LOST', async () => {
      const { db } = target();
      const first = await claimed();
      await db.failJob(first.id, first.token, { code: 'CRASHED', message: 'x', retryable: true });
      const second = await claim(first.id);
      await db.completeJob(first.id, second.token, {});
      // Each refusal reads the row under a share lock; none may wait on another (deadlock).
      const codes = await Promise.all(
        Array.from({ length: 8 }, (_, i) =>
          codeOf(db.appendJobLogs(first.id, first.token, [line(10 + i, 'late')])),
        ),
      );
      expect(codes).toEqual(Array.from({ length: 8 }, () => 'LEASE_LOST'));
    });

    it('lists the last lines of a job, oldest first', async () => {
      const { db } = target();
      const job = await claimed();
      await db.appendJobLogs(
        job.id,
        job.token,
        [1, 2, 3].map((n) => line(n, `m${n}`)),
      );
      expect(await db.listJobLogs(job.id, 2)).toEqual([
        {
          attempt: 1,
          seq: 2,
          level: 'info',
          message: 'm2',
          fields: { n: 2 },
          logged_at: new Date(Date.UTC(2025, 0, 1, 0, 0, 2)),
        },
        expect.objectContaining({ seq: 3, message: 'm3' }),
      ]);
      expect(await db.listJobLogs(crypto.randomUUID(), 10)).toEqual([]);
    });
  });
}
