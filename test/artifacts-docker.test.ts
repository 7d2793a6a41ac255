import { randomBytes, randomUUID } from 'node:crypto';
import { chmod, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LeasedJob } from '../contract/jobs.ts';
import { OUTPUTS_BUCKET } from '../contract/storage-paths.ts';
import { handlerResources } from '../runner/handlers/index.ts';
import { DockerLauncher } from '../scheduler/launchers/docker.ts';
import { RunnerAccess } from '../scheduler/runner-access.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import {
  containersOf,
  removeContainersOf,
  requireDocker,
  skipNote,
  testImage,
} from './helpers/docker.ts';
import { ACCOUNT_A, putObject, tempDir, testConfig } from './helpers/runtime.ts';

// extract_text's artifacts written by a real runner container (uid 1000, read-only root,
// the tenant folder read-only) into the one writable folder the launcher mounts: its job's.
const d = await requireDocker();
const docker = d.docker!;
const SCHEDULER_ID = `hd-art-${randomBytes(4).toString('hex')}`;
let t: TestDatabase;
let root: string;
let image: string;

beforeAll(async () => {
  if (!d.available) return;
  [image, t, root] = await Promise.all([testImage(docker), createTestDatabase(), tempDir()]);
  await chmod(root, 0o755); // the runner (uid 1000) reads it
}, 900_000);
afterAll(async () => {
  if (!d.available) return;
  const left = await containersOf(docker, [SCHEDULER_ID]);
  await removeContainersOf(docker, [SCHEDULER_ID]);
  await t?.drop();
  expect(left.map((c) => `${c.Names[0]} ${c.State}`)).toEqual([]);
});

describe.skipIf(!d.available)(`artifacts from a runner container${skipNote(d)}`, () => {
  it('stores page texts and the archive under its job folder, as uid 1000', async () => {
    const documentId = randomUUID();
    const key = `accounts/${ACCOUNT_A}/documents/${documentId}/memo.md`;
    await putObject(root, 'hd_uploads_raw', key, '# Memo\n\nAcme Corp audits Müller GmbH.\n');
    await t.sql.query(
      `insert into hd_document_files (account_id, document_id, storage_path, mime_type, size_bytes)
       values ($1, $2, $3, 'text/markdown', 40)`,
      [ACCOUNT_A, documentId, key],
    );
    const queued = await t.db.enqueueJob({
      accountId: ACCOUNT_A,
      jobType: 'extract_text',
      documentId,
      debug: { include_texts: true },
    });
    const [job] = (await t.db.claimJobs({
      workerId: SCHEDULER_ID,
      jobId: queued.id,
      leaseSeconds: 120,
    })) as LeasedJob[];
    const config = testConfig(t.url, root, {
      HD_WORKER_ID: SCHEDULER_ID,
      HD_DOCKER_NETWORK: 'host',
      HD_LOG_LEVEL: 'warn',
    });
    const access = new RunnerAccess({ ...config, HD_RUNNER_DATABASE_URL: t.runnerUrl }, t.db);
    const launcher = new DockerLauncher({
      db: t.db,
      docker,
      schedulerId: SCHEDULER_ID,
      image,
      env: access.baseEnv,
      networkMode: 'host',
      storageRoot: root,
    });
    const resources = handlerResources('extract_text');
    const runner = await launcher.launch({
      job: job!,
      resources,
      env: await access.envFor(job!, resources),
    });
    const exit = await runner.wait();
    expect(exit.exitCode, exit.outputTail.join('\n')).toBe(0);
    const { rows } = await t.sql.query(
      `select kind, name, storage_path from hd_artifacts where job_id = $1 order by kind`,
      [job!.id],
    );
    expect(rows.map((r) => `${r.kind}/${r.name}`)).toEqual([
      'archive/artifacts.zip',
      'page_text/memo.md/p0001.md',
    ]);
    const text = join(root, OUTPUTS_BUCKET, rows[1].storage_path);
    expect(await readFile(text, 'utf8')).toBe(
      '# memo.md, page 1\n\n# Memo\n\nAcme Corp audits Müller GmbH.\n',
    );
    expect((await stat(text)).uid).toBe(1000);
  });
});
