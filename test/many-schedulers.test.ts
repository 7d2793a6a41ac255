import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, ACCOUNT_B, jsonl, putObject, tempDir } from './helpers/runtime.ts';
import { startSchedulerHosts, type SchedulerHost } from './helpers/scheduler-hosts.ts';

// Several DGX boxes on one queue, simulated: three `hd-runner scheduler` processes (2, 2
// and 1 slots, their own worker ids, the process launcher) on one real PostgreSQL and one
// storage folder, running real import jobs of two tenants with a per-account limit of 2.
// One host is SIGKILLed with its runners while it holds a job.

let t: TestDatabase;
let root: string;
let hosts: SchedulerHost[] = [];
beforeAll(async () => {
  t = await createTestDatabase();
  root = await tempDir();
});
afterAll(async () => {
  await Promise.all(hosts.map((h) => h.stop()));
  await t.drop();
});

async function enqueueImports(account: string, count: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    const path = `accounts/${account}/assets-jsonl/${i}.jsonl`;
    await putObject(
      root,
      'hd_uploads_raw',
      path,
      jsonl([{ title: `t${i}`, source_type: 's', source_ref: `${account}-${i}` }]),
    );
    ids.push(
      (
        await t.db.enqueueJob({
          accountId: account,
          jobType: 'import_assets_jsonl',
          debug: { path },
        })
      ).id,
    );
  }
  return ids;
}

type Row = {
  id: string;
  account_id: string;
  status: string;
  attempts: number;
  locked_by: string;
  started_at: Date;
  finished_at: Date;
};

/** Most jobs of one account running at once, from the rows' own claim and finish times. */
function peakRunning(rows: Row[], account: string): number {
  const events = rows
    .filter((r) => r.account_id === account)
    .flatMap((r) => [
      [r.started_at.getTime(), 1],
      [r.finished_at.getTime(), -1],
    ])
    .sort((a, b) => a[0]! - b[0]! || a[1]! - b[1]!);
  let now = 0;
  let peak = 0;
  for (const [, delta] of events) peak = Math.max(peak, (now += delta!));
  return peak;
}

it('three hosts share the queue: each job once, the tenant limit held across hosts, a killed host loses nothing', async () => {
  hosts = await startSchedulerHosts(3, {
    databaseUrl: t.url,
    storageRoot: root,
    env: (i) => ({
      HD_SLOTS: i === 2 ? '1' : '2',
      HD_ACCOUNT_MAX_RUNNING: '2',
      HD_LEASE_SECONDS: '5',
      HD_REAP_INTERVAL_MS: '250',
      HD_POLL_INTERVAL_MS: '250',
    }),
  });
  const ids = [...(await enqueueImports(ACCOUNT_A, 16)), ...(await enqueueImports(ACCOUNT_B, 2))];

  // Host 3 is killed, runner and all, while it holds a job.
  const victim = hosts[2]!;
  await expect
    .poll(
      async () =>
        (
          await t.sql.query(
            `select 1 from hd_ingestion_jobs where status = 'running' and locked_by = $1`,
            [victim.workerId],
          )
        ).rowCount,
      { timeout: 60_000, interval: 20 },
    )
    .toBeGreaterThan(0);
  victim.kill();
  await victim.process;
  const { rows: orphaned } = await t.sql.query<{ id: string }>(
    `select id from hd_ingestion_jobs where status = 'running' and locked_by = $1`,
    [victim.workerId],
  );
  expect(orphaned.length).toBeGreaterThan(0); // its runner died with it: nothing finishes them

  await expect
    .poll(
      async () =>
        (await t.sql.query(`select 1 from hd_ingestion_jobs where status <> 'completed'`)).rowCount,
      { timeout: 120_000, interval: 100 },
    )
    .toBe(0);
  const { rows } = await t.sql.query<Row>(
    `select id, account_id, status, attempts, locked_by, started_at, finished_at
       from hd_ingestion_jobs`,
  );
  expect(rows.map((r) => r.id).sort()).toEqual([...ids].sort());
  const rerun = new Set(orphaned.map((o) => o.id));
  for (const row of rows) {
    // Claimed once (no double claim), except the killed host's jobs: reaped, run again
    // elsewhere.
    expect(row.attempts, row.id).toBe(rerun.has(row.id) ? 2 : 1);
    if (rerun.has(row.id)) expect(row.locked_by).not.toBe(victim.workerId);
  }
  expect(peakRunning(rows, ACCOUNT_A)).toBeLessThanOrEqual(2);
  expect(peakRunning(rows, ACCOUNT_B)).toBeLessThanOrEqual(2);
  const { rows: assets } = await t.sql.query(`select count(*)::int as n from hd_assets`);
  expect(assets[0].n).toBe(ids.length);
  // Both live hosts finished jobs (the killed one held at least one, above).
  const byHost = new Set(rows.map((r) => r.locked_by));
  expect(byHost).toContain('host-1');
  expect(byHost).toContain('host-2');
}, 240_000);
