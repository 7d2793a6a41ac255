import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { execa } from 'execa';
import { Webhook } from 'standardwebhooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configToEnv } from '../control-plane/config.ts';
import { batchesOf } from '../control-plane/db/batches.ts';
import { webhookOutboxOf } from '../control-plane/db/webhooks.ts';
import { createLogger } from '../control-plane/logger.ts';
import { webhookGuard } from '../scheduler/webhook-post.ts';
import { WebhookDelivery, type WebhookOutcome } from '../scheduler/webhooks.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, ACCOUNT_B, tempDir, testConfig } from './helpers/runtime.ts';

// A job's or a batch's own webhook URL (00022): delivered from the same outbox to real
// local receivers that verify the signature with the `standardwebhooks` library, as a
// tenant's server would. Receivers listen on 127.0.0.2, which the delivery allows;
// 127.0.0.1 stays refused, as any loopback address is in service.
let t: TestDatabase;
const servers: http.Server[] = [];
const outcomes: WebhookOutcome[] = [];

beforeAll(async () => {
  t = await createTestDatabase();
});
afterAll(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    s.close();
  }
  await t.drop();
});

interface Received {
  headers: http.IncomingHttpHeaders;
  body: string;
}

async function receiver(host = '127.0.0.2') {
  const received: Received[] = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      received.push({ headers: req.headers, body });
      res.writeHead(200).end();
    });
  });
  server.listen(0, host);
  await once(server, 'listening');
  servers.push(server);
  const { port } = server.address() as AddressInfo;
  return { url: `http://${host}:${port}/done?token=tenant-own`, received };
}

/** One delivery pass over every due event, as the scheduler makes it. */
async function deliverDue() {
  const delivery = new WebhookDelivery({
    outbox: webhookOutboxOf(t.db),
    guard: webhookGuard('127.0.0.2/32'),
    timeoutMs: 10_000,
    pollMs: 60_000,
    logger: createLogger({ level: 'silent' }),
    concurrency: 50,
  });
  delivery.on('attempt', (outcome) => outcomes.push(outcome));
  await delivery.deliverDue();
}

/** The event, verified with `secret` as the receiver's library does; throws when it fails. */
function verify(secret: string, r: Received) {
  return new Webhook(secret).verify(r.body, {
    'webhook-id': String(r.headers['webhook-id']),
    'webhook-timestamp': String(r.headers['webhook-timestamp']),
    'webhook-signature': String(r.headers['webhook-signature']),
  }) as { type: string; data: Record<string, unknown> };
}

async function completeJob(jobId: string) {
  const [c] = await t.db.claimJobs({ workerId: 'w', leaseSeconds: 60, jobId });
  await t.db.completeJob(c!.id, c!.lease_token!, { pages: 1 });
}

const sqlStateOf = async (promise: Promise<unknown>) =>
  promise.then(
    () => 'resolved',
    (error: { code?: string; cause?: { code?: string }; message: string }) =>
      `${error.cause?.code ?? error.code}: ${error.message}`,
  );

describe("a job's own webhook URL", () => {
  it('gets its end event signed with the account secret, besides the endpoints', async () => {
    const own = await receiver();
    const subscribed = await receiver();
    const outbox = webhookOutboxOf(t.db);
    const endpoint = await outbox.addEndpoint(ACCOUNT_A, subscribed.url, ['job.completed']);
    const job = await t.db.enqueueJob({
      accountId: ACCOUNT_A,
      jobType: 'hook_probe',
      debug: { webhook_url: own.url },
    });
    await completeJob(job.id);
    await deliverDue();

    expect(own.received).toHaveLength(1);
    expect(subscribed.received).toHaveLength(1);
    const accountSecret = await outbox.signingSecret(ACCOUNT_A);
    expect(accountSecret).toMatch(/^whsec_/);
    expect(await outbox.signingSecret(ACCOUNT_A)).toBe(accountSecret); // one per account
    expect(verify(accountSecret, own.received[0]!)).toMatchObject({
      type: 'job.completed',
      data: { job_id: job.id, status: 'completed', stats: { pages: 1 } },
    });
    // Each delivery verifies with its own secret only: not the endpoint's, not another
    // account's (whose secret is made here for the first time).
    expect(() => verify(endpoint.secret, own.received[0]!)).toThrow();
    expect(() => verify(accountSecret, subscribed.received[0]!)).toThrow();
    const otherSecret = await outbox.signingSecret(ACCOUNT_B);
    expect(otherSecret).not.toBe(accountSecret);
    expect(() => verify(otherSecret, own.received[0]!)).toThrow();
    // The delivery log shows it as any other, with the URL instead of an endpoint.
    const [row] = (await outbox.listDeliveries({ accountId: ACCOUNT_A, limit: 10 })).filter(
      (d) => d.url === own.url,
    );
    expect(row).toMatchObject({ endpoint_id: null, status: 'delivered', last_status_code: 200 });
  });

  it('is refused at enqueue unless it is an http(s) URL without credentials', async () => {
    for (const url of [
      'ftp://hooks.example.com/x',
      'http://user:pw@hooks.example.com/x',
      'https://hooks.example.com/a b',
      `https://hooks.example.com/${'x'.repeat(2048)}`,
    ]) {
      const enqueue = t.db.enqueueJob({
        accountId: ACCOUNT_A,
        jobType: 'hook_probe',
        debug: { webhook_url: url },
      });
      expect(await sqlStateOf(enqueue)).toMatch(/^23514: .*hd_ingestion_jobs_webhook_url_check/);
    }
    const notText = t.db.enqueueJob({
      accountId: ACCOUNT_A,
      jobType: 'hook_probe',
      debug: { webhook_url: 42 },
    });
    expect(await sqlStateOf(notText)).toMatch(/^23514: /);
  });

  it('is never sent to a loopback address the operator did not allow', async () => {
    await t.sql.query('delete from hd_webhook_endpoints'); // this job's own URL only
    const inside = await receiver('127.0.0.1');
    const job = await t.db.enqueueJob({
      accountId: ACCOUNT_A,
      jobType: 'hook_probe',
      debug: { webhook_url: inside.url },
    });
    outcomes.length = 0;
    await completeJob(job.id);
    await deliverDue();
    expect(inside.received).toEqual([]);
    expect(outcomes).toEqual(['refused']);
    const { rows } = await t.sql.query(
      'select status, last_error from hd_webhook_outbox where url = $1',
      [inside.url],
    );
    expect(rows).toEqual([{ status: 'pending', last_error: expect.stringMatching(/loopback/) }]);
  });
});

