import { spawn, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createScheduler } from '../cli/commands/scheduler.ts';
import type { ClaimedJob, Job } from '../contract/jobs.ts';
import { configToEnv, loadConfig, type Config } from '../control-plane/config.ts';
import { openDb } from '../control-plane/open.ts';
import { createLogger } from '../control-plane/logger.ts';
import type { Launcher, WarmRunner } from '../scheduler/launcher.ts';
import { ProcessLauncher } from '../scheduler/launchers/process.ts';
import { Scheduler } from '../scheduler/scheduler.ts';
import { GERMAN, textPdf } from './fixtures/documents.ts';
import { extractHarness } from './fixtures/extract-harness.ts';
import { ACCOUNT_A, testConfig } from './helpers/runtime.ts';
import {
  startLocalSupabase,
  type LocalSupabase,
  supabaseSettings,
} from './helpers/supabase-proxy.ts';

// Warm runners (HD_WARM_RUNNERS, process launcher): real `hd-runner run --warm` processes
// started by the scheduler as `hd-runner scheduler` wires it (createScheduler: runner
// credentials scoped to the job, a PostgreSQL role per job), real PostgreSQL, real PDFs.
// What another process of this user can read of a waiting runner is read as it would:
// /proc/PID/environ and /proc/PID/cmdline, by a separate `cat`.
const h = extractHarness();
const schedulers: Scheduler[] = [];
const silent = createLogger({ level: process.env.WARM_DEBUG ? 'debug' : 'silent' });
const env = { PATH: process.env.PATH, HOME: process.env.HOME };

afterEach(async () => {
  await Promise.all(schedulers.splice(0).map((s) => s.stop(0)));
});

function config(overrides: Record<string, string> = {}): Config {
  return testConfig(h.db.url, h.root, {
    HD_SLOTS: '1',
    HD_POLL_INTERVAL_MS: '200',
    ...overrides,
  });
}

async function started(scheduler: Scheduler): Promise<Scheduler> {
  schedulers.push(scheduler);
  await scheduler.start();
  return scheduler;
}

/** An extract_text job of a new one-file document holding `pdf` (warm.pdf). */
async function extractJob(pdf: Buffer, documentId = randomUUID()): Promise<Job> {
  await h.addDocument(
    ACCOUNT_A,
    [{ name: 'warm.pdf', content: pdf, mime: 'application/pdf' }],
    documentId,
  );
  return h.db.db.enqueueJob({
    accountId: ACCOUNT_A,
    jobType: 'extract_text',
    documentId,
    debug: {},
  });
}

/** The job's end, whether its runner was a warm one, and each runner started for it. */
function ended(scheduler: Scheduler, jobId: string) {
  const launches: boolean[] = [];
  scheduler.on('runner:launched', (job, _s, warm) => {
    if (job.id === jobId) launches.push(warm);
  });
  return new Promise<{ job: Job; warm?: boolean; launches: boolean[]; exit: unknown }>(
    (resolve) => {
      scheduler.on('job:finished', (job, exit) => {
        if (job.id === jobId) resolve({ job, warm: launches.at(-1), launches, exit });
      });
    },
  );
}

/** What any process of this user reads of process `pid`: its environment and arguments. */
function seenFromOutside(pid: string): string {
  const read = (file: string) =>
    spawnSync('cat', [`/proc/${pid}/${file}`], { encoding: 'utf8' }).stdout.replaceAll('\0', '\n');
  return `${read('environ')}\n${read('cmdline')}`;
}

const cmdline = (pid: string) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
const stat = (pid: string) => readFileSync(`/proc/${pid}/stat`, 'utf8');
const pidOf = (job: Job) => /^process:(\d+):/.exec(job.container_id ?? '')?.[1];

/** The chunks a job wrote, every column but the ids of rows and document, and times. */
async function chunksOf(documentId: string) {
  const { rows } = await h.db.sql.query(
    `select to_jsonb(c) - 'id' - 'document_id' - 'file_id' - 'asset_id' - 'created_at' - 'updated_at' as chunk
       from hd_asset_chunks c where document_id = $1 order by chunk_index`,
    [documentId],
  );
  return rows;
}

