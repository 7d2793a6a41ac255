import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Webhook } from 'standardwebhooks';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { batchesOf } from '../control-plane/db/batches.ts';
import { webhookOutboxOf } from '../control-plane/db/webhooks.ts';
import { createLogger } from '../control-plane/logger.ts';
import { webhookGuard } from '../scheduler/webhook-post.ts';
import { WebhookDelivery } from '../scheduler/webhooks.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, ACCOUNT_B } from './helpers/runtime.ts';

// Webhooks (00013 + scheduler/webhooks.ts) end to end: events written by the database in
// the transaction that ends a job, delivered over real HTTP to real local receivers that
// verify the signature with the `standardwebhooks` library, as a tenant's server would.
// The receivers listen on 127.0.0.2, which the delivery is told to allow (a loopback
// address is refused otherwise); 127.0.0.1 stays refused for the redirect test.
let t: TestDatabase;
const RECEIVER_HOST = '127.0.0.2';
const guard = webhookGuard(`${RECEIVER_HOST}/32`);
const servers: http.Server[] = [];

interface Received {
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A receiver answering each request with `answer(n)` (n from 0); undefined: never answers. */
async function receiver(
  answer: (n: number) => { status: number; headers?: Record<string, string> } | undefined,
  host = RECEIVER_HOST,
) {
  const received: Received[] = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      const reply = answer(received.length);
      received.push({ headers: req.headers, body });
      if (reply) res.writeHead(reply.status, reply.headers).end('ok');
    });
  });
  server.listen(0, host);
  await once(server, 'listening');
  servers.push(server);
  const { port } = server.address() as AddressInfo;
  return { url: `http://${host}:${port}/hooks?token=tenant-own`, port, received };
}

const delivery = (timeoutMs = 10_000) =>
  new WebhookDelivery({
    outbox: webhookOutboxOf(t.db),
    guard,
    timeoutMs,
    pollMs: 60_000,
    logger: createLogger({ level: 'silent' }),
  });

async function addEndpoint(accountId: string, url: string, events?: string[]) {
  const { rows } = await t.sql.query('select id, secret from hd_add_webhook_endpoint($1, $2, $3)', [
    accountId,
    url,
    events ?? null,
  ]);
  return rows[0] as { id: string; secret: string };
}

async function finishJob(accountId: string, outcome: 'complete' | 'retry' | 'fail') {
  const job = await t.db.enqueueJob({ accountId, jobType: 'hook_probe', debug: {} });
  const [c] = await t.db.claimJobs({ workerId: 'w', leaseSeconds: 60, jobId: job.id });
  if (outcome === 'complete') await t.db.completeJob(c!.id, c!.lease_token!, { pages: 2 });
  else
    await t.db.failJob(c!.id, c!.lease_token!, {
      code: 'INVALID_INPUT',
      message: 'bad file',
      retryable: outcome === 'retry',
    });
  return job.id;
}

async function outboxRows(endpointId: string) {
  const { rows } = await t.sql.query(
    'select * from hd_webhook_outbox where endpoint_id = $1 order by id',
    [endpointId],
  );
  return rows;
}

beforeAll(async () => {
  t = await createTestDatabase();
});
beforeEach(async () => {
  // One endpoint at a time: each test sees only its own events.
  await t.sql.query('delete from hd_webhook_endpoints');
});
afterAll(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    s.close();
  }
  await t.drop();
});

