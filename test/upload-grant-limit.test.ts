import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LeasedJob } from '../contract/jobs.ts';
import { jobOutputPrefix, OUTPUTS_BUCKET } from '../contract/storage-paths.ts';
import { loadConfig } from '../control-plane/config.ts';
import { supabaseUrlSigner } from '../control-plane/storage/signed-urls.ts';
import { handlerResources } from '../runner/handlers/index.ts';
import { DockerLauncher } from '../scheduler/launchers/docker.ts';
import { RunnerAccess } from '../scheduler/runner-access.ts';
import { uploadGrantsFor, type UploadGrants } from '../scheduler/upload-grants.ts';
import { grantFloodScript } from './helpers/attack-grant-flood-script.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import {
  containersOf,
  removeContainersOf,
  requireDocker,
  skipNote,
  testImage,
} from './helpers/docker.ts';
import { ACCOUNT_B, memoryLogger } from './helpers/runtime.ts';
import {
  startLocalSupabase,
  type LocalSupabase,
  supabaseSettings,
} from './helpers/supabase-proxy.ts';
import type { StorageRequest } from './helpers/storage-server.ts';

// Red team of the upload grants' limits (docs/containers.md, residual risks): code that took
// over tenant B's runner, in a runner-image container with its job's credentials, begins 20
// empty artifacts and asks for a grant 5 times for each (test/helpers/attack-grant-flood-
// script.ts); each grant the scheduler signs costs a Storage remove and sign. Then the same
// container runs the honest runner of that job, whose artifacts must still be stored.
// PostgREST is the real server; Storage is the stand-in (it cannot run here): it counts
// the requests the scheduler made.

const d = await requireDocker();
const docker = d.docker!;
const SCHEDULER_ID = `hd-grantlim-${randomBytes(4).toString('hex')}`;
const RATE = 2; // grants a second per lease
const BURST = 5;
const KEYS = 20;
const ASKS = 5;

let t: TestDatabase;
let supabase: LocalSupabase;
let grants: UploadGrants;
let job: LeasedJob;
let exitCode: number | null = null;
let outputTail: string[] = [];
let flood: {
  statuses: Record<string, number>;
  refusals: string[];
  retryAfter: string[];
  urlsPerKey: number;
};
/** Seconds from the container's launch to the flood's last answer: an upper bound. */
let floodSeconds = 0;
/** What Storage received for the flood's keys, and for the honest runner's. */
let floodCalls: StorageRequest[] = [];
let honestCalls: StorageRequest[] = [];

beforeAll(async () => {
  if (!d.available) return;
  let image: string;
  [t, image] = await Promise.all([createTestDatabase(), testImage(docker)]);
  supabase = await startLocalSupabase(t.url);
  await supabase.storage.createBucket('hd_uploads_raw');
  await supabase.storage.createBucket(OUTPUTS_BUCKET);
  const config = loadConfig({
    ...supabaseSettings(supabase),
    HD_WORKER_ID: SCHEDULER_ID,
    HD_LOG_LEVEL: 'warn',
    HD_UPLOAD_GRANT_RATE: String(RATE),
    HD_UPLOAD_GRANT_BURST: String(BURST),
  });
  grants = (await uploadGrantsFor(config, t.db, memoryLogger().log))!;
  const access = new RunnerAccess(
    { ...config, HD_UPLOAD_GRANT_URL: grants.url },
    t.db,
    supabaseUrlSigner(supabase.url, supabase.serviceRoleKey),
  );
  // The honest work of the job: extract_text of one markdown file.
  const documentId = randomUUID();
  const key = `accounts/${ACCOUNT_B}/documents/${documentId}/memo.md`;
  const memo = '# Memo\n\nAcme Corp audits Müller GmbH.\n';
  await supabase.storage.putObject('hd_uploads_raw', key, memo, 'text/markdown');
  await t.sql.query(
    `insert into hd_document_files (account_id, document_id, storage_path, mime_type, size_bytes)
     values ($1, $2, $3, 'text/markdown', $4)`,
    [ACCOUNT_B, documentId, key, Buffer.byteLength(memo)],
  );
  const queued = await t.db.enqueueJob({
    accountId: ACCOUNT_B,
    jobType: 'extract_text',
    documentId,
    debug: { include_texts: true },
  });
  [job] = (await t.db.claimJobs({
    workerId: SCHEDULER_ID,
    jobId: queued.id,
    leaseSeconds: 300,
  })) as [LeasedJob];
  const launcher = new DockerLauncher({
    db: t.db,
    docker,
    schedulerId: SCHEDULER_ID,
    image,
    env: access.baseEnv,
    // Embedded PostgreSQL and the local Supabase listen on 127.0.0.1 only.
    networkMode: 'host',
    killGraceMs: 2000,
    command: [
      'node',
      '--input-type=module',
      '-e',
      grantFloodScript({ keys: KEYS, asks: ASKS }),
      '--',
    ],
  });
  const resources = handlerResources('extract_text');
  const before = supabase.storage.requests.length;
  const launched = Date.now();
  const runner = await launcher.launch({
    job,
    resources,
    env: await access.envFor(job, resources),
    onOutput(line) {
      if (!line.startsWith('{"phase":"flood"')) return;
      floodSeconds = (Date.now() - launched) / 1000;
      flood = JSON.parse(line) as typeof flood;
    },
  });
  ({ exitCode, outputTail } = await runner.wait());
  await runner.outputStored?.(); // removes the container
  const prefix = `${jobOutputPrefix(ACCOUNT_B, job.id)}preview/flood-`;
  const seen = supabase.storage.requests
    .slice(before)
    .filter((r) => r.method === 'DELETE' || r.path.startsWith('/object/upload/sign/'));
  const isFlood = (r: StorageRequest) =>
    r.keys ? r.keys.every((k) => k.startsWith(prefix)) : r.key!.startsWith(prefix);
  floodCalls = seen.filter(isFlood);
  honestCalls = seen.filter((r) => !isFlood(r) && r.method === 'POST');
}, 900_000);

