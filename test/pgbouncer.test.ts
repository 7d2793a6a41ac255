import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PostgresDb } from '../control-plane/db/postgres.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { startPgBouncer, type PgBouncer } from './helpers/pgbouncer.ts';
import { describeQueueSuite } from './helpers/queue-suite.ts';
import { ACCOUNT_A, jsonl, putObject, tempDir } from './helpers/runtime.ts';
import { startSchedulerHosts } from './helpers/scheduler-hosts.ts';

// Through a transaction pooler: a real PgBouncer (Debian's package) in transaction mode,
// as Supabase's pooler on port 6543 is, in front of the suite's PostgreSQL. Each
// transaction may run on another server session, so nothing may rely on session state.

// The whole queue behaviour (claims, leases, fencing, logs) over the pooler, polling.
describeQueueSuite('postgres transport through PgBouncer (transaction mode)', async () => {
  const t = await createTestDatabase();
  const bouncer = await startPgBouncer([t.url]);
  const db = new PostgresDb({
    connectionString: bouncer.through(t.url),
    poolSize: 10,
    listenConnectionString: null,
  });
  return {
    db,
    sql: t.sql,
    wakeups: 'poll',
    async close() {
      await db.close();
      await bouncer.stop();
      await t.drop();
    },
  };
});

describe('a scheduler and its runners through PgBouncer', () => {
  let t: TestDatabase;
  let bouncer: PgBouncer;
  let root: string;
  beforeAll(async () => {
    t = await createTestDatabase();
    bouncer = await startPgBouncer([t.url, t.runnerUrl]);
    root = await tempDir();
  });
  afterAll(async () => {
    await bouncer?.stop();
    await t.drop();
  });

  async function runOneImport(name: string, env: Record<string, string>) {
    const [host] = await startSchedulerHosts(1, {
      databaseUrl: bouncer.through(t.url),
      storageRoot: root,
      env: () => ({ HD_RUNNER_DATABASE_URL: bouncer.through(t.runnerUrl), ...env }),
    });
    try {
      const path = `accounts/${ACCOUNT_A}/assets-jsonl/${name}.jsonl`;
      await putObject(
        root,
        'hd_uploads_raw',
        path,
        jsonl([{ title: name, source_type: 's', source_ref: name }]),
      );
      const job = await t.db.enqueueJob({
        accountId: ACCOUNT_A,
        jobType: 'import_assets_jsonl',
        debug: { path },
      });
      await expect
        .poll(async () => (await t.db.getJob(job.id))?.status, { timeout: 60_000, interval: 100 })
        .toBe('completed');
      const done = await t.db.getJob(job.id);
      expect(done?.attempts).toBe(1);
      const { rows } = await t.sql.query(`select title from hd_assets where source_ref = $1`, [
        name,
      ]);
      expect(rows).toEqual([{ title: name }]);
    } finally {
      await host!.stop();
    }
  }

  it('wakes on NOTIFY heard on HD_LISTEN_DATABASE_URL, a session connection beside the pooler', async () => {
    // The poll interval is ten minutes: only the NOTIFY can start this job in time.
    await runOneImport('notify', { HD_LISTEN_DATABASE_URL: t.url, HD_POLL_INTERVAL_MS: '600000' });
  }, 90_000);

  it('polls with HD_LISTEN_DATABASE_URL=off', async () => {
    await runOneImport('poll', { HD_LISTEN_DATABASE_URL: 'off', HD_POLL_INTERVAL_MS: '200' });
  }, 90_000);
});
