import { once } from 'node:events';
import net from 'node:net';
import { execa } from 'execa';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { configToEnv } from '../control-plane/config.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, jsonl, putObject, tempDir, testConfig } from './helpers/runtime.ts';

// `hd-runner scheduler` with HD_METRICS_ADDRESS: Prometheus text from prom-client, what the
// scheduler did (from its events) and what the queue holds (read per scrape).
let t: TestDatabase;
let root: string;
beforeAll(async () => {
  t = await createTestDatabase();
  root = await tempDir();
});
afterAll(() => t.drop());

async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

it('serves /metrics, /healthz and /readyz on a loopback address', async () => {
  const path = `accounts/${ACCOUNT_A}/assets-jsonl/m.jsonl`;
  await putObject(
    root,
    'hd_uploads_raw',
    path,
    jsonl([{ title: 'M', source_type: 's', source_ref: 'm-1' }]),
  );
  const job = await t.db.enqueueJob({
    accountId: ACCOUNT_A,
    jobType: 'import_assets_jsonl',
    debug: { path },
  });
  // Another type, not this scheduler's: it stays queued and shows in the queue gauges.
  await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'other_type', debug: {} });
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const config = testConfig(t.url, root, {
    HD_POLL_INTERVAL_MS: '200',
    HD_METRICS_ADDRESS: `127.0.0.1:${port}`,
  });
  const scheduler = execa(
    process.execPath,
    ['cli/main.ts', 'scheduler', '--slots', '1', '--job-types', 'import_assets_jsonl'],
    {
      env: { PATH: process.env.PATH ?? '', ...configToEnv(config) },
      extendEnv: false,
      reject: false,
    },
  );
  try {
    await expect
      .poll(async () => (await t.db.getJob(job.id))?.status, { timeout: 20_000 })
      .toBe('completed');
    // The runner's end reaches the scheduler's event after the row: wait for the counter.
    let text = '';
    await expect
      .poll(async () => {
        text = await (await fetch(`${base}/metrics`)).text();
        return text;
      })
      .toContain(
        'hd_jobs_finished_total{job_type="import_assets_jsonl",status="completed",error_code=""} 1',
      );
    expect(text).toContain('hd_jobs_claimed_total{job_type="import_assets_jsonl"} 1');
    expect(text).toContain('hd_job_run_seconds_count{job_type="import_assets_jsonl"} 1');
    expect(text).toContain('hd_job_queue_wait_seconds_count{job_type="import_assets_jsonl"} 1');
    expect(text).toContain('hd_queue_depth{job_type="other_type",status="queued"} 1');
    expect(text).toMatch(/hd_queue_oldest_age_seconds\{job_type="other_type"\} \d/);
    expect(text).toContain('hd_webhook_deliveries{status="pending"} 0');
    expect(await (await fetch(`${base}/healthz`)).text()).toBe('ok\n');
    const ready = await fetch(`${base}/readyz`);
    expect([ready.status, await ready.text()]).toEqual([200, 'ready\n']);
  } finally {
    scheduler.kill('SIGTERM');
  }
  expect((await scheduler).exitCode).toBe(0);
});

it('refuses a metrics address that is not loopback', async () => {
  const result = await execa(process.execPath, ['cli/main.ts', 'scheduler'], {
    env: {
      PATH: process.env.PATH ?? '',
      HD_DATABASE_URL: t.url,
      HD_METRICS_ADDRESS: '0.0.0.0:9464',
    },
    extendEnv: false,
    reject: false,
  });
  expect(result.exitCode).toBe(2);
  expect(result.stderr).toMatch(/HD_METRICS_ADDRESS: a loopback host:port/);
});