describe('webhook events', () => {
  it('are written with the change that ends a job, for the endpoints that want them', async () => {
    const { id } = await addEndpoint(ACCOUNT_A, 'https://hooks.example.com/a', ['job.completed']);
    const done = await finishJob(ACCOUNT_A, 'complete');
    await finishJob(ACCOUNT_A, 'retry'); // not an end
    await finishJob(ACCOUNT_A, 'fail'); // job.failed: not subscribed
    await finishJob(ACCOUNT_B, 'complete'); // another account's
    // A change rolled back leaves no event.
    const rolled = await t.db.enqueueJob({
      accountId: ACCOUNT_A,
      jobType: 'hook_probe',
      debug: {},
    });
    const client = await t.sql.connect();
    await client.query('begin');
    await client.query(`update hd_ingestion_jobs set status = 'completed' where id = $1`, [
      rolled.id,
    ]);
    await client.query('rollback');
    client.release();

    const rows = await outboxRows(id);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ event_type: 'job.completed', status: 'pending', attempts: 0 });
    expect(rows[0].event_id).toMatch(/^msg_[0-9a-f]{32}$/);
    expect(rows[0].payload).toMatchObject({
      type: 'job.completed',
      data: {
        job_id: done,
        account_id: ACCOUNT_A,
        job_type: 'hook_probe',
        status: 'completed',
        progress_percent: 100,
        stats: { pages: 2 },
      },
    });
    expect(JSON.stringify(rows[0].payload)).not.toMatch(/lease|secret|whsec/);
  });

  it('tell when a batch ends', async () => {
    const { id } = await addEndpoint(ACCOUNT_B, 'https://hooks.example.com/b', [
      'batch.failed',
      'batch.completed',
    ]);
    const batches = batchesOf(t.db);
    const batch = await batches.enqueueBatch({
      accountId: ACCOUNT_B,
      name: 'hooked',
      jobs: [{ jobType: 'hook_probe', debug: {} }],
    });
    const [job] = await batches.listBatchJobs(batch.id, 1);
    const [c] = await t.db.claimJobs({ workerId: 'w', leaseSeconds: 60, jobId: job!.id });
    await t.db.completeJob(c!.id, c!.lease_token!, {});
    const rows = await outboxRows(id);
    expect(rows.map((r) => r.payload.data)).toEqual([
      expect.objectContaining({ batch_id: batch.id, status: 'completed', total: 1, percent: 100 }),
    ]);
  });
});

