import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { execa } from 'execa';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { configToEnv } from '../control-plane/config.ts';
import { createLogger } from '../control-plane/logger.ts';
import { GpuSlots } from '../scheduler/gpu.ts';
import { startMetricsServer } from '../scheduler/metrics.ts';
import { Scheduler } from '../scheduler/scheduler.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { heldLauncher } from './helpers/held-launcher.ts';
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
  // Two endpoints on a local receiver: one takes the event, one answers 503 (retried later).
  const receiver = await startReceiver();
  for (const path of ['/ok', '/busy'])
    await t.sql.query('select hd_add_webhook_endpoint($1, $2)', [ACCOUNT_A, receiver.url + path]);
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const config = testConfig(t.url, root, {
    HD_POLL_INTERVAL_MS: '200',
    HD_METRICS_ADDRESS: `127.0.0.1:${port}`,
    HD_GPUS: '2',
    HD_WEBHOOK_ALLOW_CIDRS: '127.0.0.1/32',
    HD_WEBHOOK_POLL_MS: '100',
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
    expect(text).toContain(
      'hd_runner_launch_seconds_count{job_type="import_assets_jsonl",launcher="process"} 1',
    );
    expect(text).toContain('hd_scheduler_slots 1');
    expect(text).toContain('hd_gpu_slots{gpu="1"} 1');
    expect(text).toContain('hd_gpu_slots_busy{gpu="1"} 0');
    // The runner ended: its slot is free again.
    expect(text).toContain('hd_scheduler_slots_busy 0');
    await expect
      .poll(async () =>
        metricLines(await (await fetch(`${base}/metrics`)).text(), 'hd_webhook_attempts_total'),
      )
      .toEqual([
        'hd_webhook_attempts_total{outcome="delivered",event_type="job.completed"} 1',
        'hd_webhook_attempts_total{outcome="http_error",event_type="job.completed"} 1',
      ]);
    expect(await (await fetch(`${base}/healthz`)).text()).toBe('ok\n');
    const ready = await fetch(`${base}/readyz`);
    expect([ready.status, await ready.text()]).toEqual([200, 'ready\n']);
  } finally {
    scheduler.kill('SIGTERM');
    await receiver.close();
  }
  expect((await scheduler).exitCode).toBe(0);
});

/** Sorted sample lines of one metric. */
function metricLines(text: string, name: string): string[] {
  return text
    .split('\n')
    .filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `))
    .sort();
}

/** A webhook receiver: 200 on /ok, 503 elsewhere. */
async function startReceiver() {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(req.url === '/ok' ? 200 : 503).end());
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

it('slots and GPUs busy follow the jobs a scheduler holds; launches are timed', async () => {
  const { launcher, launched } = heldLauncher(t.db);
  const port = await freePort();
  const config = testConfig(t.url, root, {
    HD_SLOTS: '4',
    HD_POLL_INTERVAL_MS: '100',
    HD_JOB_TYPES: 'gpu_probe,cpu_probe',
    HD_METRICS_ADDRESS: `127.0.0.1:${port}`,
  });
  const resources = { memoryMb: 256, cpus: 1, timeoutMs: 60_000 };
  const gpus = new GpuSlots(['0', '1'], 1);
  const scheduler = new Scheduler({
    db: t.db,
    launcher,
    config,
    log: createLogger({ level: 'silent' }),
    gpus,
    resourcesFor: (type) => ({ ...resources, gpu: type === 'gpu_probe' }),
  });
  const server = await startMetricsServer(config, t.db, scheduler, { gpus });
  const scrape = async () => {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    return [
      ...metricLines(text, 'hd_scheduler_slots'),
      ...metricLines(text, 'hd_scheduler_slots_busy'),
      ...metricLines(text, 'hd_gpu_slots_busy'),
      ...metricLines(text, 'hd_runner_launch_seconds_count'),
    ];
  };
  try {
    expect(await scrape()).toEqual([
      'hd_scheduler_slots 4',
      'hd_scheduler_slots_busy 0',
      'hd_gpu_slots_busy{gpu="0"} 0',
      'hd_gpu_slots_busy{gpu="1"} 0',
    ]);
    for (const jobType of ['gpu_probe', 'gpu_probe', 'cpu_probe'])
      await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType, debug: {} });
    await scheduler.start();
    await expect.poll(() => launched.length).toBe(3);
    expect(await scrape()).toEqual([
      'hd_scheduler_slots 4',
      'hd_scheduler_slots_busy 3',
      'hd_gpu_slots_busy{gpu="0"} 1',
      'hd_gpu_slots_busy{gpu="1"} 1',
      'hd_runner_launch_seconds_count{job_type="cpu_probe",launcher="process"} 1',
      'hd_runner_launch_seconds_count{job_type="gpu_probe",launcher="process"} 2',
    ]);
    // GPU 1's job ends: its GPU and its slot are free again, GPU 0's job still holds its own.
    launched.find((l) => l.gpuIds[0] === '1')!.finish();
    await expect
      .poll(scrape)
      .toEqual([
        'hd_scheduler_slots 4',
        'hd_scheduler_slots_busy 2',
        'hd_gpu_slots_busy{gpu="0"} 1',
        'hd_gpu_slots_busy{gpu="1"} 0',
        'hd_runner_launch_seconds_count{job_type="cpu_probe",launcher="process"} 1',
        'hd_runner_launch_seconds_count{job_type="gpu_probe",launcher="process"} 2',
      ]);
  } finally {
    for (const l of launched) l.finish();
    await scheduler.stop(0);
    await server.close();
  }
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
