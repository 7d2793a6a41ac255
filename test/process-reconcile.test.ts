import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { ClaimedJob, Job } from '../contract/jobs.ts';
import { configToEnv } from '../control-plane/config.ts';
import { join } from 'node:path';
import { OutputFiles } from '../scheduler/launchers/output-file.ts';
import { ProcessLauncher } from '../scheduler/launchers/process.ts';
import { ProcessReconciler } from '../scheduler/process-reconcile.ts';
import { Scheduler } from '../scheduler/scheduler.ts';
import { GERMAN, renderGray, textPdf } from './fixtures/documents.ts';
import { extractHarness } from './fixtures/extract-harness.ts';
import { makePdf } from './fixtures/make-pdf.ts';
import { ACCOUNT_A, memoryLogger, testConfig } from './helpers/runtime.ts';

// Real PostgreSQL, real `hd-runner scheduler` and runners (child processes) on a scanned
// PDF long enough to OCR that the runners are mid-job when their scheduler is killed.
const h = extractHarness();
const WORKER = 'process-reconcile-test';

/** Whether a process runs (a zombie does not). */
function runs(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

describe('process launcher after its scheduler was SIGKILLed', () => {
  it('stops the runners left behind before claiming, and the jobs lose no attempt', async () => {
    const scan = renderGray(textPdf([GERMAN]), h.work);
    const pdf = makePdf(Array.from({ length: 40 }, () => scan));
    const jobs: Job[] = [];
    for (const name of ['left-1.pdf', 'left-2.pdf']) {
      const doc = await h.addDocument(ACCOUNT_A, [{ name, content: pdf }]);
      jobs.push(
        await h.db.db.enqueueJob({
          accountId: ACCOUNT_A,
          jobType: 'extract_text',
          documentId: doc,
          debug: {},
        }),
      );
    }
    const config = testConfig(h.db.url, h.root, {
      HD_SLOTS: '2',
      HD_WORKER_ID: WORKER,
      HD_POLL_INTERVAL_MS: '200',
      HD_LOG_LEVEL: 'info', // runners print, and their lines must reach hd_job_logs
    });
    const env = { PATH: process.env.PATH ?? '', ...configToEnv(config) };
    const first = spawn(process.execPath, ['cli/main.ts', 'scheduler', '--launcher', 'process'], {
      env,
      stdio: 'ignore',
    });
    const recorded = async () =>
      Promise.all(jobs.map(async (j) => (await h.db.db.getJob(j.id))?.container_id ?? ''));
    await expect
      .poll(async () => (await recorded()).every((id) => id.startsWith('process:')), {
        timeout: 60_000,
      })
      .toBe(true);
    // Mid-job: both runners have started their job (and OCR for a while yet).
    await expect
      .poll(
        async () =>
          (
            await h.db.sql.query(
              `select count(*)::int as n from hd_job_logs where message = 'job started' and job_id = any ($1)`,
              [jobs.map((j) => j.id)],
            )
          ).rows[0].n,
        { timeout: 60_000 },
      )
      .toBe(2);
    const pids = (await recorded()).map((id) => Number(id.split(':')[1]));
    const exited = new Promise((resolve) => first.once('exit', resolve));
    first.kill('SIGKILL');
    await exited;
    expect(pids.filter(runs)).toHaveLength(2); // orphaned, still working

    const { log, lines } = memoryLogger('info');
    // The same output folder as the killed scheduler's (what `hd-runner scheduler` uses).
    const outputFiles = new OutputFiles(join(config.HD_RUNNER_OUTPUT_DIR, WORKER));
    const launcher = new ProcessLauncher({ env, db: h.db.db, killGraceMs: 2000, outputFiles });
    const second = new Scheduler({
      db: h.db.db,
      launcher,
      reconciler: new ProcessReconciler({
        db: h.db.db,
        schedulerId: WORKER,
        log,
        outputFiles,
        watching: launcher.watching,
      }),
      config,
      log,
    });
    const claims: { job: ClaimedJob; orphansRunning: number }[] = [];
    const reclaimed = new Promise<void>((resolve) =>
      second.on('job:claimed', (job) => {
        claims.push({ job, orphansRunning: pids.filter(runs).length });
        if (claims.length === 2) resolve();
      }),
    );
    try {
      await second.start();
      await reclaimed;
      // Each job claimed again only after the runners left behind were gone, with its
      // attempt refunded (the runner handed it back on SIGTERM).
      expect(claims.map((c) => c.orphansRunning)).toEqual([0, 0]);
      expect(claims.map((c) => c.job.attempts)).toEqual([1, 1]);
      expect(lines.filter((l) => l.includes('a previous scheduler left'))).toHaveLength(2);
      // Their output outlived the killed scheduler: what they printed unwatched (handing
      // the job back on SIGTERM) is stored, each line once, numbered as it was printed.
      for (const job of jobs) {
        const { rows } = await h.db.sql.query<{ seq: number; message: string }>(
          'select seq, message from hd_job_logs where job_id = $1 and attempt = 1 order by seq',
          [job.id],
        );
        // (The attempt was refunded: the next run's lines follow as attempt 1 too.)
        const end = rows.findIndex((r) => r.message === 'job handed back to the queue');
        expect(end).toBeGreaterThan(0);
        const orphaned = rows.slice(0, end + 1);
        expect(orphaned.filter((r) => r.message === 'job started')).toHaveLength(1);
        expect(orphaned.map((r) => r.seq)).toEqual(orphaned.map((_, i) => i + 1));
      }
    } finally {
      await second.stop(0);
    }
  }, 180_000);
});
