import { on } from 'node:events';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Job } from '../contract/jobs.ts';
import type { WakeReason } from '../control-plane/db/transport.ts';
import { configToEnv, type Config } from '../control-plane/config.ts';
import { createLogger } from '../control-plane/logger.ts';
import { ProcessLauncher } from '../scheduler/launchers/process.ts';
import { Scheduler } from '../scheduler/scheduler.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, ACCOUNT_B, jsonl, putObject, tempDir, testConfig } from './helpers/runtime.ts';

let t: TestDatabase;
let root: string;
let config: Config;
const running: Scheduler[] = [];

beforeAll(async () => {
  t = await createTestDatabase();
  root = await tempDir();
  config = testConfig(t.url, root, { HD_POLL_INTERVAL_MS: '200', HD_SLOTS: '2' });
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.stop(0)));
  // A job a test leaves queued (handed back, retry pending) must not be claimed by the
  // next test's scheduler: it would take a slot and fire that test's events.
  for (const status of ['queued', 'running'])
    for (const job of await t.db.listJobs({ status, limit: 1000 }))
      await t.db.cancelJob(job.id, 'left over by an earlier test');
});
afterAll(() => t.drop());

/** A scheduler on the real process launcher; `command` replaces the runner for crash tests. */
async function startScheduler(command?: string[], overrides: Partial<Config> = {}) {
  const cfg = { ...config, ...overrides };
  const launcher = new ProcessLauncher({
    env: { PATH: process.env.PATH ?? '', ...configToEnv(cfg) },
    command,
    killGraceMs: 2000,
  });
  const scheduler = new Scheduler({
    db: t.db,
    launcher,
    config: cfg,
    log: createLogger({ level: 'silent' }),
  });
  running.push(scheduler);
  await scheduler.start();
  return scheduler;
}

/** The next `event` of this job (`job:finished` whatever its status), with its other arguments. */
async function next(scheduler: Scheduler, event: string, jobId: string): Promise<[Job, unknown]> {
  for await (const [job, exit] of on(scheduler, event))
    if ((job as Job).id === jobId) return [job as Job, exit];
  throw new Error('unreachable: the event stream does not end');
}

function finished(scheduler: Scheduler, jobIds: string[]): Promise<Map<string, Job>> {
  const ended = new Map<string, Job>();
  return new Promise((resolve) => {
    scheduler.on('job:finished', (job) => {
      if (jobIds.includes(job.id) && (job.status === 'completed' || job.status === 'failed'))
        ended.set(job.id, job);
      if (ended.size === jobIds.length) resolve(ended);
    });
  });
}

async function enqueueImport(accountId: string, name: string, rows: unknown[], maxAttempts = 3) {
  const path = `accounts/${accountId}/assets-jsonl/${name}`;
  await putObject(root, 'hd_uploads_raw', path, jsonl(rows));
  return t.db.enqueueJob({
    accountId,
    jobType: 'import_assets_jsonl',
    debug: { bucket: 'hd_uploads_raw', path },
    maxAttempts,
  });
}

/** A job for a stand-in runner (the command replaces hd-runner, so the payload is unread). */
function enqueueForStandIn(maxAttempts?: number) {
  return t.db.enqueueJob({
    accountId: ACCOUNT_A,
    jobType: 'import_assets_jsonl',
    debug: { path: 'x' },
    maxAttempts,
  });
}

// A stand-in runner that never finishes, for cancel and shutdown.
const HANGING_RUNNER = [process.execPath, '-e', 'setInterval(() => {}, 1000)'];
/** A stand-in runner that prints `lines` (JS expressions), then runs `then`. */
const printing = (lines: string[], then: string) => [
  process.execPath,
  '-e',
  `${lines.map((l) => `console.log(${l});`).join(' ')} ${then}`,
];

/** What hd_job_logs holds for a job, in order. */
async function jobLogs(jobId: string) {
  const { rows } = await t.sql.query(
    `select account_id, attempt, seq, level, message, fields from hd_job_logs
      where job_id = $1 order by attempt, seq`,
    [jobId],
  );
  return rows as {
    account_id: string;
    attempt: number;
    seq: number;
    level: string;
    message: string;
    fields: Record<string, unknown> | null;
  }[];
}

