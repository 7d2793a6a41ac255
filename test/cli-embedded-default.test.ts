import { rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { PostgresDb } from '../control-plane/db/postgres.ts';
import { migrate } from '../control-plane/db/migrate.ts';
import { startEmbeddedPostgres } from '../control-plane/embedded-postgres.ts';
import { ACCOUNT_A, tempDir } from './helpers/runtime.ts';

// After `hd-runner demo`, operator commands reach its embedded PostgreSQL with no
// configuration. The demo's folder is made here as the demo makes it: a real server
// started from embedded-postgres's binaries, migrated, one job queued, then stopped.
let demoDir: string;
let dataDir: string;
let jobId: string;
beforeAll(async () => {
  demoDir = await tempDir('hd-test-demo-dir-');
  const database = await startEmbeddedPostgres({ dir: join(demoDir, 'postgres') });
  dataDir = database.dataDir;
  try {
    const client = new pg.Client(database.connectionString());
    await client.connect();
    await migrate(client).finally(() => client.end());
    const db = new PostgresDb({ connectionString: database.connectionString() });
    const job = await db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'probe', debug: {} });
    jobId = job.id;
    await db.close();
  } finally {
    await database.stop();
  }
}, 120_000);
afterAll(async () => {
  await rm(demoDir, { recursive: true, force: true });
  // As root the server's data lives outside the folder (see startEmbeddedPostgres).
  if (dataDir && !dataDir.startsWith(demoDir)) await rm(dirname(dataDir), { recursive: true });
});

it('`jobs` works on the demo database without HD_DATABASE_URL, and says which one it uses', async () => {
  const result = await execa(
    process.execPath,
    ['cli/main.ts', 'jobs', 'show', jobId.slice(0, 8), '--json'],
    {
      env: { PATH: process.env.PATH ?? '', HD_DEMO_DIR: demoDir },
      extendEnv: false,
      reject: false,
    },
  );
  expect(result.exitCode, result.stderr).toBe(0);
  expect(JSON.parse(result.stdout)).toMatchObject({ id: jobId, job_type: 'probe' });
  expect(result.stderr.trim()).toBe(
    `hd-runner: no HD_DATABASE_URL; using the demo's embedded PostgreSQL in ${join(demoDir, 'postgres')}`,
  );
}, 60_000);

it('leaves a configured database alone', async () => {
  const result = await execa(process.execPath, ['cli/main.ts', 'jobs', 'list'], {
    env: {
      PATH: process.env.PATH ?? '',
      HD_DEMO_DIR: demoDir,
      HD_DATABASE_URL: 'postgres://nobody:x@127.0.0.1:9/none',
    },
    extendEnv: false,
    reject: false,
  });
  expect(result.exitCode).toBe(1);
  expect(result.stderr).toMatch(/^hd-runner: DATABASE_UNAVAILABLE: .*127\.0\.0\.1:9/);
});
