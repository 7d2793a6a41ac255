import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { inject } from 'vitest';
import { PostgresDb } from '../../control-plane/db/postgres.ts';
import type { LeasedJob } from '../../contract/jobs.ts';

export interface TestDatabase {
  name: string;
  url: string;
  /** The same database as role hd_runner: what a runner with a scoped credential gets. */
  runnerUrl: string;
  db: PostgresDb;
  /** Same database, for assertions and setup statements outside the queue functions. */
  sql: pg.Pool;
  drop(): Promise<void>;
}

function withDatabase(url: string, name: string): string {
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

/** A fresh database cloned from the migrated template (fast: a file copy). */
export async function createTestDatabase(): Promise<TestDatabase> {
  const adminUrl = inject('pgAdminUrl');
  const name = `hd_test_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client(adminUrl);
  await admin.connect();
  await admin.query(`create database ${name} template ${inject('pgTemplate')}`);
  await admin.end();
  const url = withDatabase(adminUrl, name);
  const db = new PostgresDb({ connectionString: url, poolSize: 10 });
  const sql = new pg.Pool({ connectionString: url, max: 4 });
  // pool.end() resolves before its sockets close; `drop … with (force)` then terminates a
  // closing client (57P01), which an idle client reports as a pool error: not a failure.
  sql.on('error', () => {});
  return {
    name,
    url,
    runnerUrl: withDatabase(inject('pgRunnerUrl'), name),
    db,
    sql,
    async drop() {
      await db.close();
      await sql.end();
      const c = new pg.Client(adminUrl);
      await c.connect();
      await c.query(`drop database if exists ${name} with (force)`);
      await c.end();
    },
  };
}

/** An empty database (not from the template), for migration tests. */
export async function createEmptyDatabase(): Promise<{ url: string; drop(): Promise<void> }> {
  const adminUrl = inject('pgAdminUrl');
  const name = `hd_empty_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client(adminUrl);
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  return {
    url: withDatabase(adminUrl, name),
    async drop() {
      const c = new pg.Client(adminUrl);
      await c.connect();
      await c.query(`drop database if exists ${name} with (force)`);
      await c.end();
    },
  };
}

/** A new extract_interpretations job of `account`, claimed by `workerId` for 10 minutes. */
export async function leasedJob(t: TestDatabase, account: string, workerId: string) {
  const queued = await t.db.enqueueJob({
    accountId: account,
    jobType: 'extract_interpretations',
    debug: {},
  });
  const [job] = await t.db.claimJobs({ workerId, jobId: queued.id, leaseSeconds: 600 });
  return job as LeasedJob;
}