const PDF = textPdf([GERMAN.repeat(3), 'Seite zwei: Grüße aus München.', GERMAN]);

describe('warm runners (process launcher)', () => {
  it('hold no job id, lease or credential before their job; take exactly one; write what a cold runner writes', async () => {
    // Runners share one hd_runner login here (HD_RUNNER_DATABASE_URL): a credential in the
    // environment of every cold runner; a warm one is given it on its stdin.
    const shared = { HD_WARM_RUNNERS: '1', HD_RUNNER_DATABASE_URL: h.db.runnerUrl };
    const password = decodeURIComponent(new URL(h.db.runnerUrl).password);
    expect(password.length).toBeGreaterThan(0);
    const scheduler = createScheduler(config(shared), h.db.db, silent, env);
    const [warmPid] = (await Promise.all([once(scheduler, 'warm:ready'), started(scheduler)]))[0];
    const before = seenFromOutside(warmPid);
    expect(before).toMatch(/--warm/); // it is the waiting runner, and readable
    expect(before).toMatch(/HD_STORAGE_ROOT=/); // with its configuration
    expect(before).not.toContain(password);
    expect(before).not.toMatch(/HD_DATABASE_URL|HD_LEASE_TOKEN|HD_JOB_TOKEN|postgres:\/\//);
    // Nor can such a process hand it a job of its own: its stdin is a socket pair, which
    // /proc/PID/fd/0 does not open (ENXIO), so only the scheduler writes to it.
    const injected = spawnSync('sh', ['-c', `echo '{}' > /proc/${warmPid}/fd/0`], {
      encoding: 'utf8',
    });
    expect(injected.status).not.toBe(0);
    expect(injected.stderr).toMatch(/No such device or address/);
    // Nor acknowledge a job for it on its control channel (fd 3): a socket pair too.
    const acked = spawnSync('sh', ['-c', `echo 'assigned x' > /proc/${warmPid}/fd/3`], {
      encoding: 'utf8',
    });
    expect(acked.status).not.toBe(0);
    expect(acked.stderr).toMatch(/No such device or address/);

    // Held at its chunk write (the table locked), the runner is alive with its job.
    const lock = await h.db.sql.connect();
    let job: Job;
    let end: ReturnType<typeof ended>;
    try {
      await lock.query('begin; lock table hd_asset_chunks in access exclusive mode');
      job = await extractJob(PDF);
      end = ended(scheduler, job.id);
      const [launched] = await once(scheduler, 'runner:launched');
      expect((launched as ClaimedJob).id).toBe(job.id);
      const running = await h.db.db.getJob(job.id);
      expect(pidOf(running!)).toBe(warmPid);
      const during = seenFromOutside(warmPid);
      for (const secret of [job.id, running!.lease_token!, password])
        expect(during).not.toContain(secret);
      expect(during).not.toMatch(/HD_DATABASE_URL|postgres:\/\//);
    } finally {
      await lock.query('commit').finally(() => lock.release());
    }

    const warmRun = await end;
    expect(warmRun).toMatchObject({ warm: true, exit: { exitCode: 0 } });
    expect(warmRun.job).toMatchObject({ status: 'completed', attempts: 1 });
    expect(existsSync(`/proc/${warmPid}`)).toBe(false); // one job, then gone

    // The next job: another runner (warm again once one is ready); never the first.
    const second = await extractJob(PDF);
    const secondRun = await ended(scheduler, second.id);
    expect(secondRun.job.status).toBe('completed');
    expect(pidOf(secondRun.job)).not.toBe(warmPid);

    // The same file through a scheduler without warm runners: the same rows.
    await scheduler.stop(0);
    const cold = await started(
      createScheduler(config({ ...shared, HD_WARM_RUNNERS: '0' }), h.db.db, silent, env),
    );
    const third = await extractJob(PDF);
    const coldRun = await ended(cold, third.id);
    expect(coldRun).toMatchObject({ warm: false, job: { status: 'completed' } });
    const warmChunks = await chunksOf(job.document_id!);
    expect(warmChunks.length).toBeGreaterThan(0);
    expect(await chunksOf(third.document_id!)).toEqual(warmChunks);
    // The job's figures, but its times and the process's memory.
    const TIMES = ['duration_ms', 'parser_peak_rss_mb'];
    const stats = (j: Job) =>
      Object.entries(j.debug.stats as Record<string, unknown>).filter(
        ([key]) => !TIMES.includes(key) && !key.endsWith('_ms'),
      );
    expect(stats(coldRun.job)).toEqual(stats(warmRun.job));
  }, 120_000);

  it('log in before their job with a role of their own (the default), bound to the job they take; none is left', async () => {
    // One connection per runner, heartbeats minutes apart: no second log-in is ever needed.
    const settings = { HD_WARM_RUNNERS: '1', HD_DATABASE_POOL_SIZE: '1', HD_LEASE_SECONDS: '600' };
    const scheduler = createScheduler(config(settings), h.db.db, silent, env);
    const [warmPid] = (await Promise.all([once(scheduler, 'warm:ready'), started(scheduler)]))[0];
    const warmRoles = async () =>
      (
        await h.db.sql.query<{ role_name: string; job_id: string | null }>(
          `select role_name, job_id from hd_private.job_roles where role_name like 'hd\\_job\\_warm\\_%'`,
        )
      ).rows;
    const sessions = async () =>
      (
        await h.db.sql.query<{ usename: string }>(
          `select usename from pg_stat_activity
            where datname = current_database() and usename like 'hd\\_job\\_warm\\_%'`,
        )
      ).rows.map((r) => r.usename);
    // Connected while it waits, with a role bound to no job, named nowhere a process reads.
    await expect.poll(sessions, { timeout: 30_000 }).toHaveLength(1);
    const [waiting] = await warmRoles();
    expect(waiting).toEqual({ role_name: (await sessions())[0], job_id: null });
    expect(seenFromOutside(warmPid)).not.toMatch(/HD_DATABASE_URL|postgres:\/\/|hd_job_warm_/);
    // Its job runs on that connection: no log-in after the hand-over (none would succeed).
    await h.db.sql.query(`alter role "${waiting!.role_name}" nologin`);

    const job = await extractJob(PDF);
    const run = await ended(scheduler, job.id);
    expect(run).toMatchObject({ warm: true, job: { status: 'completed', attempts: 1 } });
    expect(pidOf(run.job)).toBe(warmPid);
    expect((await chunksOf(job.document_id!)).length).toBeGreaterThan(0);
    // Its role went with its job; the next warm runner's, unbound, with the scheduler.
    const roles = await h.db.sql.query('select 1 from pg_roles where rolname = $1', [
      waiting!.role_name,
    ]);
    expect(roles.rows).toEqual([]);
    await scheduler.stop(0);
    expect(await warmRoles()).toEqual([]);
  }, 120_000);

  it('a warm runner killed before its job costs the job nothing', async () => {
    // Killed while it waits: the scheduler starts another.
    const scheduler = createScheduler(config({ HD_WARM_RUNNERS: '1' }), h.db.db, silent, env);
    const [first] = (await Promise.all([once(scheduler, 'warm:ready'), started(scheduler)]))[0];
    const replaced = once(scheduler, 'warm:ready');
    process.kill(Number(first), 'SIGKILL');
    expect(await once(scheduler, 'warm:ended')).toEqual([first]);
    const [second] = await replaced;
    const job = await extractJob(PDF);
    const run = await ended(scheduler, job.id);
    expect(run).toMatchObject({ warm: true, job: { status: 'completed', attempts: 1 } });
    expect(pidOf(run.job)).toBe(second);
  }, 120_000);

  it('a warm runner killed as it is handed its job: the job goes to a cold runner, no attempt spent', async () => {
    const cfg = config();
    const launcher = new ProcessLauncher({ env: { PATH: env.PATH ?? '', ...configToEnv(cfg) } });
    // Killed the moment the scheduler hands it a job, before it could read it.
    const killing: Launcher = {
      launch: (request) => launcher.launch(request),
      prestart: async (): Promise<WarmRunner> => {
        const warm = await launcher.prestart();
        return {
          ...warm,
          assign: (request) => {
            process.kill(Number(warm.id), 'SIGKILL');
            return warm.assign(request);
          },
        };
      },
    };
    const scheduler = new Scheduler({
      db: h.db.db,
      launcher: killing,
      config: cfg,
      log: silent,
      warmRunners: 1,
    });
    await Promise.all([once(scheduler, 'warm:ready'), started(scheduler)]);
    const job = await extractJob(PDF);
    const run = await ended(scheduler, job.id);
    // One runner for the job, the cold one: it was not handed back and run again.
    expect(run).toMatchObject({
      launches: [false],
      job: { status: 'completed', attempts: 1, error: null },
    });
  }, 120_000);

  it('a warm runner stopped (SIGSTOP) by another process of its user: its job goes to a cold runner, no attempt spent', async () => {
    // Red team: a compromised process runner (same uid) stops the waiting runner, so that
    // the next job is handed to a process that never acknowledges it.
    const cfg = config();
    const scheduler = new Scheduler({
      db: h.db.db,
      launcher: new ProcessLauncher({
        env: { PATH: env.PATH ?? '', ...configToEnv(cfg) },
        warmAckMs: 3000,
      }),
      config: cfg,
      log: silent,
      warmRunners: 1,
    });
    const [stoppedPid] = (
      await Promise.all([once(scheduler, 'warm:ready'), started(scheduler)])
    )[0];
    expect(spawnSync('kill', ['-STOP', stoppedPid]).status).toBe(0);
    await expect.poll(() => stat(stoppedPid)).toMatch(/\) T /);
    const job = await extractJob(PDF);
    const run = await ended(scheduler, job.id);
    expect(run).toMatchObject({
      launches: [false],
      job: { status: 'completed', attempts: 1, error: null },
    });
    expect(pidOf(run.job)).not.toBe(stoppedPid);
    // Killed, not left stopped with the job's credentials in its stdin buffer.
    await expect
      .poll(() => existsSync(`/proc/${stoppedPid}`) && !/\) Z /.test(stat(stoppedPid)))
      .toBe(false);
  }, 120_000);

  it('a killed `hd-runner scheduler`: its waiting warm runner exits, the next scheduler removes its output file', async () => {
    const cfg = config({ HD_WARM_RUNNERS: '1', HD_WORKER_ID: 'warm-killed' });
    const first = spawn(process.execPath, ['cli/main.ts', 'scheduler'], {
      env: { ...env, ...configToEnv(cfg) },
      stdio: 'ignore',
    });
    const childrenOf = (pid: number) =>
      readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(' ').filter(Boolean);
    let warmPid = '';
    await expect
      .poll(() => (warmPid = childrenOf(first.pid!).find((c) => /--warm/.test(cmdline(c))) ?? ''), {
        timeout: 60_000,
      })
      .not.toBe('');
    const outputDir = join(cfg.HD_RUNNER_OUTPUT_DIR, encodeURIComponent('warm-killed'));
    await expect
      .poll(async () => (await readdir(outputDir)).filter((f) => f.startsWith('warm-')))
      .toHaveLength(1);
    const [leftFile] = (await readdir(outputDir)).filter((f) => f.startsWith('warm-'));
    first.kill('SIGKILL');
    // Its stdin's other end died with the scheduler: it exits without a job.
    await expect
      .poll(() => existsSync(`/proc/${warmPid}`) && !/ Z /.test(stat(warmPid)), { timeout: 60_000 })
      .toBe(false);
    const next = await started(createScheduler(cfg, h.db.db, silent, env));
    expect(next).toBeDefined();
    expect(await readdir(outputDir)).not.toContain(leftFile);
  }, 120_000);

  it('a warm runner ends by itself: past its idle limit, when its stdin closes (its scheduler gone), when its scheduler stops (killed if frozen)', async () => {
    const cfg = config();
    const base = { PATH: env.PATH ?? '', ...configToEnv(cfg) };
    const idle = await new ProcessLauncher({ env: base, warmIdleMs: 1 }).prestart();
    expect(await idle.ready).toBe(true);
    await idle.ended;
    expect(existsSync(`/proc/${idle.id}`)).toBe(false);

    const orphan = await new ProcessLauncher({ env: base }).prestart();
    expect(await orphan.ready).toBe(true);
    orphan.discard(); // what the kernel does to the pipe when the scheduler dies
    await orphan.ended;
    expect(existsSync(`/proc/${orphan.id}`)).toBe(false);

    // Two warm runners; one frozen (SIGSTOP) cannot read its stdin's end: killed.
    const scheduler = new Scheduler({
      db: h.db.db,
      launcher: new ProcessLauncher({ env: base, killGraceMs: 200 }),
      config: { ...cfg, HD_SLOTS: 2 },
      log: silent,
      warmRunners: 2,
    });
    const ready: string[] = [];
    const bothReady = new Promise<void>((resolve) =>
      scheduler.on('warm:ready', (id) => ready.push(id) === 2 && resolve()),
    );
    await Promise.all([bothReady, started(scheduler)]);
    process.kill(Number(ready[0]), 'SIGSTOP');
    await scheduler.stop(0);
    for (const pid of ready) expect(existsSync(`/proc/${pid}`)).toBe(false);
  }, 120_000);

  describe('on the supabase transport (PostgREST, the Storage stand-in)', () => {
    let supabase: LocalSupabase;
    beforeAll(async () => {
      supabase = await startLocalSupabase(h.db.url);
      await supabase.storage.createBucket('hd_uploads_raw');
    }, 60_000);
    afterAll(() => supabase?.stop());

    it('a warm runner is given its job token and signed URLs with its job, never in its environment', async () => {
      const cfg = loadConfig({
        ...supabaseSettings(supabase),
        HD_RUNNER_OUTPUT_DIR: `${h.root}.warm-supabase-output`,
        HD_WORKER_ID: 'warm-supabase',
        HD_SLOTS: '1',
        HD_POLL_INTERVAL_MS: '200',
        HD_WARM_RUNNERS: '1',
        HD_LOG_LEVEL: 'silent',
      });
      const db = openDb(cfg);
      try {
        const scheduler = createScheduler(cfg, db, silent, env);
        const [warmPid] = (
          await Promise.all([once(scheduler, 'warm:ready'), started(scheduler)])
        )[0];
        const before = seenFromOutside(warmPid);
        expect(before).toContain(`SUPABASE_URL=${supabase.url}`);
        expect(before).not.toContain(supabase.serviceRoleKey);
        expect(before).not.toContain(supabase.postgrest.jwtSecret);
        expect(before).not.toMatch(/HD_JOB_TOKEN|HD_JOB_STORAGE_URLS|SERVICE_ROLE/);

        // The document's file where the runner reads it: Storage (its row says hd_uploads_raw).
        const documentId = randomUUID();
        const key = `accounts/${ACCOUNT_A}/documents/${documentId}/warm.pdf`;
        await supabase.storage.putObject('hd_uploads_raw', key, PDF, 'application/pdf');
        const job = await extractJob(PDF, documentId);
        const run = await ended(scheduler, job.id);
        expect(run).toMatchObject({ launches: [true], job: { status: 'completed', attempts: 1 } });
        expect(pidOf(run.job)).toBe(warmPid);
        expect((await chunksOf(documentId)).length).toBeGreaterThan(0);
      } finally {
        await Promise.all(schedulers.splice(0).map((s) => s.stop(0)));
        await db.close();
      }
    }, 120_000);
  });
});
