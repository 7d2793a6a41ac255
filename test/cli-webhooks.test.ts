import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configToEnv } from '../control-plane/config.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, ACCOUNT_B, tempDir, testConfig } from './helpers/runtime.ts';

// `hd-runner webhooks …` as an operator runs it: a child process against the suite's
// PostgreSQL. Delivery itself is tested in webhooks.test.ts and scheduler-webhooks.test.ts.
let t: TestDatabase;
let env: Record<string, string>;
beforeAll(async () => {
  t = await createTestDatabase();
  env = { PATH: process.env.PATH ?? '', ...configToEnv(testConfig(t.url, await tempDir())) };
});
afterAll(() => t.drop());

function cli(...args: string[]) {
  return execa(process.execPath, ['cli/main.ts', 'webhooks', ...args], {
    env,
    extendEnv: false,
    reject: false,
  });
}

async function completeJob(accountId: string) {
  const job = await t.db.enqueueJob({ accountId, jobType: 'hook_probe', debug: {} });
  const [c] = await t.db.claimJobs({ workerId: 'w', leaseSeconds: 60, jobId: job.id });
  await t.db.completeJob(c!.id, c!.lease_token!, {});
}

describe('hd-runner webhooks', () => {
  it('adds an endpoint, shows its secret once, and lists it without', async () => {
    const url = 'https://hooks.example.com/in';
    const add = await cli('add', '--account', ACCOUNT_A, '--url', url, '--events', 'job.completed');
    expect(add.exitCode, add.stderr).toBe(0);
    const [id, secretLine] = add.stdout.split('\n');
    expect(secretLine).toMatch(/^secret: whsec_[A-Za-z0-9+/]{32}$/);
    const list = await cli('list', '--account', ACCOUNT_A, '--json');
    expect(JSON.parse(list.stdout)).toEqual([
      expect.objectContaining({ id, url, events: ['job.completed'], enabled: true }),
    ]);
    expect(list.stdout).not.toContain('whsec_');
    expect((await cli('list', '--account', ACCOUNT_B)).stdout.trim()).toBe('no webhook endpoints');
  });

  it('refuses an unknown event or a URL that is not http(s)', async () => {
    const event = await cli(
      'add',
      '--account',
      ACCOUNT_A,
      '--url',
      'https://x.example',
      '--events',
      'job.done',
    );
    expect(event.exitCode).toBe(2);
    expect(event.stderr).toContain('unknown event job.done (events: job.completed, job.failed');
    const url = await cli('add', '--account', ACCOUNT_A, '--url', 'file:///etc/passwd');
    expect(url.exitCode).toBe(2);
    expect(url.stderr).toContain('--url must be an http(s) URL (got "file:///etc/passwd")');
  });

  it('reads the delivery log and replays a delivery', async () => {
    await completeJob(ACCOUNT_A);
    const log = await cli('deliveries', '--account', ACCOUNT_A, '--json');
    expect(log.exitCode, log.stderr).toBe(0);
    const [row] = JSON.parse(log.stdout);
    expect(row).toMatchObject({ event_type: 'job.completed', status: 'pending', attempts: 0 });
    // As if delivered, then replayed: pending again, attempts from 0, same event id.
    await t.sql.query(
      `update hd_webhook_outbox set status = 'delivered', attempts = 1, next_attempt_at = now() + interval '1 hour' where id = $1`,
      [row.id],
    );
    const replay = await cli('replay', String(row.id));
    expect(replay.exitCode, replay.stderr).toBe(0);
    const after = await t.sql.query('select * from hd_webhook_outbox where id = $1', [row.id]);
    expect(after.rows[0]).toMatchObject({ status: 'pending', attempts: 0, event_id: row.event_id });
    expect(after.rows[0].next_attempt_at.getTime()).toBeLessThanOrEqual(Date.now() + 1000);

    const table = await cli('deliveries', '--status', 'pending');
    expect(table.stdout.split('\n')[0]).toMatch(/^id +event +status +attempts +code/);
    const missing = await cli('replay', '999999');
    expect(missing.exitCode).toBe(1);
    expect(missing.stderr).toContain('NOT_FOUND');
    expect((await cli('replay', 'abc')).exitCode).toBe(2);
  });
});
