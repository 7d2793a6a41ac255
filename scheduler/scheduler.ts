import { EventEmitter } from 'node:events';
import { EXIT_CODES, HdError, toHdError, type ErrorCode } from '../contract/errors.ts';
import { isJobType, JOB_TYPES, type Job, type LeasedJob } from '../contract/jobs.ts';
import type { Config } from '../control-plane/config.ts';
import type { ControlPlaneDb, WakeReason } from '../control-plane/db/transport.ts';
import type { Logger } from '../control-plane/logger.ts';
import type { Resources } from '../runner/handler.ts';
import { HANDLERS } from '../runner/handlers/index.ts';
import { planClaims, type GpuSlots } from './gpu.ts';
import type { LaunchedRunner, Launcher, LaunchRequest, RunnerExit } from './launcher.ts';
import type { AdoptedRunner, Reconciler } from './reconcile.ts';
import { Wakeup } from './wakeup.ts';

/** Resources assumed for a job type without a handler: its runner fails it at once. */
const UNKNOWN_TYPE_RESOURCES: Resources = { gpu: false, memoryMb: 256, cpus: 1, timeoutMs: 60_000 };
/** What a job type declares it needs (its handler's resources). */
export function handlerResources(jobType: string): Resources {
  return isJobType(jobType) ? HANDLERS[jobType].resources : UNKNOWN_TYPE_RESOURCES;
}

const RUNNER_RECORDED_EXITS = new Set<number>([
  EXIT_CODES.completed,
  EXIT_CODES.failedPermanent,
  EXIT_CODES.failedRetryable,
  EXIT_CODES.leaseLost,
  EXIT_CODES.interrupted,
]);

export interface SchedulerEvents {
  'job:claimed': [job: Job];
  /** A runner a previous scheduler started, taken over after a restart. */
  'job:adopted': [job: Job];
  'job:finished': [job: Job, exit: RunnerExit | undefined];
  'job:reaped': [job: Job];
  error: [error: HdError];
}

interface Running {
  job: LeasedJob;
  runner: LaunchedRunner | undefined;
  gpuIds: string[];
  done: Promise<void>;
}

export interface SchedulerDeps {
  db: ControlPlaneDb;
  launcher: Launcher;
  config: Config;
  log: Logger;
  /** GPU slots; without them GPU job types are not claimed. */
  gpus?: GpuSlots | undefined;
  /** Matches the launcher's leftovers with job rows on start and every HD_RECONCILE_INTERVAL_MS. */
  reconciler?: Reconciler | undefined;
  /** Resources of a job type; default its handler's declaration. */
  resourcesFor?: (jobType: string) => Resources;
}

/**
 * The daemon: claims jobs into free slots, starts one runner per job through a
 * launcher, classifies how it ended, and reaps expired leases. Holds no state the
 * database does not also hold.
 */
export class Scheduler extends EventEmitter<SchedulerEvents> {
  readonly #db: ControlPlaneDb;
  readonly #launcher: Launcher;
  readonly #config: Config;
  readonly #log: Logger;
  readonly #gpus: GpuSlots | undefined;
  readonly #reconciler: Reconciler | undefined;
  readonly #resourcesFor: (jobType: string) => Resources;
  readonly #running = new Map<string, Running>();
  readonly #wakeup = new Wakeup();
  #stopping = false;
  #loop: Promise<void> | undefined;
  #reaper: NodeJS.Timeout | undefined;
  #reconcileTimer: NodeJS.Timeout | undefined;
  #reconciling: Promise<void> | undefined;
  #unlisten: (() => Promise<void>) | undefined;

  constructor(deps: SchedulerDeps) {
    super();
    this.#db = deps.db;
    this.#launcher = deps.launcher;
    this.#config = deps.config;
    this.#log = deps.log;
    this.#gpus = deps.gpus;
    this.#reconciler = deps.reconciler;
    this.#resourcesFor = deps.resourcesFor ?? handlerResources;
  }

