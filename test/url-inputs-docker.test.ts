import { randomBytes } from 'node:crypto';
import { on } from 'node:events';
import { chmod } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { importByUrl } from '../cli/commands/enqueue.ts';
import { createScheduler } from '../cli/commands/scheduler.ts';
import type { Job } from '../contract/jobs.ts';
import { createLogger } from '../control-plane/logger.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { removeContainersOf, requireDocker, skipNote, testImage } from './helpers/docker.ts';
import { ACCOUNT_A, tempDir, testConfig } from './helpers/runtime.ts';
import {
  ASSETS,
  SERVER_HOST,
  startUrlServer,
  startVictim,
  type UrlServer,
} from './helpers/url-server.ts';

// An input by URL under the docker launcher, as `hd-runner scheduler` builds it: the
// scheduler fetches and stores the file (the local server on 127.0.0.2 stands in for the
// tenant's), and the runner container, holding only its job's role and its account's
// folder mounted read-only, imports the stored object.
const d = await requireDocker();
const SCHEDULER_ID = `hd-test-url-${randomBytes(4).toString('hex')}`;
let t: TestDatabase;
let root: string;
let image: string;
let server: UrlServer;
let victim: UrlServer;

beforeAll(async () => {
  if (!d.available) return;
  [image, t, root] = await Promise.all([testImage(d.docker), createTestDatabase(), tempDir()]);
  await chmod(root, 0o755); // runner containers read it as uid 1000
  victim = await startVictim();
  server = await startUrlServer(victim.port);
}, 900_000);
afterAll(async () => {
  if (!d.available) return;
  server?.close();
  victim?.close();
  await removeContainersOf(d.docker, [SCHEDULER_ID]);
  await t?.drop();
});

describe.skipIf(!d.available)(`inputs by URL, docker launcher${skipNote(d)}`, () => {
  it('stores the fetched file where the runner container reads it through its mount', async () => {
    const config = testConfig(t.url, root, {
      HD_WORKER_ID: SCHEDULER_ID,
      HD_LAUNCHER: 'docker',
      HD_DOCKER_IMAGE: image,
      // Embedded PostgreSQL listens on 127.0.0.1 only: the runners share the host network.
      HD_DOCKER_NETWORK: 'host',
      HD_POLL_INTERVAL_MS: '200',
      HD_URL_INPUT_ALLOW_CIDRS: `${SERVER_HOST}/32`,
    });
    const scheduler = createScheduler(config, t.db, createLogger({ level: 'silent' }), {
      PATH: process.env.PATH,
    });
    await scheduler.start();
    try {
      const { id } = await t.db.enqueueJob({
        accountId: ACCOUNT_A,
        ...importByUrl(config, { url: `${server.origin}/hop` }),
      });
      let job: Job | undefined;
      for await (const [ended] of on(scheduler, 'job:finished'))
        if ((ended as Job).id === id) {
          job = ended as Job;
          break;
        }
      expect(job).toMatchObject({ status: 'completed', attempts: 1 });
      expect(job?.container_id).toBeTruthy();
      expect(job?.debug.url_input).toMatchObject({
        path: `accounts/${ACCOUNT_A}/url-inputs/${id}/assets.jsonl`,
      });
      expect(job?.debug.stats).toMatchObject({ valid: ASSETS.length, inserted: ASSETS.length });
      expect(server.requests.filter((p) => p === '/assets.jsonl')).toHaveLength(1);
    } finally {
      await scheduler.stop(0);
    }
  });
});
