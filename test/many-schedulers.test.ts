import { afterAll, beforeAll, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, ACCOUNT_B, jsonl, putObject, tempDir } from './helpers/runtime.ts';
import {
  type GpuHost,
  startGpuHosts,
  startSchedulerHosts,
  type SchedulerHost,
} from './helpers/scheduler-hosts.ts';

// Several DGX boxes on one queue, simulated: three `hd-runner scheduler` processes (2, 2
// and 1 slots, their own worker ids, the process launcher) on one real PostgreSQL and one
// storage folder, running real import jobs of two tenants with a per-account limit of 2.
// One host is SIGKILLed with its runners while it holds a job.

let t: TestDatabase;
let root: string;
let hosts: SchedulerHost[] = [];
let gpuHosts: GpuHost[] = [];
beforeAll(async () => {
  t = await createTestDatabase();
  root = await tempDir();
});
afterAll(async () => {
  await Promise.all(hosts.map((h) => h.stop()));
  await Promise.all(gpuHosts.map(async (h) => (await h.scheduler.stop(0), await h.db.close())));
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

/** Waits until every job of the queue has completed. */
async function allCompleted(timeout: number): Promise<void> {
  await expect
    .poll(
      async () =>
        (await t.sql.query(`select 1 from hd_ingestion_jobs where status <> 'completed'`)).rowCount,
      { timeout, interval: 100 },
    )
    .toBe(0);
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

  // Host 3 is killed, runner and all, while it holds a job. It is frozen (SIGSTOP to its
  // process group) before the look, so its runner cannot finish the job between the look
  // and the kill; a look that finds nothing thaws it and looks again.
  const victim = hosts[2]!;
  const group = -victim.process.pid!;
  let orphaned: { id: string }[] = [];
  await expect
    .poll(
      async () => {
        process.kill(group, 'SIGSTOP');
        ({ rows: orphaned } = await t.sql.query<{ id: string }>(
          `select id from hd_ingestion_jobs where status = 'running' and locked_by = $1`,
          [victim.workerId],
        ));
        if (orphaned.length === 0) process.kill(group, 'SIGCONT');
        return orphaned.length;
      },
      { timeout: 60_000, interval: 20 },
    )
    .toBeGreaterThan(0);
  victim.kill();
  await victim.process;
  expect(orphaned.length).toBeGreaterThan(0); // its runner died with it: nothing finishes them

  await allCompleted(120_000);
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

// Hosts with their own GPU lists, in this process (no job type of this version needs a
// GPU, so the runners are stand-ins that hold their job until the test finishes it):
// host 1 has GPUs 0 and 1, host 2 its own GPU 0, host 3 none; hosts 1 and 2 have a slot
// per GPU, host 3 three slots.
it('GPU jobs go only to hosts with a free GPU, each GPU of a host to one job at a time', async () => {
  // The scheduler processes above claim every job type: they stop first.
  await Promise.all(hosts.splice(0).map((h) => h.stop()));
  await t.sql.query('truncate hd_ingestion_jobs cascade');
  const enqueue = async (jobType: string) =>
    (await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType, debug: {} })).id;
  const gpuJobs = [];
  for (let i = 0; i < 4; i++) gpuJobs.push(await enqueue('gpu_probe'));
  const started = await startGpuHosts(
    [
      { gpus: ['0', '1'], slots: 2 },
      { gpus: ['0'], slots: 1 },
      { gpus: [], slots: 3 },
    ],
    { databaseUrl: t.url, storageRoot: root },
  );
  gpuHosts = started.hosts;
  const { launched, doubleBooked } = started;
  const on = (host: string) =>
    launched
      .map((l) => (l.host === host ? `${l.job.job_type}:${l.gpuIds.join(',')}` : ''))
      .filter(Boolean);

  // Every GPU busy: three GPU jobs, on the two hosts that have GPUs.
  await expect.poll(() => launched.length, { timeout: 30_000 }).toBe(3);
  expect(on('gpu-host-1').sort()).toEqual(['gpu_probe:0', 'gpu_probe:1']);
  expect(on('gpu-host-2')).toEqual(['gpu_probe:0']);
  // A CPU job queued after the fourth GPU job can only go to host 3, the one host with free
  // slots: its claim pass saw the GPU job and left it queued.
  const cpuJob = await enqueue('cpu_probe');
  await expect.poll(() => launched.length, { timeout: 30_000 }).toBe(4);
  expect(launched[3]).toMatchObject({ host: 'gpu-host-3', gpuIds: [], job: { id: cpuJob } });
  const waiting = await t.db.getJob(gpuJobs[3]!);
  expect(waiting?.status).toBe('queued');

  // Host 1 frees GPU 1: the waiting job gets that GPU there, not host 3's free slots.
  launched.find((l) => l.host === 'gpu-host-1' && l.gpuIds[0] === '1')!.finish();
  await expect.poll(() => launched.length, { timeout: 30_000 }).toBe(5);
  expect(launched[4]).toMatchObject({ host: 'gpu-host-1', gpuIds: ['1'], job: { id: gpuJobs[3] } });

  for (const l of launched) l.finish();
  await allCompleted(30_000);
  const { rows } = await t.sql.query<{ job_type: string; locked_by: string; attempts: number }>(
    'select job_type, locked_by, attempts from hd_ingestion_jobs',
  );
  for (const row of rows) expect(row.attempts).toBe(1); // none failed for want of a GPU
  expect(rows.filter((r) => r.job_type === 'gpu_probe').map((r) => r.locked_by)).not.toContain(
    'gpu-host-3',
  );
  expect(doubleBooked).toEqual([]);
}, 120_000);
