import { EventEmitter } from 'node:events';
import { HdError, toHdError } from '../contract/errors.ts';
import { JOB_TYPES, type Job, type ClaimedJob } from '../contract/jobs.ts';
import type { Config } from '../control-plane/config.ts';
import type { ControlPlaneDb, WakeReason } from '../control-plane/db/transport.ts';
import type { Logger } from '../control-plane/logger.ts';
import type { Redactor } from '../control-plane/redact.ts';
import type { Resources } from '../runner/handler.ts';
import { handlerResources } from '../runner/handlers/index.ts';
import { planClaims, type GpuSlots } from './gpu.ts';
import { JobLogBook, type JobLogCollector, type JobLogLimits } from './job-logs.ts';
import type {
  LaunchedRunner,
  Launcher,
  LaunchRequest,
  RunnerExit,
  WarmRunner,
  WarmLogin,
} from './launcher.ts';
import { OutcomeRecorder } from './outcome.ts';
import { Backoff, isTransient, OutageNotice, sleep } from './retry.ts';
import type { AdoptedRunner, Reconciler } from './reconcile.ts';
import { WarmPool } from './warm-pool.ts';
import { Wakeup } from './wakeup.ts';

export { handlerResources };

// A warm runner's login outlives its idle limit by this much (clocks, the time to start it),
// as a job's own credential does its time limit.
const WARM_LOGIN_GRACE_MS = 120_000;

/**
 * A job the scheduler cannot read back at its end (the database is gone): what the claim
 * told it, still running as far as it knows; created_at unknown (its run_after stands in).
 */
function lastKnown(job: ClaimedJob): Job {
  return {
    ...job,
    status: 'running',
    error: null,
    error_code: null,
    error_details: null,
    locked_by: null,
    progress_percent: 0,
    progress_step: null,
    container_id: null,
    created_at: job.run_after,
    updated_at: job.started_at ?? job.run_after,
    finished_at: null,
  };
}

export interface SchedulerEvents {
  /** The claim's columns only (hd_claim_leases), not the whole row. */
  'job:claimed': [job: ClaimedJob];
  /** A runner a previous scheduler started, taken over after a restart. */
  'job:adopted': [job: ClaimedJob];
  'job:finished': [job: Job, exit: RunnerExit | undefined];
  /**
   * A runner started for a claimed job; `seconds`: how long the launcher took (create +
   * start, or handing it to a warm runner); `warm`: it went to a warm runner.
   */
  'runner:launched': [job: ClaimedJob, seconds: number, warm: boolean];
  /** A warm runner (HD_WARM_RUNNERS) is loaded and waits for a job. */
  'warm:ready': [runnerId: string];
  /** A warm runner ended without a job (its idle limit, a crash, the scheduler stopping). */
  'warm:ended': [runnerId: string];
  'job:reaped': [job: Job];
  error: [error: HdError];
}

interface Running {
  job: ClaimedJob;
  runner: LaunchedRunner | undefined;
  gpuIds: string[];
  /** The runner's output, on its way into hd_job_logs. */
  logs: JobLogCollector;
  done: Promise<void>;
  /** Ends the staging of the job's input (stageInput) at a shutdown past the grace. */
  staging?: AbortController;
  /** The warm runner taken for the job at its claim (so that no fill ends it meanwhile). */
  warm?: WarmRunner | undefined;
  /** A cancel notice came before its runner was launched: looked at once it is. */
  cancelNoticed?: boolean;
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
  /** Batching and memory limits of the runner output stored in hd_job_logs. */
  jobLogs?: Partial<JobLogLimits> | undefined;
  /** Hides secrets, stack frames and host paths in what tenants read (logs, job errors). */
  redactor?: Redactor | undefined;
  /** Called once a job's runner has ended: drops what runnerEnv made for it (a job role). */
  releaseRunner?: ((job: ClaimedJob) => Promise<void>) | undefined;
  /**
   * The job's own runner environment: credentials scoped to it (scheduler/runner-access.ts);
   * with the login its warm runner was started with, when it goes to one.
   */
  runnerEnv?:
    | ((job: ClaimedJob, resources: Resources, warm?: WarmLogin) => Promise<Record<string, string>>)
    | undefined;
  /** A database login for a warm runner, valid for `validForMs` (RunnerAccess.warmLogin). */
  warmLogin?: ((validForMs: number) => Promise<WarmLogin | undefined>) | undefined;
  /**
   * Readies the job's input before its runner starts, within its slot (an input by URL
   * fetched and stored: scheduler/url-input.ts); resolves to the job as recorded after.
   */
  stageInput?: ((job: ClaimedJob, signal: AbortSignal) => Promise<ClaimedJob>) | undefined;
  /**
   * Runners kept started for idle slots, up to this many, when the launcher can start them
   * before a job (`prestart`: the process launcher); CPU jobs go to them. Default 0.
   */
  warmRunners?: number | undefined;
}