  get runningJobIds(): string[] {
    return [...this.#running.keys()];
  }

  async start(): Promise<void> {
    if (this.#loop) throw new Error('scheduler already started');
    this.#unlisten = await this.#db.listen((reason) => this.#onWake(reason));
    // Re-adopted runners take their slots (and GPUs) before anything new is claimed.
    await this.reconcile();
    await this.#reap();
    this.#reaper = setInterval(() => void this.#reap(), this.#config.HD_REAP_INTERVAL_MS);
    if (this.#reconciler)
      this.#reconcileTimer = setInterval(
        () => void this.reconcile(),
        this.#config.HD_RECONCILE_INTERVAL_MS,
      );
    this.#loop = this.#claimLoop();
    this.#log.info(
      {
        slots: this.#config.HD_SLOTS,
        gpus: this.#gpus?.usage() ?? {},
        job_types: this.#config.HD_JOB_TYPES ?? 'all',
        worker_id: this.#config.HD_WORKER_ID,
      },
      'scheduler started',
    );
  }

  /**
   * Stops claiming, lets running jobs finish for up to the grace period, then asks the
   * rest to stop; their runners hand the jobs back to the queue (and so does this
   * method, for any runner that does not).
   */
  async stop(graceMs = this.#config.HD_SHUTDOWN_GRACE_MS): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    this.#wakeup.signal();
    clearInterval(this.#reaper);
    clearInterval(this.#reconcileTimer);
    await this.#reconciling;
    const errors: unknown[] = [];
    await this.#loop?.catch((e: unknown) => errors.push(e));
    const allDone = () => Promise.all([...this.#running.values()].map((r) => r.done));
    if (this.#running.size > 0) {
      this.#log.info(
        { running: this.#running.size, grace_ms: graceMs },
        'waiting for running jobs',
      );
      const timer = new Promise<'timeout'>((resolve) =>
        setTimeout(resolve, graceMs, 'timeout').unref(),
      );
      if ((await Promise.race([allDone(), timer])) === 'timeout') {
        for (const r of this.#running.values()) r.runner?.stop('shutdown');
        await allDone();
      }
    }
    await this.#unlisten?.().catch((e: unknown) => errors.push(e));
    this.#log.info('scheduler stopped');
    if (errors.length > 0) throw new AggregateError(errors, 'scheduler stopped with errors');
  }

  #onWake(reason: WakeReason) {
    if (reason.kind === 'cancelled') {
      const running = this.#running.get(reason.jobId);
      if (running?.runner) {
        this.#log.info({ job_id: reason.jobId }, 'job cancelled; stopping its runner');
        running.runner.stop('cancelled');
      }
      return;
    }
    this.#wakeup.signal();
  }

  /**
   * Runs the reconciler once (if there is one): re-adopts runners a previous scheduler
   * left, cleans up the rest. Never runs twice at once.
   */
  async reconcile(): Promise<void> {
    const reconciler = this.#reconciler;
    if (!reconciler || this.#stopping) return;
    if (this.#reconciling) return this.#reconciling;
    this.#reconciling = (async () => {
      try {
        const { adopted } = await reconciler.reconcile(
          (jobId) => this.#running.get(jobId)?.job.attempts,
        );
        for (const runner of adopted) this.#adopt(runner);
      } catch (error) {
        this.#report(error, 'reconciling runner containers failed');
      } finally {
        this.#reconciling = undefined;
      }
    })();
    return this.#reconciling;
  }

  async #claimLoop(): Promise<void> {
    while (!this.#stopping) {
      let free = this.#config.HD_SLOTS - this.#running.size;
      const wanted = free;
      const plans = planClaims({
        free,
        gpuFree: this.#gpus?.free ?? 0,
        allowed: this.#config.HD_JOB_TYPES,
        known: JOB_TYPES,
        isGpuType: (type) => this.#resourcesFor(type).gpu,
      });
      for (const plan of plans) {
        if (free <= 0 || this.#stopping) break;
        try {
          const jobs = await this.#db.claimJobs({
            workerId: this.#config.HD_WORKER_ID,
            jobTypes: plan.jobTypes,
            limit: Math.min(plan.limit, free),
            leaseSeconds: this.#config.HD_LEASE_SECONDS,
          });
          for (const job of jobs) this.#supervise(job as LeasedJob);
          free -= jobs.length;
        } catch (error) {
          this.#report(error, 'claim failed; retrying after the poll interval');
        }
      }
      if (wanted > 0 && free === 0) continue;
      await this.#wakeup.wait(this.#config.HD_POLL_INTERVAL_MS);
    }
  }

  #supervise(job: LeasedJob, adopted?: AdoptedRunner): void {
    const entry: Running = { job, runner: adopted?.runner, gpuIds: [], done: Promise.resolve() };
    this.#running.set(job.id, entry);
    if (adopted) {
      for (const id of adopted.gpuIds) this.#gpus?.claim(id);
      entry.gpuIds = [...adopted.gpuIds];
    }
    this.emit(adopted ? 'job:adopted' : 'job:claimed', job);
    entry.done = this.#runToEnd(entry).finally(() => {
      for (const id of entry.gpuIds) this.#gpus?.release(id);
      this.#running.delete(job.id);
      this.#wakeup.signal();
    });
  }

