import { on } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job, LeasedJob } from '../contract/jobs.ts';
import { handlerResources } from '../runner/handlers/index.ts';
import { DockerLauncher, LABELS } from '../scheduler/launchers/docker.ts';
import { DockerReconciler } from '../scheduler/reconcile.ts';
import { Scheduler } from '../scheduler/scheduler.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { requireDocker, skipNote } from './helpers/docker.ts';
import { ACCOUNT_A, memoryLogger, tempDir, testConfig } from './helpers/runtime.ts';

// Real PostgreSQL and Docker engine. The runner is a stand-in that exits 3 (a crash the
// scheduler records), so the job shows whether its container ran and was watched.
const d = await requireDocker();
const SCHEDULER_ID = `created-test-${process.pid}`;
let t: TestDatabase;
beforeAll(async () => {
  t = await createTestDatabase();
});
afterAll(async () => {
  await t?.drop();
  const left = await d.docker?.listContainers({
    all: true,
    filters: { label: [`${LABELS.schedulerId}=${SCHEDULER_ID}`] },
  });
  for (const c of left ?? []) await d.docker!.getContainer(c.Id).remove({ force: true });
});

describe.skipIf(!d.available)(
  `reconcile of a container created, never started${skipNote(d)}`,
  () => {
    it('starts it on the scheduler start, before claiming, and watches it to the end', async () => {
      const config = testConfig(t.url, await tempDir(), {
        HD_WORKER_ID: SCHEDULER_ID,
        HD_POLL_INTERVAL_MS: '200',
      });
      const launcher = new DockerLauncher({
        db: t.db,
        docker: d.docker,
        schedulerId: SCHEDULER_ID,
        image: 'hd-base/node:24-bookworm-slim',
        command: ['node', '-e', 'process.exit(3)'],
        env: {},
        killGraceMs: 2000,
      });
      // The scheduler before was killed between recording the container and starting it.
      const queued = await t.db.enqueueJob({
        accountId: ACCOUNT_A,
        jobType: 'import_assets_jsonl',
        debug: { path: 'x' },
      });
      const [claimed] = await t.db.claimJobs({
        workerId: SCHEDULER_ID,
        leaseSeconds: 60,
        jobId: queued.id,
      });
      const job = claimed as LeasedJob;
      const request = { job, resources: handlerResources(job.job_type) };
      const container = await d.docker!.createContainer(launcher.createOptions(request));
      await t.db.setContainerId(job.id, job.lease_token, container.id);

      const { log } = memoryLogger('info');
      const reconciler = new DockerReconciler({
        launcher,
        db: t.db,
        schedulerId: SCHEDULER_ID,
        log,
        resourcesFor: handlerResources,
      });
      const scheduler = new Scheduler({ db: t.db, launcher, config, log, reconciler });
      const finished = (async () => {
        for await (const [ended] of on(scheduler, 'job:finished'))
          if ((ended as Job).id === job.id) return ended as Job;
        throw new Error('unreachable');
      })();
      try {
        await scheduler.start();
        expect(await finished).toMatchObject({
          status: 'queued',
          attempts: 1,
          error_code: 'CRASHED',
        });
      } finally {
        await scheduler.stop(0);
      }
    }, 60_000);
  },
);
