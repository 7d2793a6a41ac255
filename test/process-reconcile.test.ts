import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { Job } from '../contract/jobs.ts';
import { configToEnv } from '../control-plane/config.ts';
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
      HD_OCR_DPI: '600',
      HD_SLOTS: '2',
      HD_WORKER_ID: WORKER,
      HD_POLL_INTERVAL_MS: '200',
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
    const pids = (await recorded()).map((id) => Number(id.split(':')[1]));
    const exited = new Promise((resolve) => first.once('exit', resolve));
    first.kill('SIGKILL');
    await exited;
    expect(pids.filter(runs)).toHaveLength(2); // orphaned, still working

    const { log, lines } = memoryLogger('info');
    const second = new Scheduler({
      db: h.db.db,
      launcher: new ProcessLauncher({ env, db: h.db.db, killGraceMs: 2000 }),
      reconciler: new ProcessReconciler({ db: h.db.db, schedulerId: WORKER, log }),
      config,
      log,
    });
    const claims: { job: Job; orphansRunning: number }[] = [];
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
    } finally {
      await second.stop(0);
    }
  }, 180_000);
});
