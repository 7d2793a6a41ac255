import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toHdError, type HdError } from '../contract/errors.ts';
import type { LeasedJob } from '../contract/jobs.ts';
import { PostgresDb } from '../control-plane/db/postgres.ts';
import { OutcomeRecorder } from '../scheduler/outcome.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { startDbRelay, type OutageRelay } from './helpers/outage-relay.ts';
import { ACCOUNT_A, memoryLogger } from './helpers/runtime.ts';

// Real PostgreSQL; the outage is a relay in front of it that refuses connections.
let t: TestDatabase;
let relay: OutageRelay & { url: string };
let db: PostgresDb;
beforeAll(async () => {
  t = await createTestDatabase();
  relay = await startDbRelay(t.url);
  db = new PostgresDb({ connectionString: relay.url });
});
afterAll(async () => {
  await db.close();
  await relay.close();
  await t.drop();
});

async function claimedJob(leaseSeconds = 60): Promise<LeasedJob> {
  const job = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'outcome_probe', debug: {} });
  const [claimed] = await t.db.claimJobs({ workerId: 'w1', leaseSeconds, jobId: job.id });
  return claimed as LeasedJob;
}

function recorder(signal?: AbortSignal) {
  const { log, lines } = memoryLogger('info');
  const errors: HdError[] = [];
  const outcomes = new OutcomeRecorder({
    db,
    workerId: 'w1',
    log,
    signal,
    onError: (e) => errors.push(e),
  });
  return { outcomes, lines, errors };
}

const crash = { exitCode: null, signal: 'SIGKILL', timedOut: false, stoppedFor: null };
const exit = { ...crash, oomKilled: false, durationMs: 5, outputTail: [] };

describe('a connection the database outage drops under a query', () => {
  it('reads as DATABASE_UNAVAILABLE (a runner hands the job back, no crash)', async () => {
    const query = db.pool.query('select pg_sleep(30)');
    await expect
      .poll(
        async () =>
          (
            await t.sql.query<{ n: number }>(
              "select count(*)::int as n from pg_stat_activity where query = 'select pg_sleep(30)'",
            )
          ).rows[0]!.n,
      )
      .toBe(1);
    await relay.down();
    const error = await query.then(
      () => undefined,
      (e: unknown) => e,
    );
    await relay.up();
    expect(String(error)).toMatch(/Connection terminated/);
    expect(toHdError(error).code).toBe('DATABASE_UNAVAILABLE');
  });
});

describe('OutcomeRecorder while the database is down', () => {
  it('records a crash once the database is back, within the lease', async () => {
    const job = await claimedJob();
    const { outcomes, lines, errors } = recorder();
    await relay.down();
    try {
      const settling = outcomes.settle(job, exit);
      await expect
        .poll(() => lines.some((l) => l.includes('trying again until the database takes it')))
        .toBe(true);
      await relay.up();
      await settling;
    } finally {
      await relay.up().catch(() => {});
    }
    expect(errors).toEqual([]);
    expect(await t.db.getJob(job.id)).toMatchObject({
      status: 'queued',
      error_code: 'CRASHED',
      lease_token: null,
    });
  });

  it('hands a job back after an outage longer than its lease; another reaper waits (00019)', async () => {
    // Scheduler w1 reports in (every second, 30 s leases), then loses the database with
    // a runner that ended: its hand-back waits. The job's lease is 1 s, so it expires
    // during the outage; scheduler w2, still connected, reaps meanwhile.
    await t.db.reapExpiredLeases({ workerId: 'w1', everySeconds: 1, leaseSeconds: 30 });
    const job = await claimedJob(1);
    const { outcomes, errors } = recorder();
    await relay.down();
    try {
      const settling = outcomes.settle(job, { ...exit, exitCode: 14, signal: null });
      // w1 has been silent for two report-ins and the lease has ended: a reaper could act.
      await expect
        .poll(
          async () =>
            (
              await t.sql.query(
                `select lease_expires_at < now() - interval '2 seconds' as past from hd_ingestion_jobs where id = $1`,
                [job.id],
              )
            ).rows[0].past,
          { timeout: 20_000 },
        )
        .toBe(true);
      const reaped = await t.db.reapExpiredLeases({
        workerId: 'w2',
        everySeconds: 1,
        leaseSeconds: 30,
      });
      expect(reaped.map((j) => j.id)).not.toContain(job.id);
      await relay.up();
      await settling;
    } finally {
      await relay.up().catch(() => {});
    }
    expect(errors).toEqual([]);
    // Handed back with its attempt refunded, not LEASE_EXPIRED.
    expect(await t.db.getJob(job.id)).toMatchObject({
      status: 'queued',
      attempts: 0,
      error_code: null,
      lease_token: null,
    });
  });

  it('gives up when told to (the scheduler stops), and says so', async () => {
    const job = await claimedJob();
    const stop = new AbortController();
    const { outcomes, lines, errors } = recorder(stop.signal);
    await relay.down();
    try {
      const settling = outcomes.settle(job, { ...exit, stoppedFor: 'shutdown' });
      await expect.poll(() => lines.some((l) => l.includes('trying again'))).toBe(true);
      stop.abort();
      await settling;
    } finally {
      await relay.up();
    }
    expect(errors.map((e) => e.code)).toEqual(['DATABASE_UNAVAILABLE']);
    expect(await t.db.getJob(job.id)).toMatchObject({ status: 'running' }); // the reaper's now
  });
});
