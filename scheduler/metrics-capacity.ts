import type { EventEmitter } from 'node:events';
import client from 'prom-client';
import type { GpuSlots } from './gpu.ts';
import type { SchedulerEvents } from './scheduler.ts';
import type { WebhookDeliveryEvents } from './webhooks.ts';

/** What this scheduler has to work with: its slots, GPUs and the runners it holds now. */
export interface Capacity {
  /** HD_SLOTS. */
  slots: number;
  /** Jobs holding a slot now (claimed or re-adopted, not yet ended). */
  busy(): number;
  gpus?: GpuSlots | undefined;
  /** HD_LAUNCHER, a label of the launch histogram. */
  launcher: string;
}

// Container create + start is tens of ms to seconds; a pull or a busy engine, more.
const LAUNCH_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/**
 * Slots and GPUs (read at scrape time from the scheduler's own state, so a re-adopted
 * runner counts too), runner launch latency and webhook delivery attempts (from events).
 */
export function registerCapacityMetrics(
  registry: client.Registry,
  capacity: Capacity,
  scheduler: EventEmitter<SchedulerEvents>,
  webhooks?: EventEmitter<WebhookDeliveryEvents>,
): void {
  const registers = [registry];
  new client.Gauge({
    name: 'hd_scheduler_slots',
    help: 'Job slots of this scheduler (HD_SLOTS)',
    registers,
    collect() {
      this.set(capacity.slots);
    },
  });
  new client.Gauge({
    name: 'hd_scheduler_slots_busy',
    help: 'Job slots of this scheduler holding a job now',
    registers,
    collect() {
      this.set(capacity.busy());
    },
  });
  const gpus = capacity.gpus;
  if (gpus) {
    new client.Gauge({
      name: 'hd_gpu_slots',
      help: 'Job slots per GPU (HD_GPU_JOBS_PER_GPU)',
      labelNames: ['gpu'],
      registers,
      collect() {
        for (const gpu of gpus.ids) this.set({ gpu }, gpus.perGpu);
      },
    });
    new client.Gauge({
      name: 'hd_gpu_slots_busy',
      help: 'Jobs pinned to each GPU now',
      labelNames: ['gpu'],
      registers,
      collect() {
        this.reset();
        for (const gpu of gpus.ids) this.set({ gpu }, 0);
        for (const [gpu, jobs] of Object.entries(gpus.usage())) this.set({ gpu }, jobs);
      },
    });
  }
  const launches = new client.Histogram({
    name: 'hd_runner_launch_seconds',
    help: 'Time the launcher took to start a runner (container create + start, or spawn)',
    labelNames: ['job_type', 'launcher'],
    buckets: LAUNCH_BUCKETS,
    registers,
  });
  scheduler.on('runner:launched', (job, seconds) =>
    launches.observe({ job_type: job.job_type, launcher: capacity.launcher }, seconds),
  );
  const attempts = new client.Counter({
    name: 'hd_webhook_attempts_total',
    help: 'Webhook delivery attempts of this scheduler, by outcome',
    labelNames: ['outcome', 'event_type'],
    registers,
  });
  webhooks?.on('attempt', (outcome, event) =>
    attempts.inc({ outcome, event_type: event.event_type }),
  );
}