/**
 * The daemon: claims jobs into free slots, starts one runner per job through a
 * launcher, stores its output in hd_job_logs, classifies how it ended, and reaps expired
 * leases. Holds no state the database does not also hold.
 */
export class Scheduler extends EventEmitter<SchedulerEvents> {
  readonly #db: ControlPlaneDb;
  readonly #launcher: Launcher;
  readonly #config: Config;
  readonly #log: Logger;
  readonly #gpus: GpuSlots | undefined;
  readonly #reconciler: Reconciler | undefined;
  readonly #resourcesFor: (jobType: string) => Resources;
  readonly #runnerEnv: SchedulerDeps['runnerEnv'];
  readonly #releaseRunner: SchedulerDeps['releaseRunner'];
  readonly #stageInput: SchedulerDeps['stageInput'];
  readonly #logs: JobLogBook;
  readonly #outcomes: OutcomeRecorder;
  readonly #running = new Map<string, Running>();
  readonly #wakeup = new Wakeup();
  readonly #warm: WarmPool | undefined;
  /** The login each warm runner was started with, where runners get roles of their own. */
  readonly #warmLogins = new Map<WarmRunner, WarmLogin>();
  readonly #warmLoginsDropping = new Set<Promise<void>>();
  readonly #warmRunners: number;
  #stopping = false;
  /** Aborted by stop(): ends the waits for the database at start. */
  readonly #stopped = new AbortController();
  /** Aborted when stop()'s grace is over: outcomes still unrecorded are given up. */
  readonly #graceEnded = new AbortController();
  /** Said while the database (at start) or the launcher (claiming paused) is down. */
  readonly #dbOutage: OutageNotice;
  readonly #launcherOutage: OutageNotice;
  #starting: Promise<void> | undefined;
  #loop: Promise<void> | undefined;
  #reaper: NodeJS.Timeout | undefined;
  #reconcileTimer: NodeJS.Timeout | undefined;
  #reconciling: Promise<void> | undefined;
  #reconcileDone = false;
  /** stop() has asked every runner to stop: one launched after that is stopped at once. */
  #graceOver = false;
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
    this.#runnerEnv = deps.runnerEnv;
    this.#releaseRunner = deps.releaseRunner;
    this.#stageInput = deps.stageInput;
    this.#warmRunners = deps.warmRunners ?? 0;
    const prestart = deps.launcher.prestart?.bind(deps.launcher);
    if (prestart && this.#warmRunners > 0)
      this.#warm = new WarmPool(() => this.#prestart(prestart, deps.warmLogin), deps.log, {
        ready: (id) => this.emit('warm:ready', id),
        ended: (id) => {
          this.emit('warm:ended', id);
          this.#wakeup.signal(); // a slot's warm runner to replace
        },
      });
    this.#dbOutage = new OutageNotice(deps.log);
    this.#launcherOutage = new OutageNotice(deps.log);
    this.#logs = new JobLogBook({
      db: deps.db,
      log: deps.log,
      limits: deps.jobLogs,
      redactor: deps.redactor,
    });
    this.#outcomes = new OutcomeRecorder({
      db: deps.db,
      workerId: deps.config.HD_WORKER_ID,
      log: deps.log,
      signal: this.#graceEnded.signal,
      onError: (err) => this.#report(err, 'could not record a job outcome'),
      redactor: deps.redactor,
    });
  }

  get runningJobIds(): string[] {
    return [...this.#running.keys()];
  }

  /**
   * Starts claiming. While the database is out of reach (a host that boots both, a
   * restarting PostgreSQL) it waits, saying so every few seconds; stop() ends the wait.
   */
  async start(): Promise<void> {
    if (this.#starting) throw new Error('scheduler already started');
    this.#starting = this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    const unlisten = await this.#untilReachable(() =>
      this.#db.listen((reason) => this.#onWake(reason)),
    );
    if (!unlisten) return; // stopped while waiting
    this.#unlisten = unlisten;
    // Re-adopted runners take their slots (and GPUs) before anything new is claimed.
    await this.reconcile();
    await this.#reap();
    if (this.#stopping) return;
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
    this.#stopped.abort();
    this.#wakeup.signal();
    await this.#starting?.catch(() => {}); // start()'s caller sees its error
    clearInterval(this.#reaper);
    clearInterval(this.#reconcileTimer);
    await this.#reconciling;
    const errors: unknown[] = [];
    await this.#loop?.catch((e: unknown) => errors.push(e));
    await this.#warm?.close();
    await Promise.all(this.#warmLoginsDropping); // before the caller closes the database
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
        this.#graceOver = true;
        this.#graceEnded.abort();
        for (const r of this.#running.values()) {
          r.runner?.stop('shutdown');
          r.staging?.abort(new HdError('WORKER_SHUTDOWN', 'the scheduler is stopping'));
        }
        await allDone();
      }
    }
    await Promise.all(this.#warmLoginsDropping); // those of runners discarded meanwhile
    // Output still on its way (the database was down) gets a last chance, then is counted.
    const lostLogLines = await this.#logs.close();
    await this.#unlisten?.().catch((e: unknown) => errors.push(e));
    this.#log.info({ log_lines_lost: lostLogLines }, 'scheduler stopped');
    if (errors.length > 0) throw new AggregateError(errors, 'scheduler stopped with errors');
  }

  #onWake(reason: WakeReason) {
    if (reason.kind === 'cancelled') {
      void this.#stopIfCancelled(reason.jobId);
      return;
    }
    this.#wakeup.signal();
  }

  /**
   * A cancel notice is only a hint: any session of the database can send one (a runner's
   * role hd_runner too, naming another tenant's job), so the job's row decides. Should the
   * read fail, the runner's own heartbeat still finds the lease gone.
   */
  async #stopIfCancelled(jobId: string) {
    const running = this.#running.get(jobId);
    if (!running) return;
    if (!running.runner) {
      running.cancelNoticed = true; // still launching: #runToEnd looks again once launched
      return;
    }
    const job = await this.#db.getJob(jobId).catch(() => undefined);
    if (!job || (job.status === 'running' && job.lease_token === running.job.lease_token)) return;
    this.#log.info({ job_id: jobId }, 'job cancelled; stopping its runner');
    running.runner.stop('cancelled');
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
          {
            follow: (job, seqBase) => this.#logs.sinkFor(job, seqBase),
            store: (job, seqBase, lines) => this.#logs.store(job, seqBase, lines),
          },
        );
        for (const runner of adopted) this.#adopt(runner);
        this.#reconcileDone = true;
      } catch (error) {
        this.#report(error, 'reconciling runner containers failed');
      } finally {
        this.#logs.closeUnopened();
        this.#reconciling = undefined;
      }
    })();
    return this.#reconciling;
  }

  async #claimLoop(): Promise<void> {
    const backoff = new Backoff(
      this.#config.HD_POLL_INTERVAL_MS / 4,
      this.#config.HD_POLL_INTERVAL_MS,
    );
    while (!this.#stopping) {
      let free = this.#config.HD_SLOTS - this.#running.size;
      const wanted = free;
      // A job claimed while its runner cannot start would only spend an attempt; one
      // claimed before the reconcile could take the slot of a runner still to re-adopt.
      if (free > 0 && !((await this.#launcherReady()) && (await this.#reconciled()))) {
        await this.#wakeup.wait(backoff.next());
        continue;
      }
      backoff.reset();
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
          const jobs = await this.#db.claimLeases({
            workerId: this.#config.HD_WORKER_ID,
            jobTypes: plan.jobTypes,
            limit: Math.min(plan.limit, free),
            leaseSeconds: this.#config.HD_LEASE_SECONDS,
            accountMaxRunning: this.#config.HD_ACCOUNT_MAX_RUNNING,
          });
          for (const job of jobs) this.#supervise(job);
          free -= jobs.length;
        } catch (error) {
          this.#report(error, 'claim failed; retrying after the poll interval');
        }
      }
      if (wanted > 0 && free === 0) continue;
      this.#warm?.fill(Math.min(this.#warmRunners, this.#config.HD_SLOTS - this.#running.size));
      await this.#wakeup.wait(this.#config.HD_POLL_INTERVAL_MS);
    }
  }

  #supervise(job: ClaimedJob, adopted?: AdoptedRunner): void {
    const logs = this.#logs.open(job);
    const entry: Running = {
      job,
      runner: adopted?.runner,
      gpuIds: [],
      logs,
      done: Promise.resolve(),
    };
    this.#running.set(job.id, entry);
    if (adopted) {
      for (const id of adopted.gpuIds) this.#gpus?.claim(id);
      entry.gpuIds = [...adopted.gpuIds];
    } else if (!this.#resourcesFor(job.job_type).gpu) entry.warm = this.#warm?.take();
    this.emit(adopted ? 'job:adopted' : 'job:claimed', job);
    entry.done = this.#runToEnd(entry).finally(async () => {
      const unused = entry.warm; // the job ended before its runner started (input not staged)
      unused?.discard();
      for (const id of entry.gpuIds) this.#gpus?.release(id);
      this.#running.delete(job.id);
      this.#wakeup.signal();
      await unused?.ended; // its login dropped before stop() returns
    });
  }

  #adopt(adopted: AdoptedRunner): void {
    if (this.#running.has(adopted.job.id)) return; // its collector is finished by reconcile()
    this.#log.info(
      { job_id: adopted.job.id, runner: adopted.runner.id, gpus: adopted.gpuIds },
      're-adopted a running runner',
    );
    this.#supervise(adopted.job, adopted);
  }

  async #runToEnd(entry: Running): Promise<void> {
    const { logs } = entry;
    if (!entry.runner && this.#stageInput && !(await this.#staged(entry))) {
      await logs.finish();
      const final = await this.#db.getJob(entry.job.id).catch(() => undefined);
      this.emit('job:finished', final ?? lastKnown(entry.job), undefined);
      return;
    }
    const job = entry.job;
    const resources = this.#resourcesFor(job.job_type);
    let exit: RunnerExit | undefined;
    try {
      if (!entry.runner) {
        if (resources.gpu && entry.gpuIds.length === 0) {
          const gpu = this.#gpus?.allocate();
          if (gpu === undefined) throw new Error('no free GPU slot for a GPU job');
          entry.gpuIds = [gpu];
        }
        const warmLogin = entry.warm && this.#warmLogins.get(entry.warm);
        const env = await this.#runnerEnv?.(job, resources, warmLogin);
        const launchedFrom = performance.now();
        const request = {
          job,
          resources,
          gpuIds: entry.gpuIds,
          env,
          onOutput: (line: string) => logs.push(line),
          logSeqBase: await logs.seqBase,
        };
        entry.runner = await this.#toWarmRunner(entry, request);
        const warm = entry.runner !== undefined;
        // A runner started for it instead needs a credential of its own.
        if (!warm && warmLogin) request.env = await this.#runnerEnv?.(job, resources);
        entry.runner ??= await this.#launcher.launch(request);
        this.emit('runner:launched', job, (performance.now() - launchedFrom) / 1000, warm);
        // A runner that does not heartbeat (hung) would never learn of that cancel itself.
        if (entry.cancelNoticed) void this.#stopIfCancelled(job.id);
      }
      // Launched while stopping, after the grace (or with none): it missed stop()'s call.
      if (this.#graceOver || (this.#stopping && this.#config.HD_SHUTDOWN_GRACE_MS === 0))
        entry.runner.stop('shutdown');
      exit = await entry.runner.wait();
      // What the launcher kept of the runner's output (its container, its output file)
      // goes once the output is stored: awaited below when that took no longer than the
      // final flush, else later (the database lags).
      const runner = entry.runner;
      let drained = false;
      const dropped = logs.done().then(async () => {
        drained = true;
        await runner.outputStored?.().catch(() => {});
      });
      // Before settling: where the scheduler records the outcome, the lease ends with it.
      await logs.finish();
      await this.#outcomes.settle(job, exit);
      if (drained) await dropped;
    } catch (error) {
      await logs.finish();
      const message = `the runner could not be started: ${toHdError(error).message}`;
      // The platform's fault (the engine or the database went down after the claim)
      // costs no attempt.
      const unreachable = toHdError(error).code === 'DATABASE_UNAVAILABLE';
      if (!entry.runner && (unreachable || !(await this.#launcherReady())))
        await this.#outcomes.release(job, message);
      else await this.#outcomes.fail(job, 'LAUNCH_FAILED', message, {});
    }
    await this.#releaseRunner?.(job).catch((error: unknown) =>
      this.#report(error, "could not drop the runner's job role"),
    );
    const final = await this.#db.getJob(job.id).catch(() => undefined);
    this.emit('job:finished', final ?? lastKnown(job), exit);
  }

  /**
   * Starts a warm runner with a login of its own where runners get one, valid while it may
   * wait (its job's credential extends it to the job's time limit), dropped when the
   * runner ends without a job.
   */
  async #prestart(
    prestart: NonNullable<Launcher['prestart']>,
    warmLogin: SchedulerDeps['warmLogin'],
  ): Promise<WarmRunner> {
    const login = await warmLogin?.(this.#config.HD_WARM_RUNNER_IDLE_MS + WARM_LOGIN_GRACE_MS);
    const release = async () =>
      login
        ?.release()
        .catch((error: unknown) => this.#report(error, "could not drop a warm runner's login"));
    let runner: WarmRunner;
    try {
      runner = await prestart(login?.env);
    } catch (error) {
      await release();
      throw error;
    }
    if (login) {
      this.#warmLogins.set(runner, login);
      void runner.ended.then(() => {
        this.#warmLogins.delete(runner);
        const dropping = release().finally(() => this.#warmLoginsDropping.delete(dropping));
        this.#warmLoginsDropping.add(dropping);
      });
    }
    return runner;
  }

  /**
   * Hands a CPU job to the warm runner taken at its claim, if any; undefined when there
   * was none, or when it ended before it took the job (which costs the job nothing: it
   * starts cold).
   */
  async #toWarmRunner(entry: Running, request: LaunchRequest): Promise<LaunchedRunner | undefined> {
    const warm = entry.warm;
    entry.warm = undefined;
    if (!warm) return undefined;
    try {
      return await warm.assign(request);
    } catch (error) {
      this.#log.warn(
        { job_id: request.job.id, runner: warm.id, err: toHdError(error) },
        'a warm runner ended before it took its job; starting a runner for it',
      );
      return undefined;
    }
  }

  /**
   * Stages the job's input; false when that ended the attempt, with its outcome recorded:
   * the failure's own code (a URL refused, not found, too large), or the job handed back
   * for a shutdown or a database out of reach; nothing where the lease moved on.
   */
  async #staged(entry: Running): Promise<boolean> {
    entry.staging = new AbortController();
    try {
      entry.job = await this.#stageInput!(entry.job, entry.staging.signal);
      return true;
    } catch (error) {
      const err = toHdError(error);
      if (err.code === 'WORKER_SHUTDOWN' || err.code === 'DATABASE_UNAVAILABLE')
        await this.#outcomes.release(entry.job, `its input was not staged: ${err.message}`);
      else if (err.code !== 'LEASE_LOST' && err.code !== 'CANCELLED')
        await this.#outcomes.fail(entry.job, err.code, err.message, err.details ?? {});
      return false;
    } finally {
      entry.staging = undefined;
    }
  }

  /** Whether the reconciler (if any) has once run to the end; runs it if not. */
  async #reconciled(): Promise<boolean> {
    if (!this.#reconciler || this.#reconcileDone) return true;
    await this.reconcile();
    return this.#reconcileDone;
  }

  /** Whether the launcher can start runners now (the Docker engine answers). */
  async #launcherReady(): Promise<boolean> {
    if (!this.#launcher.ready) return true;
    try {
      await this.#launcher.ready();
      this.#launcherOutage.up('the launcher is back; claiming resumes');
      return true;
    } catch (error) {
      this.#launcherOutage.down(toHdError(error), 'claiming paused: runners cannot be started');
      return false;
    }
  }

  /** `connect()`'s result once the database answers; undefined when stopped first. */
  async #untilReachable<T>(connect: () => Promise<T>): Promise<T | undefined> {
    const backoff = new Backoff();
    while (!this.#stopping) {
      try {
        const result = await connect();
        this.#dbOutage.up('the database is reachable; starting');
        return result;
      } catch (error) {
        const err = toHdError(error);
        if (!isTransient(err)) throw err;
        this.#dbOutage.down(err, 'the database is not reachable');
        await sleep(backoff.next(), this.#stopped.signal);
      }
    }
    return undefined;
  }

  async #reap(): Promise<void> {
    try {
      // Also this scheduler's report-in: the reaper spares the leases of a scheduler that
      // was cut off from the database until it is back (00019).
      const reporter = {
        workerId: this.#config.HD_WORKER_ID,
        everySeconds: Math.ceil(this.#config.HD_REAP_INTERVAL_MS / 1000),
        leaseSeconds: this.#config.HD_LEASE_SECONDS,
      };
      for (const job of await this.#db.reapExpiredLeases(reporter)) {
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