afterAll(async () => {
  if (!d.available) return;
  const left = await containersOf(docker, [SCHEDULER_ID]);
  await removeContainersOf(docker, [SCHEDULER_ID]);
  await grants?.close();
  await supabase?.stop();
  await t?.drop();
  expect(left.map((c) => `${c.Names[0]} ${c.State}`)).toEqual([]);
});

describe.skipIf(!d.available)(
  `upload grants, red team from a runner container${skipNote(d)}`,
  () => {
    it('answers a flood of grants with 429 and Retry-After, Storage not asked', () => {
      expect(flood, outputTail.join('\n')).toBeDefined();
      const { statuses } = flood;
      expect(Object.keys(statuses).sort()).toEqual(['200', '429']);
      expect(statuses['200']! + statuses['429']!).toBe(KEYS * ASKS);
      // The bucket: BURST at once, then RATE a second, whatever the runner asks.
      expect(statuses['200']).toBeLessThanOrEqual(BURST + RATE * floodSeconds);
      expect(flood.retryAfter).toEqual(['1']);
      // Nothing in the answer but the job the runner named.
      expect(flood.refusals).toEqual([`too many upload grants for job ${job.id}: retry after 1 s`]);
    });

    it('signs each key once while its URL lasts: a repeat ask gets the same URL', () => {
      expect(flood.urlsPerKey).toBe(1);
      const signs = floodCalls.filter((r) => r.method === 'POST').map((r) => r.key);
      expect(new Set(signs).size).toBe(signs.length);
    });

    it('reaches Storage at most twice (a remove, a sign) per grant let through', () => {
      const removes = floodCalls.filter((r) => r.method === 'DELETE');
      expect(removes.length).toBeLessThanOrEqual(flood.statuses['200']!);
      expect(floodCalls.length).toBeLessThanOrEqual(2 * (BURST + RATE * floodSeconds));
    });

    it("the runner's own upload still completes after the flood", async () => {
      expect(exitCode, outputTail.join('\n')).toBe(0);
      const { rows } = await t.sql.query(
        `select kind, name, storage_path, sha256 from hd_artifacts
        where job_id = $1 and kind <> 'preview' order by kind`,
        [job.id],
      );
      expect(rows.map((r) => `${r.kind}/${r.name}`)).toEqual([
        'archive/artifacts.zip',
        'page_text/memo.md/p0001.md',
      ]);
      for (const row of rows) {
        const stored = await supabase.storage.readObject(OUTPUTS_BUCKET, row.storage_path);
        expect(createHash('sha256').update(stored!).digest('hex')).toBe(row.sha256);
      }
      expect(honestCalls.map((r) => r.key).sort()).toEqual(rows.map((r) => r.storage_path).sort());
    });
  },
);
