import type { EventEmitter } from 'node:events';
import http from 'node:http';
import client from 'prom-client';
import type { ClaimedJob, Job } from '../contract/jobs.ts';
import type { Config } from '../control-plane/config.ts';
import { PostgresDb } from '../control-plane/db/postgres.ts';
import { SupabaseDb } from '../control-plane/db/supabase.ts';
import type { ControlPlaneDb } from '../control-plane/db/transport.ts';
import type { GpuSlots } from './gpu.ts';
import { registerCapacityMetrics } from './metrics-capacity.ts';
import type { Scheduler, SchedulerEvents } from './scheduler.ts';
import type { WebhookDelivery } from './webhooks.ts';
import type { LlmGatewayEvents } from './llm-gateway/server.ts';

/** hd_queue_metrics (00013): the shared queue at scrape time. */
interface QueueReport {
  job_types: { job_type: string; queued: number; running: number; oldest_queued_seconds: number }[];
  webhooks: { pending: number; delivered: number; failed: number };
}

const seconds = (from: Date | string | null, to: Date | string | null) =>
  from && to ? (new Date(to).getTime() - new Date(from).getTime()) / 1000 : undefined;

/**
 * The scheduler's Prometheus metrics (prom-client, its own registry): what this scheduler
 * did, from its events, and what the queue holds, read from the database at scrape time.
 */
export class SchedulerMetrics {
  readonly registry = new client.Registry();
  readonly #claimed: client.Counter<'job_type'>;
  readonly #finished: client.Counter<'job_type' | 'status' | 'error_code'>;
  readonly #runSeconds: client.Histogram<'job_type'>;
  readonly #waitSeconds: client.Histogram<'job_type'>;
  readonly #running: client.Gauge<'job_type'>;
  readonly #llmTokens: client.Counter<'model' | 'kind'>;

  constructor(queueReport: () => Promise<QueueReport>) {
    const registers = [this.registry];
    this.#claimed = new client.Counter({
      name: 'hd_jobs_claimed_total',
      help: 'Jobs this scheduler claimed',
      labelNames: ['job_type'],
      registers,
    });
    this.#finished = new client.Counter({
      name: 'hd_jobs_finished_total',
      help: 'Jobs this scheduler saw end an attempt, by the status recorded and error code',
      labelNames: ['job_type', 'status', 'error_code'],
      registers,
    });
    const buckets = [0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600];
    this.#runSeconds = new client.Histogram({
      name: 'hd_job_run_seconds',
      help: 'Time from claim to the end of an attempt',
      labelNames: ['job_type'],
      buckets,
      registers,
    });
    this.#waitSeconds = new client.Histogram({
      name: 'hd_job_queue_wait_seconds',
      help: 'Time from runnable (run_after) to claim',
      labelNames: ['job_type'],
      buckets,
      registers,
    });
    this.#running = new client.Gauge({
      name: 'hd_scheduler_jobs_running',
      help: 'Jobs running in this scheduler now',
      labelNames: ['job_type'],
      registers,
    });
    this.#llmTokens = new client.Counter({
      name: 'hd_llm_tokens_total',
      help: 'Tokens providers reported for requests through this scheduler’s LLM gateway, by model and kind (prompt, completion, cached)',
      labelNames: ['model', 'kind'],
      registers,
    });
    // Gauges of the shared queue, filled from one database call per scrape.
    let report: Promise<QueueReport> | undefined;
    const fresh = () =>
      (report ??= queueReport().finally(() => setImmediate(() => (report = undefined))));
    new client.Gauge({
      name: 'hd_queue_depth',
      help: 'Queued jobs (all schedulers), by job type',
      labelNames: ['job_type', 'status'],
      registers,
      async collect() {
        this.reset();
        for (const t of (await fresh()).job_types) {
          this.set({ job_type: t.job_type, status: 'queued' }, Number(t.queued));
          this.set({ job_type: t.job_type, status: 'running' }, Number(t.running));
        }
      },
    });
    new client.Gauge({
      name: 'hd_queue_oldest_age_seconds',
      help: 'Age of the oldest runnable queued job, by job type',
      labelNames: ['job_type'],
      registers,
      async collect() {
        this.reset();
        for (const t of (await fresh()).job_types)
          this.set({ job_type: t.job_type }, Number(t.oldest_queued_seconds));
      },
    });
    new client.Gauge({
      name: 'hd_webhook_deliveries',
      help: 'Webhook outbox rows by status',
      labelNames: ['status'],
      registers,
      async collect() {
        const w = (await fresh()).webhooks;
        for (const status of ['pending', 'delivered', 'failed'] as const)
          this.set({ status }, Number(w[status]));
      },
    });
  }

  /** Counts the tokens of the LLM gateway's requests. */
  attachGateway(gateway: EventEmitter<LlmGatewayEvents>): void {
    gateway.on('usage', (model, usage) => {
      this.#llmTokens.inc({ model, kind: 'prompt' }, usage.prompt);
      this.#llmTokens.inc({ model, kind: 'completion' }, usage.completion);
      this.#llmTokens.inc({ model, kind: 'cached' }, usage.cached);
    });
  }

  /** Counts what the scheduler does, from its events. */
  attach(scheduler: EventEmitter<SchedulerEvents>): void {
    scheduler.on('job:claimed', (job: ClaimedJob) => {
      this.#claimed.inc({ job_type: job.job_type });
      this.#running.inc({ job_type: job.job_type });
      const wait = seconds(job.run_after, job.started_at);
      if (wait !== undefined)
        this.#waitSeconds.observe({ job_type: job.job_type }, Math.max(0, wait));
    });
    // A re-adopted runner is running here too, and its end is counted below.
    scheduler.on('job:adopted', (job: ClaimedJob) => this.#running.inc({ job_type: job.job_type }));
    scheduler.on('job:finished', (job: Job) => {
      this.#running.dec({ job_type: job.job_type });
      this.#finished.inc({
        job_type: job.job_type,
        status: job.status,
        error_code: job.error_code ?? '',
      });
      const run = seconds(job.started_at, job.finished_at ?? job.updated_at);
      if (run !== undefined) this.#runSeconds.observe({ job_type: job.job_type }, Math.max(0, run));
    });
  }
}