describe('webhook delivery', () => {
  it('signs per Standard Webhooks: the receiver verifies with the library', async () => {
    const hook = await receiver(() => ({ status: 204 }));
    const { id, secret } = await addEndpoint(ACCOUNT_A, hook.url);
    const jobId = await finishJob(ACCOUNT_A, 'complete');
    expect(await delivery().deliverDue()).toBe(1);

    expect(hook.received).toHaveLength(1);
    const { headers, body } = hook.received[0]!;
    const verified = new Webhook(secret).verify(body, {
      'webhook-id': String(headers['webhook-id']),
      'webhook-timestamp': String(headers['webhook-timestamp']),
      'webhook-signature': String(headers['webhook-signature']),
    });
    expect(verified).toMatchObject({ type: 'job.completed', data: { job_id: jobId } });
    // Another secret does not verify: the signature is the endpoint's.
    expect(() =>
      new Webhook('whsec_' + Buffer.alloc(24, 1).toString('base64')).verify(body, {
        'webhook-id': String(headers['webhook-id']),
        'webhook-timestamp': String(headers['webhook-timestamp']),
        'webhook-signature': String(headers['webhook-signature']),
      }),
    ).toThrow();
    const [row] = await outboxRows(id);
    expect(row).toMatchObject({ status: 'delivered', attempts: 1, last_status_code: 204 });
    expect(row.event_id).toBe(headers['webhook-id']);
    expect(row.last_latency_ms).toBeGreaterThanOrEqual(0);
  });

  it('retries a failing receiver later with the same webhook-id, until it recovers', async () => {
    const hook = await receiver((n) => ({ status: n === 0 ? 503 : 200 }));
    const { id } = await addEndpoint(ACCOUNT_A, hook.url);
    await finishJob(ACCOUNT_A, 'fail');
    await delivery().deliverDue();
    let [row] = await outboxRows(id);
    expect(row).toMatchObject({ status: 'pending', attempts: 1, last_status_code: 503 });
    // Backoff: not due again at once (10 s doubling, equal jitter: at least 5 s).
    const { rows: wait } = await t.sql.query(
      `select extract(epoch from next_attempt_at - now()) as s from hd_webhook_outbox where id = $1`,
      [row.id],
    );
    expect(Number(wait[0].s)).toBeGreaterThan(4);
    expect(await delivery().deliverDue()).toBe(0);
    // The clock moves on (the row's time, not a sleep).
    await t.sql.query('update hd_webhook_outbox set next_attempt_at = now() where id = $1', [
      row.id,
    ]);
    expect(await delivery().deliverDue()).toBe(1);
    [row] = await outboxRows(id);
    expect(row).toMatchObject({ status: 'delivered', attempts: 2, last_status_code: 200 });
    expect(hook.received.map((r) => r.headers['webhook-id'])).toEqual([row.event_id, row.event_id]);
    expect(JSON.parse(hook.received[1]!.body).type).toBe('job.failed');
  });

  it('gives up on a receiver that hangs, within the time limit, and keeps the event', async () => {
    const hook = await receiver(() => undefined);
    const { id } = await addEndpoint(ACCOUNT_A, hook.url);
    await finishJob(ACCOUNT_A, 'complete');
    await delivery(300).deliverDue();
    const [row] = await outboxRows(id);
    expect(hook.received).toHaveLength(1);
    expect(row).toMatchObject({
      status: 'pending',
      attempts: 1,
      last_status_code: null,
      last_error: 'no answer within 300 ms',
    });
  });

  it('refuses a redirect to 127.0.0.1, and a loopback URL not allowed', async () => {
    const inner = await receiver(() => ({ status: 200 }), '127.0.0.1');
    const hook = await receiver(() => ({
      status: 307,
      headers: { location: `http://127.0.0.1:${inner.port}/internal` },
    }));
    const { id } = await addEndpoint(ACCOUNT_A, hook.url);
    await finishJob(ACCOUNT_A, 'complete');
    await delivery().deliverDue();
    const [row] = await outboxRows(id);
    expect(hook.received).toHaveLength(1);
    expect(inner.received).toHaveLength(0);
    expect(row.status).toBe('pending');
    expect(row.last_error).toContain('webhook host 127.0.0.1 resolves to 127.0.0.1, a loopback');

    await t.sql.query('delete from hd_webhook_endpoints');
    const direct = await addEndpoint(ACCOUNT_A, `http://localhost:${inner.port}/`);
    await finishJob(ACCOUNT_A, 'complete');
    await delivery().deliverDue();
    expect((await outboxRows(direct.id))[0].last_error).toMatch(
      /webhook host localhost resolves to (127\.0\.0\.1|::1)/,
    );
    expect(inner.received).toHaveLength(0);
  });

  it('replays a delivered event with its webhook-id', async () => {
    const hook = await receiver(() => ({ status: 200 }));
    const { id } = await addEndpoint(ACCOUNT_A, hook.url);
    await finishJob(ACCOUNT_A, 'complete');
    await delivery().deliverDue();
    const [row] = await outboxRows(id);
    await webhookOutboxOf(t.db).replay(Number(row.id));
    expect(await delivery().deliverDue()).toBe(1);
    expect(hook.received.map((r) => r.headers['webhook-id'])).toEqual([row.event_id, row.event_id]);
  });
});

describe('the outbox', () => {
  it('fails a delivery whose holders died before recording 12 attempts', async () => {
    const { id } = await addEndpoint(ACCOUNT_A, 'https://hooks.example.com/dies');
    await finishJob(ACCOUNT_A, 'complete');
    const [row] = await outboxRows(id);
    await t.sql.query(
      'update hd_webhook_outbox set attempts = 12, next_attempt_at = now() where id = $1',
      [row.id],
    );
    expect(await webhookOutboxOf(t.db).claim(10, 60)).toEqual([]);
    expect((await outboxRows(id))[0]).toMatchObject({
      status: 'failed',
      attempts: 12,
      last_error: 'no answer recorded in 12 attempts',
    });
  });
});

describe('the delivery loop', () => {
  it('works through a backlog without waiting a poll between full passes', async () => {
    let all: () => void;
    const done = new Promise<void>((resolve) => (all = resolve));
    const hook = await receiver((n) => {
      if (n === 19) all();
      return { status: 200 };
    });
    await addEndpoint(ACCOUNT_B, hook.url);
    for (let i = 0; i < 20; i++) await finishJob(ACCOUNT_B, 'complete');
    const loop = delivery(); // polls once a minute: only full passes go on at once
    loop.start();
    await done;
    await loop.stop();
    expect(new Set(hook.received.map((r) => r.headers['webhook-id'])).size).toBe(20);
  });
});