describe('scheduler with the process launcher', () => {
  it('runs queued jobs of two tenants end to end in child runners', async () => {
    const a = await enqueueImport(ACCOUNT_A, 'a.jsonl', [
      { title: 'A1', source_type: 'upload', source_ref: 'a1' },
      { title: 'A2', source_type: 'upload', source_ref: 'a2' },
    ]);
    const b = await enqueueImport(ACCOUNT_B, 'b.jsonl', [
      { title: 'B1', source_type: 'upload', source_ref: 'b1', account_id: ACCOUNT_A },
    ]);
    const scheduler = await startScheduler();
    const ended = await finished(scheduler, [a.id, b.id]);
    expect(ended.get(a.id)).toMatchObject({
      status: 'completed',
      attempts: 1,
      progress_percent: 100,
    });
    expect(ended.get(a.id)!.debug.stats).toMatchObject({ lines: 2, inserted: 2, invalid: 0 });
    expect(ended.get(b.id)!.debug.stats).toMatchObject({
      lines: 1,
      inserted: 1,
      account_id_ignored: 1,
    });
    const { rows } = await t.sql.query(
      `select account_id, source_ref from hd_assets where source_ref in ('a1','a2','b1') order by source_ref`,
    );
    expect(rows).toEqual([
      { account_id: ACCOUNT_A, source_ref: 'a1' },
      { account_id: ACCOUNT_A, source_ref: 'a2' },
      { account_id: ACCOUNT_B, source_ref: 'b1' },
    ]);
  });

  it('fails a job of an unknown type with UNKNOWN_JOB_TYPE, at once', async () => {
    const job = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'make_coffee', debug: {} });
    const scheduler = await startScheduler();
    const ended = await finished(scheduler, [job.id]);
    expect(ended.get(job.id)).toMatchObject({
      status: 'failed',
      attempts: 1,
      error_code: 'UNKNOWN_JOB_TYPE',
    });
    expect(ended.get(job.id)!.error).toMatch(/make_coffee/);
  });

  it('records CRASHED with the exit code and output when a runner dies without a result', async () => {
    const job = await enqueueForStandIn(1);
    const scheduler = await startScheduler([
      process.execPath,
      '-e',
      'console.error("segfault-ish"); process.exit(3)',
    ]);
    const ended = await finished(scheduler, [job.id]);
    expect(ended.get(job.id)).toMatchObject({ status: 'failed', error_code: 'CRASHED' });
    expect(ended.get(job.id)!.error_details).toMatchObject({
      exit_code: 3,
      output_tail: ['segfault-ish'],
    });
  });

  it('retries a crashed job with backoff while attempts remain', async () => {
    const job = await enqueueForStandIn(2);
    const scheduler = await startScheduler([process.execPath, '-e', 'process.exit(3)']);
    const [after] = await next(scheduler, 'job:finished', job.id);
    expect(after).toMatchObject({
      id: job.id,
      status: 'queued',
      attempts: 1,
      error_code: 'CRASHED',
    });
    // Later than the failure itself (not than the clock: a busy machine may be slower).
    expect(after.run_after.getTime()).toBeGreaterThan(after.updated_at.getTime() + 2000);
  });

  it('stops the runner of a job cancelled while it runs', async () => {
    const job = await enqueueForStandIn();
    const scheduler = await startScheduler(HANGING_RUNNER);
    await expect.poll(() => scheduler.runningJobIds).toContain(job.id);
    const done = next(scheduler, 'job:finished', job.id);
    await t.db.cancelJob(job.id, 'no longer needed');
    const [ended, exit] = await done;
    expect(ended).toMatchObject({
      status: 'failed',
      error_code: 'CANCELLED',
      error: 'no longer needed',
    });
    expect(exit).toMatchObject({ stoppedFor: 'cancelled', exitCode: null, signal: 'SIGTERM' });
  });

  it('stops the runner of a job cancelled while its runner was being launched', async () => {
    // The cancel notice (a NOTIFY) lands while the launcher is still starting the runner:
    // this test holds the real notices back and delivers one inside launch(), so the
    // order is the test's, not the machine's load's (it flaked that way in the full suite).
    const job = await enqueueForStandIn();
    let deliver: ((reason: WakeReason) => void) | undefined;
    const listen: typeof t.db.listen = (onWake) => {
      deliver = onWake;
      return t.db.listen((reason) => {
        if (reason.kind !== 'cancelled' || reason.jobId !== job.id) onWake(reason);
      });
    };
    const db = new Proxy(t.db, {
      get: (target, key) =>
        key === 'listen'
          ? listen
          : (Reflect.get(target, key) as unknown) instanceof Function
            ? (Reflect.get(target, key) as (...a: unknown[]) => unknown).bind(target)
            : Reflect.get(target, key),
    });
    const launcher = new ProcessLauncher({
      env: { PATH: process.env.PATH ?? '', ...configToEnv(config) },
      command: HANGING_RUNNER,
      killGraceMs: 2000,
    });
    const launch = launcher.launch.bind(launcher);
    launcher.launch = async (request) => {
      await t.db.cancelJob(request.job.id, 'cancelled during launch');
      deliver?.({ kind: 'cancelled', jobId: request.job.id });
      return launch(request);
    };
    const scheduler = new Scheduler({
      db,
      launcher,
      config,
      log: createLogger({ level: 'silent' }),
    });
    running.push(scheduler);
    const done = next(scheduler, 'job:finished', job.id);
    await scheduler.start();
    const [ended, exit] = await done;
    expect(ended).toMatchObject({ status: 'failed', error_code: 'CANCELLED' });
    expect(exit).toMatchObject({ stoppedFor: 'cancelled', signal: 'SIGTERM' });
  });

  it('hands running jobs back to the queue when stopped without grace', async () => {
    const job = await enqueueForStandIn();
    const scheduler = await startScheduler(HANGING_RUNNER);
    await expect.poll(() => scheduler.runningJobIds).toContain(job.id);
    await scheduler.stop(0);
    expect(await t.db.getJob(job.id)).toMatchObject({
      status: 'queued',
      attempts: 0,
      lease_token: null,
    });
  });

  it("stores the runner's log lines in hd_job_logs, to the last one", async () => {
    const job = await enqueueImport(ACCOUNT_B, 'logged.jsonl', [
      { title: 'L', source_type: 'upload', source_ref: 'logged-1' },
    ]);
    const scheduler = await startScheduler(undefined, { HD_LOG_LEVEL: 'info' });
    const done = (await finished(scheduler, [job.id])).get(job.id)!;
    expect(done.status).toBe('completed');
    const lines = await jobLogs(job.id);
    expect(lines.map((l) => [l.account_id, l.attempt, l.seq])).toEqual(
      lines.map((_, i) => [ACCOUNT_B, 1, i + 1]),
    );
    // pino's level, msg and time become columns; the rest of the line is kept as fields.
    expect(lines.find((l) => l.message === 'job started')).toMatchObject({
      level: 'info',
      fields: { job_id: job.id, attempt: 1, name: 'runner' },
    });
    // Printed after the runner completed the job, so after its lease ended: kept as well.
    expect(lines.at(-1)).toMatchObject({
      message: 'job completed',
      fields: { stats: { lines: 1 } },
    });
    const { rows } = await t.sql.query(
      'select ended_lease_token from hd_ingestion_jobs where id = $1',
      [job.id],
    );
    expect(JSON.stringify(lines)).not.toContain(rows[0].ended_lease_token);
  });

  it("keeps a crashed runner's output, and each attempt's lines apart", async () => {
    const job = await enqueueForStandIn(2);
    const pino = 'JSON.stringify({ level: 40, time: Date.now(), msg: "about to crash", n: 1 })';
    const scheduler = await startScheduler(printing([pino, '"boom"'], 'process.exit(3)'));
    const [first] = await next(scheduler, 'job:finished', job.id);
    expect(first).toMatchObject({ status: 'queued', attempts: 1, error_code: 'CRASHED' });
    const second = finished(scheduler, [job.id]);
    await t.sql.query('update hd_ingestion_jobs set run_after = now() where id = $1', [job.id]);
    expect((await second).get(job.id)).toMatchObject({ status: 'failed', attempts: 2 });
    const attempt = (n: number) => [
      { account_id: ACCOUNT_A, attempt: n, seq: 1, level: 'warn', message: 'about to crash' },
      { account_id: ACCOUNT_A, attempt: n, seq: 2, level: 'info', message: 'boom' },
    ];
    const lines = await jobLogs(job.id);
    expect(lines).toMatchObject([...attempt(1), ...attempt(2)]);
    expect(lines[0]!.fields).toEqual({ n: 1 });
    expect(lines[1]!.fields).toBeNull();
  });

  it('numbers the lines of a handed-back attempt on after those already stored', async () => {
    const job = await enqueueForStandIn(1);
    const first = await startScheduler(printing(['"run one"'], 'setInterval(() => {}, 1000)'));
    await expect.poll(() => jobLogs(job.id), { timeout: 10_000 }).toHaveLength(1);
    await first.stop(0); // the runner is stopped, the job handed back: attempt 1 again
    expect(await t.db.getJob(job.id)).toMatchObject({ status: 'queued', attempts: 0 });
    const second = await startScheduler(printing(['"run two"'], 'process.exit(3)'));
    await finished(second, [job.id]);
    expect(await jobLogs(job.id)).toMatchObject([
      { attempt: 1, seq: 1, message: 'run one' },
      { attempt: 1, seq: 2, message: 'run two' },
    ]);
  });

  it('reaps a job whose worker vanished, on start', async () => {
    const job = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'orphan_probe', debug: {} });
    await t.sql.query(
      `select * from hd_claim_jobs('vanished-worker', null, 1, 60, $1, now() - interval '2 minutes')`,
      [job.id],
    );
    const scheduler = new Scheduler({
      db: t.db,
      launcher: new ProcessLauncher({ env: {} }),
      config: { ...config, HD_JOB_TYPES: ['nothing_to_claim'] },
      log: createLogger({ level: 'silent' }),
    });
    const reaped = next(scheduler, 'job:reaped', job.id);
    running.push(scheduler);
    await scheduler.start();
    const [job2] = await reaped;
    expect(job2).toMatchObject({ id: job.id, status: 'queued', error_code: 'LEASE_EXPIRED' });
  });
});