  #adopt(adopted: AdoptedRunner): void {
    if (this.#running.has(adopted.job.id)) return;
    this.#log.info(
      { job_id: adopted.job.id, runner: adopted.runner.id, gpus: adopted.gpuIds },
      're-adopted a running runner',
    );
    this.#supervise(adopted.job, adopted);
  }

  async #runToEnd(entry: Running): Promise<void> {
    const { job } = entry;
    const resources = this.#resourcesFor(job.job_type);
    let exit: RunnerExit | undefined;
    try {
      if (!entry.runner) {
        if (resources.gpu && entry.gpuIds.length === 0) {
          const gpu = this.#gpus?.allocate();
          if (gpu === undefined) throw new Error('no free GPU slot for a GPU job');
          entry.gpuIds = [gpu];
        }
        const request: LaunchRequest & { gpuIds: readonly string[] } = {
          job,
          resources,
          gpuIds: entry.gpuIds,
        };
        entry.runner = await this.#launcher.launch(request);
      }
      if (this.#stopping && this.#config.HD_SHUTDOWN_GRACE_MS === 0) entry.runner.stop('shutdown');
      exit = await entry.runner.wait();
      await this.#settle(job, exit);
    } catch (error) {
      const err = toHdError(error);
      await this.#record(
        job,
        'LAUNCH_FAILED',
        `the runner could not be started: ${err.message}`,
        {},
      );
    }
    const final = await this.#db.getJob(job.id).catch(() => undefined);
    this.emit('job:finished', final ?? job, exit);
  }

  /** Records what the runner could not: a crash, a kill, a timeout, a shutdown. */
  async #settle(job: LeasedJob, exit: RunnerExit): Promise<void> {
    const details = {
      exit_code: exit.exitCode,
      signal: exit.signal,
      duration_ms: exit.durationMs,
      output_tail: exit.outputTail.slice(-20),
    };
    if (exit.stoppedFor === 'cancelled') return; // the cancel already failed the job
    if (exit.exitCode !== null && RUNNER_RECORDED_EXITS.has(exit.exitCode)) return;
    if (exit.stoppedFor === 'shutdown') {
      await this.#db
        .releaseJob(job.id, job.lease_token)
        .catch((e: unknown) => this.#ignoreLeaseLost(e));
      return;
    }
    if (exit.oomKilled) {
      await this.#record(
        job,
        'OOM_KILLED',
        `the runner ran out of memory (exit ${exit.exitCode ?? exit.signal})`,
        details,
      );
    } else if (exit.timedOut) {
      await this.#record(
        job,
        'PROCESSING_TIMEOUT',
        `the runner was killed after ${exit.durationMs} ms`,
        details,
      );
    } else {
      const how = exit.signal
        ? `was killed by ${exit.signal}`
        : `exited with code ${exit.exitCode}`;
      await this.#record(job, 'CRASHED', `the runner ${how} without reporting a result`, details);
    }
  }

  async #record(
    job: LeasedJob,
    code: ErrorCode,
    message: string,
    details: Record<string, unknown>,
  ) {
    const error = new HdError(code, message, { details });
    try {
      await this.#db.failJob(job.id, job.lease_token, {
        code,
        message,
        retryable: error.retryable,
        details: { ...details, worker_id: this.#config.HD_WORKER_ID },
      });
      this.#log.warn({ job_id: job.id, code }, message);
    } catch (e) {
      this.#ignoreLeaseLost(e);
    }
  }

  #ignoreLeaseLost(error: unknown) {
    const err = toHdError(error);
    if (err.code !== 'LEASE_LOST' && err.code !== 'CANCELLED')
      this.#report(err, 'could not record a job outcome');
  }

  async #reap(): Promise<void> {
    try {
      for (const job of await this.#db.reapExpiredLeases()) {
        this.#log.warn(
          { job_id: job.id, status: job.status, locked_by: job.error_details?.worker_id },
          'reaped an expired lease',
        );
        this.emit('job:reaped', job);
      }
    } catch (error) {
      this.#report(error, 'reaping expired leases failed');
    }
  }

  #report(error: unknown, message: string) {
    const err = toHdError(error);
    this.#log.error({ code: err.code, err: err.cause ?? err }, `${message}: ${err.message}`);
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }
}
