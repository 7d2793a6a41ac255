import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A } from './helpers/runtime.ts';

// 00019 on real PostgreSQL, the clock moved by p_now (no sleeping): the reaper spares a
// lease that expired while its scheduler was cut off from the database, until that
// scheduler is back long enough to record the outcome or counts as dead; a late outcome
// lands while the lease is still the job's and never after someone else took it.

let t: TestDatabase;
/** The database's now at the start: every call below is at T + seconds. */
let T: Date;
beforeAll(async () => {
  t = await createTestDatabase();
  T = (await t.sql.query<{ now: Date }>('select now()')).rows[0]!.now;
});
afterAll(async () => {
  await t?.drop();
});

const at = (seconds: number) => new Date(T.getTime() + seconds * 1000);

/** A scheduler's report-in (every 5 s, 60 s leases), which also reaps: the ids reaped. */
async function reap(worker: string | null, seconds: number): Promise<string[]> {
  const { rows } = await t.sql.query<{ id: string }>(
    'select id from hd_reap_expired_leases($1, $2, 5, 60)',
    [at(seconds), worker],
  );
  return rows.map((r) => r.id);
}

/** Report-ins of each of `workers` every 5 s from `from` to `to` seconds: the ids reaped. */
async function reapEvery(workers: string | string[], from: number, to: number) {
  const ids: string[] = [];
  for (let s = from; s <= to; s += 5)
    for (const worker of [workers].flat()) ids.push(...(await reap(worker, s)));
  return ids;
}

/** A job claimed by `worker` at T + `seconds` with a 30 s lease. */
async function claimed(worker: string, seconds: number) {
  const job = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'reap_probe', debug: {} });
  const { rows } = await t.sql.query<{ id: string; lease_token: string }>(
    'select id, lease_token from hd_claim_jobs($1, null, 1, 30, $2, $3)',
    [worker, job.id, at(seconds)],
  );
  return rows[0]!;
}

const release = (job: { id: string; lease_token: string }, seconds: number) =>
  t.sql.query('select status, attempts, error_code from hd_release_job($1, $2, $3)', [
    job.id,
    job.lease_token,
    at(seconds),
  ]);

describe('the reaper and a scheduler cut off from the database (00019)', () => {
  it('reaps at once a lease that expired while its scheduler was in contact', async () => {
    const job = await claimed('s1', 0);
    expect(await reapEvery('s1', 0, 25)).not.toContain(job.id);
    expect(await reap('s1', 30)).toContain(job.id); // expired at 30, s1 reporting in
  });

  it('spares a cut-off scheduler: a late hand-back lands, attempt refunded', async () => {
    await reap('s2', 100);
    const job = await claimed('s2', 100);
    // s2 is silent from 100 on; the lease ends at 130; "other" reaps every 5 s meanwhile.
    expect(await reapEvery('other', 100, 155)).not.toContain(job.id);
    // s2 comes back at 158 and records its runner's hand-back, the lease long expired.
    await reap('s2', 158);
    const { rows } = await release(job, 159);
    expect(rows[0]).toMatchObject({ status: 'queued', attempts: 0, error_code: null });
  });

  it('gives a scheduler that is back time for its outcomes, then reaps', async () => {
    await reap('s3', 200);
    const job = await claimed('s3', 200);
    expect(await reapEvery('other', 200, 235)).not.toContain(job.id);
    // s3 is back at 240 after 40 s of silence (the lease ended at 230) and reports in again.
    // Spared for max(3 report-ins, half a lease) = 30 s after it came back.
    expect(await reapEvery(['s3', 'other'], 240, 265)).not.toContain(job.id);
    expect(await reapEvery(['s3', 'other'], 270, 270)).toContain(job.id);
    // The reaper took it: the late outcome is refused, the newer state stays.
    await expect(release(job, 271)).rejects.toMatchObject({ code: 'HDL01' });
  });

  it('counts a scheduler silent for a lease after its last report-in as dead', async () => {
    await reap('s4', 300);
    const job = await claimed('s4', 300);
    expect(await reapEvery('other', 300, 355)).not.toContain(job.id);
    expect(await reap('other', 360)).toContain(job.id); // 300 + its 60 s lease
  });

  it('spares every lease right after an outage of the reaper itself, then reaps the dead', async () => {
    await reap('s5', 400);
    const job = await claimed('s5', 400);
    await reapEvery('other', 400, 405);
    // The database was down from 405 to 600 for everyone. "other" is back first; s5 is
    // silent past its lease (it may be dead, or not back yet).
    expect(await reapEvery('other', 600, 610)).not.toContain(job.id);
    // s5 never reports back: after the reaper's own 3 report-ins it counts as dead.
    expect(await reap('other', 615)).toContain(job.id);
  });

  it('never lets a late outcome touch a newer attempt', async () => {
    const first = await claimed('s6', 700);
    expect(await reapEvery('s6', 700, 735)).toContain(first.id); // in contact: reaped
    const { rows } = await t.sql.query<{ lease_token: string; attempts: number }>(
      'select lease_token, attempts from hd_claim_jobs($1, null, 1, 30, $2, $3)',
      ['s7', first.id, at(1000)],
    );
    await expect(release(first, 1001)).rejects.toMatchObject({ code: 'HDL01' });
    await expect(
      t.sql.query("select hd_fail_job($1, $2, 'CRASHED', 'late', true, null, $3)", [
        first.id,
        first.lease_token,
        at(1001),
      ]),
    ).rejects.toMatchObject({ code: 'HDL01' });
    expect(await t.db.getJob(first.id)).toMatchObject({
      status: 'running',
      locked_by: 's7',
      lease_token: rows[0]!.lease_token,
      attempts: rows[0]!.attempts,
    });
  });
});