/** The queue report through the transport's pool or PostgREST. */
export function queueReportOf(db: ControlPlaneDb): () => Promise<QueueReport> {
  if (db instanceof PostgresDb)
    return async () =>
      (await db.pool.query<{ r: QueueReport }>('select public.hd_queue_metrics() as r')).rows[0]!.r;
  if (db instanceof SupabaseDb) return () => db.rpc<QueueReport>('hd_queue_metrics', {});
  throw new Error('metrics: unknown database transport');
}

/**
 * The scheduler's metrics server on HD_METRICS_ADDRESS: its events counted, the queue read
 * per scrape; ready while the database answers (and the Docker engine, for that launcher).
 */
export async function startMetricsServer(
  config: Pick<Config, 'HD_METRICS_ADDRESS' | 'HD_LAUNCHER' | 'HD_SLOTS'>,
  db: ControlPlaneDb,
  scheduler: Scheduler,
  parts: {
    gpus?: GpuSlots | undefined;
    webhooks?: WebhookDelivery | undefined;
    gateway?: EventEmitter<LlmGatewayEvents> | undefined;
  } = {},
) {
  const report = queueReportOf(db);
  const metrics = new SchedulerMetrics(report);
  metrics.attach(scheduler);
  const capacity = {
    slots: config.HD_SLOTS,
    busy: () => scheduler.runningJobIds.length,
    gpus: parts.gpus,
    launcher: config.HD_LAUNCHER,
  };
  registerCapacityMetrics(metrics.registry, capacity, scheduler, parts.webhooks);
  if (parts.gateway) metrics.attachGateway(parts.gateway);
  return serveMetrics(metrics, config.HD_METRICS_ADDRESS!, async () => {
    await report().catch((error: unknown) => {
      throw new Error(`database: ${(error as Error).message}`);
    });
    if (config.HD_LAUNCHER === 'docker') {
      const { default: Docker } = await import('dockerode');
      await new Docker().ping().catch((error: unknown) => {
        throw new Error(`docker engine: ${(error as Error).message}`);
      });
    }
    return undefined;
  });
}

/**
 * Serves /metrics, /healthz (the process answers) and /readyz (`ready` resolves to
 * undefined, or to why not) on `address` (host:port). Resolves once listening.
 */
export async function serveMetrics(
  metrics: SchedulerMetrics,
  address: string,
  ready: () => Promise<string | undefined>,
): Promise<{ port: number; close(): Promise<void> }> {
  const [host, port] = [
    address.slice(0, address.lastIndexOf(':')),
    Number(address.split(':').pop()),
  ];
  const server = http.createServer((req, res) => {
    const reply = (status: number, body: string, type = 'text/plain; charset=utf-8') =>
      res.writeHead(status, { 'content-type': type }).end(body);
    if (req.url === '/healthz') return reply(200, 'ok\n');
    if (req.url === '/readyz')
      return void ready().then(
        (why) => (why ? reply(503, `${why}\n`) : reply(200, 'ready\n')),
        (error: unknown) => reply(503, `${(error as Error).message}\n`),
      );
    if (req.url === '/metrics')
      return void metrics.registry.metrics().then(
        (text) => reply(200, text, metrics.registry.contentType),
        (error: unknown) => reply(500, `${(error as Error).message}\n`),
      );
    reply(404, 'not found\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host.replace(/^\[|\]$/g, ''), resolve);
  });
  return {
    port: (server.address() as { port: number }).port,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
