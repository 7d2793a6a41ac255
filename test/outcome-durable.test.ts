import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HdError } from '../contract/errors.ts';
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

async function claimedJob(): Promise<LeasedJob> {
  const job = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'outcome_probe', debug: {} });
  const [claimed] = await t.db.claimJobs({ workerId: 'w1', leaseSeconds: 60, jobId: job.id });
  return claimed as LeasedJob;
}

function recorder(leaseMs: number) {
  const { log, lines } = memoryLogger('info');
  const errors: HdError[] = [];
  const outcomes = new OutcomeRecorder({
    db,
    workerId: 'w1',
    log,
    leaseMs,
    onError: (e) => errors.push(e),
  });
  return { outcomes, lines, errors };
}

const crash = { exitCode: null, signal: 'SIGKILL', timedOut: false, stoppedFor: null };
const exit = { ...crash, oomKilled: false, durationMs: 5, outputTail: [] };

describe('OutcomeRecorder while the database is down', () => {
  it('records a crash once the database is back, within the lease', async () => {
    const job = await claimedJob();
    const { outcomes, lines, errors } = recorder(60_000);
    await relay.down();
    try {
      const settling = outcomes.settle(job, exit);
      await expect
        .poll(() => lines.some((l) => l.includes('trying again until the lease would end')))
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

  it('hands a job back the same way, and gives up when the lease would have ended', async () => {
    const job = await claimedJob();
    const { outcomes, errors } = recorder(300);
    await relay.down();
    try {
      await outcomes.settle(job, { ...exit, stoppedFor: 'shutdown' });
    } finally {
      await relay.up();
    }
    expect(errors.map((e) => e.code)).toEqual(['DATABASE_UNAVAILABLE']);
    expect(await t.db.getJob(job.id)).toMatchObject({ status: 'running' }); // the reaper's now
  });
});
