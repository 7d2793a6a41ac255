import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { execa } from 'execa';
import { Webhook } from 'standardwebhooks';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { configToEnv } from '../control-plane/config.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, jsonl, putObject, tempDir, testConfig } from './helpers/runtime.ts';

// `hd-runner scheduler` runs a job and delivers its job.completed webhook to a real local
// receiver (on 127.0.0.2, allowed by HD_WEBHOOK_ALLOW_CIDRS) that verifies the signature.
let t: TestDatabase;
let root: string;
let server: http.Server;
beforeAll(async () => {
  t = await createTestDatabase();
  root = await tempDir();
});
afterAll(async () => {
  server?.closeAllConnections();
  server?.close();
  await t.drop();
});

it('delivers the webhook of a job the scheduler ran, signed, and exits 0 on SIGTERM', async () => {
  const received = new Promise<{ headers: http.IncomingHttpHeaders; body: string }>((resolve) => {
    server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        res.writeHead(200).end();
        resolve({ headers: req.headers, body });
      });
    });
  });
  server.listen(0, '127.0.0.2');
  await once(server, 'listening');
  const url = `http://127.0.0.2:${(server.address() as AddressInfo).port}/in?token=tenant-own`;
  const { rows } = await t.sql.query('select secret from hd_add_webhook_endpoint($1, $2)', [
    ACCOUNT_A,
    url,
  ]);
  const path = `accounts/${ACCOUNT_A}/assets-jsonl/hook.jsonl`;
  await putObject(
    root,
    'hd_uploads_raw',
    path,
    jsonl([{ title: 'H', source_type: 's', source_ref: 'h-1' }]),
  );
  const job = await t.db.enqueueJob({
    accountId: ACCOUNT_A,
    jobType: 'import_assets_jsonl',
    debug: { path },
  });
  const config = testConfig(t.url, root, {
    HD_LOG_LEVEL: 'debug',
    HD_POLL_INTERVAL_MS: '200',
    HD_WEBHOOK_ALLOW_CIDRS: '127.0.0.2/32',
    HD_WEBHOOK_POLL_MS: '100',
  });
  const scheduler = execa(process.execPath, ['cli/main.ts', 'scheduler', '--slots', '1'], {
    env: { PATH: process.env.PATH ?? '', ...configToEnv(config) },
    extendEnv: false,
    reject: false,
  });
  const { headers, body } = await received;
  const event = new Webhook(rows[0].secret).verify(body, {
    'webhook-id': String(headers['webhook-id']),
    'webhook-timestamp': String(headers['webhook-timestamp']),
    'webhook-signature': String(headers['webhook-signature']),
  });
  expect(event).toMatchObject({
    type: 'job.completed',
    data: { job_id: job.id, status: 'completed', stats: { inserted: 1 } },
  });
  await expect
    .poll(async () => (await t.sql.query('select status from hd_webhook_outbox')).rows)
    .toEqual([{ status: 'delivered' }]);
  scheduler.kill('SIGTERM');
  const result = await scheduler;
  expect(result.exitCode).toBe(0);
  const delivered = result.stderr
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .find((line) => line.msg === 'webhook delivered');
  expect(delivered).toMatchObject({ event_type: 'job.completed', host: url.split('/')[2] });
  // The URL's query (the tenant's own token) is not logged.
  expect(result.stderr).not.toContain('tenant-own');
});