describe("a batch's own webhook URL", () => {
  it("gets the batch's end event, not its jobs'", async () => {
    const own = await receiver();
    const batches = batchesOf(t.db);
    const batch = await batches.enqueueBatch({
      accountId: ACCOUNT_B,
      name: 'with-hook',
      webhookUrl: own.url,
      jobs: [{ jobType: 'hook_probe', debug: {} }],
    });
    expect(batch.webhook_url).toBe(own.url);
    const [job] = await batches.listBatchJobs(batch.id, 1);
    await completeJob(job!.id);
    await deliverDue();
    expect(own.received).toHaveLength(1);
    const secret = await webhookOutboxOf(t.db).signingSecret(ACCOUNT_B);
    expect(verify(secret, own.received[0]!)).toMatchObject({
      type: 'batch.completed',
      data: { batch_id: batch.id, status: 'completed', total: 1, completed: 1 },
    });
  });

  it('refuses a bad URL and queues nothing', async () => {
    const before = (await t.sql.query('select count(*)::int as n from hd_batches')).rows[0].n;
    const enqueue = batchesOf(t.db).enqueueBatch({
      accountId: ACCOUNT_B,
      name: 'bad-hook',
      webhookUrl: 'javascript:alert(1)',
      jobs: [{ jobType: 'hook_probe', debug: {} }],
    });
    expect(await sqlStateOf(enqueue)).toMatch(/^23514: .*hd_batches_webhook_url_check/);
    expect((await t.sql.query('select count(*)::int as n from hd_batches')).rows[0].n).toBe(before);
  });
});

describe('hd-runner enqueue --webhook-url', () => {
  let env: Record<string, string>;
  let file: string;
  beforeAll(async () => {
    const root = await tempDir();
    env = { PATH: process.env.PATH ?? '', ...configToEnv(testConfig(t.url, root)) };
    file = join(root, 'one.jsonl');
    await writeFile(file, '{"title": "one"}\n');
  });
  const cli = (...args: string[]) =>
    execa(process.execPath, ['cli/main.ts', 'enqueue', '--account', ACCOUNT_A, ...args], {
      env,
      extendEnv: false,
      reject: false,
    });

  it('puts the URL in the job, and refuses a bad or loopback one by name', async () => {
    const url = 'http://203.0.113.7/hooks/done';
    const ok = await cli('--file', file, '--webhook-url', url);
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect((await t.db.getJob(ok.stdout.trim()))?.debug).toMatchObject({ webhook_url: url });

    const bad = await cli('--file', file, '--webhook-url', 'http://user:pw@hooks.example.com/');
    expect([bad.exitCode, bad.stderr]).toEqual([
      2,
      expect.stringMatching(/--webhook-url must be an http\(s\) URL without credentials/),
    ]);
    // The secret that verifies those deliveries, as an operator reads it.
    const secret = await execa(
      process.execPath,
      ['cli/main.ts', 'webhooks', 'secret', '--account', ACCOUNT_A],
      { env, extendEnv: false, reject: false },
    );
    expect(secret.stdout.trim()).toBe(await webhookOutboxOf(t.db).signingSecret(ACCOUNT_A));
    const inside = await cli('--batch', 'b', file, '--webhook-url', 'http://127.0.0.1:9/x');
    expect([inside.exitCode, inside.stderr]).toEqual([
      2,
      expect.stringMatching(
        /--webhook-url: webhook host 127\.0\.0\.1 resolves to 127\.0\.0\.1, a loopback/,
      ),
    ]);
  });
});
