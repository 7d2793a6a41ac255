import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { setImmediate } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { EXIT_CODES, HdError, toHdError } from '../contract/errors.ts';
import {
  isJobType,
  JOB_TYPES,
  PAYLOAD_SCHEMAS,
  PLANNED_JOB_TYPES,
  takesUrlInput,
  urlForLog,
  type Job,
  type JobType,
  type LeasedJob,
} from '../contract/jobs.ts';
import type { Config } from '../control-plane/config.ts';
import type { ControlPlaneDb } from '../control-plane/db/transport.ts';
import type { Logger } from '../control-plane/logger.ts';
import { Redactor, secretsOf } from '../control-plane/redact.ts';
import { TenantStorage, type StorageBackend } from '../control-plane/storage/storage.ts';
import { artifactsOf } from '../control-plane/db/artifacts.ts';
import { ArtifactUploader } from './artifacts.ts';
import type { Handler, HandlerContext } from './handler.ts';
import { loadHandler } from './handlers/load.ts';
import { LlmClient, llmSettings } from './llm/client.ts';
import { phaseOf, ProgressSender } from './progress-sender.ts';
import { Backoff, sleep } from '../scheduler/retry.ts';

export type RunOutcome =
  | { outcome: 'completed'; job: Job }
  | { outcome: 'failed' | 'retrying'; job: Job; error: HdError }
  | { outcome: 'lease_lost'; error: HdError }
  | { outcome: 'released'; error: HdError }
  /** Nothing recorded: the database stayed out of reach (the scheduler hands the job back). */
  | { outcome: 'database_lost'; error: HdError }
  | { outcome: 'not_runnable'; message: string };

export const OUTCOME_EXIT_CODE: Record<RunOutcome['outcome'], number> = {
  completed: EXIT_CODES.completed,
  failed: EXIT_CODES.failedPermanent,
  retrying: EXIT_CODES.failedRetryable,
  lease_lost: EXIT_CODES.leaseLost,
  released: EXIT_CODES.interrupted,
  database_lost: EXIT_CODES.databaseLost,
  not_runnable: EXIT_CODES.usage,
};

export interface RunJobOptions {
  db: ControlPlaneDb;
  storage: StorageBackend;
  config: Config;
  log: Logger;
  jobId: string;
  /** Lease handed over by a scheduler; without it the job is claimed here. */
  leaseToken?: string | undefined;
  /** Aborted when the process is asked to stop: the job is handed back to the queue. */
  interrupt?: AbortSignal | undefined;
}

const PROGRESS_MIN_INTERVAL_MS = 1000;
// The file this code runs from, in the 'job started' line: runner.mjs when it is the
// runner's bundle (scripts/bundle-runner.ts), run-job.js or .ts when it is the modules.
const CODE_FILE = basename(fileURLToPath(import.meta.url));

/** Runs exactly one job: take the lease, heartbeat, run its handler, record the outcome. */
export async function runJob(options: RunJobOptions): Promise<RunOutcome> {
  const { db, config, jobId } = options;
  // Taken before the lease is, so lease ends reckoned from it are never late.
  let leaseRenewedAt = performance.now();
  const leased = acquireLease(options);
  // Made while the lease is taken: a file system round trip off the job's path. Started
  // once that call is sent (it leaves on a later tick): the start itself takes 0.5-1.5 ms
  // on a busy host. Named by the id asked for (the lease then says it is the job's).
  const workDirMade = setImmediate().then(() =>
    mkdtemp(join(config.HD_WORK_DIR ?? tmpdir(), `hd-job-${jobId.replace(/[^\w-]/g, '')}-`)),
  );
  workDirMade.catch(() => {}); // not unhandled meanwhile: a failure is thrown where awaited
  let job: LeasedJob | { message: string };
  try {
    job = await leased;
  } catch (error) {
    await removeWorkDir(workDirMade);
    // Not reached at start (the database restarts): exit 14, so the scheduler hands the
    // job back instead of recording a crash.
    return notRecorded(error, options.log);
  }
  if ('message' in job) {
    await removeWorkDir(workDirMade);
    return { outcome: 'not_runnable', message: job.message };
  }

  const log = options.log.child({ job_id: job.id, job_type: job.job_type, attempt: job.attempts });
  const controller = new AbortController();
  const abort = (reason: HdError) => {
    if (!controller.signal.aborted) controller.abort(reason);
  };
  const onInterrupt = () => abort(new HdError('WORKER_SHUTDOWN', 'the runner was asked to stop'));
  options.interrupt?.addEventListener('abort', onInterrupt, { once: true });
  if (options.interrupt?.aborted) onInterrupt();

  const leaseMs = config.HD_LEASE_SECONDS * 1000;
  const heartbeat = setInterval(() => {
    const sentAt = performance.now();
    db.heartbeat(jobId, job.lease_token, config.HD_LEASE_SECONDS).then(
      () => (leaseRenewedAt = sentAt),
      (error: unknown) => {
        const err = toHdError(error);
        if (err.code === 'LEASE_LOST' || err.code === 'CANCELLED') abort(err);
        // Stops with a third of the lease left, so the scheduler can still hand it back.
        else if (
          err.code === 'DATABASE_UNAVAILABLE' &&
          sentAt - leaseRenewedAt >= (leaseMs * 2) / 3
        )
          abort(new HdError(err.code, `no heartbeat reached the database: ${err.message}`));
        else log.warn({ err }, 'heartbeat failed; retrying until the lease runs out');
      },
    );
  }, leaseMs / 3);

  let timeout: NodeJS.Timeout | undefined;
  const started = performance.now();
  try {
    // Awaited here: a folder that cannot be made (a full disk) fails the job, recorded.
    const workDir = await workDirMade.catch((error: unknown) => {
      throw new HdError('INTERNAL_ERROR', 'the runner could not make a scratch folder', {
        cause: error,
      });
    });
    const handler = await resolveHandler(job);
    timeout = setTimeout(
      () =>
        abort(
          new HdError(
            'PROCESSING_TIMEOUT',
            `the job ran longer than ${handler.resources.timeoutMs} ms`,
          ),
        ),
      handler.resources.timeoutMs,
    );
    const progress = new ProgressSender(
      ({ percent, step }) => db.reportProgress(job.id, job.lease_token, percent, step),
      (error) => abort(toHdError(error)),
    );
    const ctx = makeContext(options, job, log, controller.signal, workDir, progress);
    // An adopted lease's row says it already (00035): no round trip of its own.
    if (job.progress_step !== 'initializing') await ctx.progress(0, 'initializing');
    log.info({ code_file: CODE_FILE }, 'job started');
    const stats = await raceAbort(handler.run(ctx), controller.signal);
    await raceAbort(progress.flush(), controller.signal);
    let done: Job;
    try {
      done = await completeJob(options, job, log, leaseRenewedAt + leaseMs, {
        ...stats,
        duration_ms: stats.duration_ms ?? Math.round(performance.now() - started),
        attempt: job.attempts,
        worker_id: config.HD_WORKER_ID,
      });
    } catch (error) {
      if (toHdError(error).code === 'DATABASE_UNAVAILABLE') return notRecorded(error, log);
      throw error;
    }
    log.info({ stats }, 'job completed');
    return { outcome: 'completed', job: done };
  } catch (thrown) {
    const error = controller.signal.aborted
      ? toHdError(controller.signal.reason)
      : toHdError(thrown);
    // Only the heartbeat aborts for the database: recording anything would fail too.
    if (error.code === 'DATABASE_UNAVAILABLE' && controller.signal.aborted)
      return notRecorded(error, log);
    return await recordFailure(options, job, error, log);
  } finally {
    clearInterval(heartbeat);
    clearTimeout(timeout);
    options.interrupt?.removeEventListener('abort', onInterrupt);
    await removeWorkDir(workDirMade);
  }
}

/**
 * Records the job completed. Where the database drops the answer (it restarts, the
 * connection breaks), the commit may have happened or not: the call is made again while
 * the lease lasts (until `leaseEndsAt`, on the performance clock), and the lease that
 * completed the job gets the completed row (00037), so a completion is never taken for a
 * lost database. Asked to stop, or refused
 * on a later try (the lease ran out meanwhile), it gives up with the first try's error:
 * nothing known to be recorded, as before the retries.
 */
async function completeJob(
  { db, interrupt }: RunJobOptions,
  job: LeasedJob,
  log: Logger,
  leaseEndsAt: number,
  stats: Record<string, unknown>,
): Promise<Job> {
  const backoff = new Backoff(100, 2000);
  let lost: unknown;
  for (;;) {
    try {
      const done = await db.completeJob(job.id, job.lease_token, stats);
      if (lost) log.info('the completion was recorded once the database was back');
      return done;
    } catch (error) {
      const unavailable = toHdError(error).code === 'DATABASE_UNAVAILABLE';
      if (lost === undefined) {
        if (!unavailable) throw error;
        log.warn({ err: error }, 'no answer to the completion; asking again until the lease ends');
        lost = error;
      } else if (!unavailable) throw lost;
      const pause = backoff.next();
      if (interrupt?.aborted || performance.now() + pause >= leaseEndsAt) throw lost;
      await sleep(pause, interrupt);
    }
  }
}

/** A job's scratch folder: removed, if it was made at all. */
async function removeWorkDir(made: Promise<string>): Promise<void> {
  await made.then(
    (dir) => rm(dir, { recursive: true, force: true }),
    () => {}, // not made: the job's run would have said why
  );
}

async function acquireLease(options: RunJobOptions): Promise<LeasedJob | { message: string }> {
  const { db, config, jobId, leaseToken } = options;
  if (leaseToken) {
    // Proves the handed-over lease is still ours before any work starts; a runner with a
    // job-scoped credential can read its job only this way.
    const job = await db.adoptLease(jobId, leaseToken, config.HD_LEASE_SECONDS);
    return { ...job, lease_token: leaseToken };
  }
  const [claimed] = await db.claimJobs({
    workerId: config.HD_WORKER_ID,
    jobId,
    leaseSeconds: config.HD_LEASE_SECONDS,
  });
  if (claimed?.lease_token) return claimed as LeasedJob;
  const existing = await db.getJob(jobId);
  if (!existing) return { message: `job ${jobId} not found` };
  return {
    message:
      existing.status === 'running'
        ? `job ${jobId} is already running (locked by ${existing.locked_by ?? '?'}); cancel it first`
        : `job ${jobId} is ${existing.status}, not queued; requeue it first (hd-runner jobs requeue ${jobId})`,
  };
}

async function resolveHandler(job: Job): Promise<Handler<JobType>> {
  if (!isJobType(job.job_type)) {
    const planned = (PLANNED_JOB_TYPES as readonly string[]).includes(job.job_type)
      ? ' (it is part of the worker contract but not implemented in this version)'
      : '';
    throw new HdError(
      'UNKNOWN_JOB_TYPE',
      `no handler for job type ${JSON.stringify(job.job_type)}${planned}; this hd-runner handles: ${JOB_TYPES.join(', ')}`,
    );
  }
  return loadHandler(job.job_type);
}

function makeContext(
  options: RunJobOptions,
  job: LeasedJob,
  log: Logger,
  signal: AbortSignal,
  workDir: string,
  progress: ProgressSender,
): HandlerContext<JobType> {
  const { db, config } = options;
  const type = job.job_type as JobType;
  const parsed = PAYLOAD_SCHEMAS[type].safeParse(job.debug ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new HdError(
      'INVALID_INPUT',
      `job payload (debug) is invalid: ${issue.path.join('.') || 'debug'}: ${issue.message}`,
    );
  }
  // A URL input is fetched and stored by a scheduler before the runner starts (and then
  // recorded in url_input); a runner started by hand has nothing to read yet.
  const { url, url_input } = parsed.data as { url?: string; url_input?: unknown };
  if (url !== undefined && url_input === undefined && takesUrlInput(type))
    throw new HdError(
      'INVALID_INPUT',
      `the URL input ${urlForLog(url)} has not been fetched yet: a scheduler fetches and stores it before it starts the runner`,
    );
  let lastProgressAt = 0;
  let lastPhase: string | undefined;
  // The job's database calls after the progress reports before them (progress-sender.ts).
  const { id, lease_token: lease } = job;
  const after = <T>(call: () => Promise<T>) => progress.flush().then(call);
  return {
    job,
    payload: parsed.data,
    storage: new TenantStorage(options.storage, job.account_id, workDir),
    workDir,
    outputs: {
      upsertAssets: (rows) => after(() => db.upsertAssets(id, lease, rows)),
      listDocumentFiles: () => after(() => db.listDocumentFiles(id, lease)),
      replaceChunks: (chunks) => after(() => db.replaceDocumentChunks(id, lease, chunks)),
      countChunksToInterpret: (version) =>
        after(() => db.countChunksToInterpret(id, lease, version)),
      listChunksToInterpret: (version, start, limit) =>
        after(() => db.listChunksToInterpret(id, lease, version, start, limit)),
      upsertInterpretations: (rows) => after(() => db.upsertInterpretations(id, lease, rows)),
      listDocumentInterpretations: (start, limit) =>
        after(() => db.listDocumentInterpretations(id, lease, start, limit)),
      writeDocumentGraph: (graph) => after(() => db.writeDocumentGraph(id, lease, graph)),
      listDocumentNodes: () => after(() => db.listDocumentNodes(id, lease)),
      getNodeContext: (nodeId, limits) => after(() => db.getNodeContext(id, lease, nodeId, limits)),
      recordSynthesis: (nodeId, synthesis) =>
        after(() => db.recordSynthesis(id, lease, nodeId, synthesis)),
    },
    artifacts: new ArtifactUploader(artifactsOf(db), options.storage, job),
    async progress(percent, step) {
      if (signal.aborted) throw signal.reason;
      const now = performance.now();
      // A new phase goes out at once; a counter (processing:i/n) is rate-limited like percent.
      const phase = phaseOf(step) ?? lastPhase;
      if (phase === lastPhase && percent < 100 && now - lastProgressAt < PROGRESS_MIN_INTERVAL_MS)
        return;
      lastProgressAt = now;
      lastPhase = phase;
      // Queued, not awaited: the handler goes on while the report travels.
      progress.report({ percent: Math.round(percent * 100) / 100, step });
    },
    log,
    signal,
    config,
    llm: new LlmClient(llmSettings(config), { log, signal }),
  };
}

/** Settles with the handler, or rejects as soon as the signal aborts. */
function raceAbort<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    // Always subscribe to `work`, so its late rejection is never unhandled.
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
}

async function recordFailure(
  options: RunJobOptions,
  job: LeasedJob,
  error: HdError,
  log: Logger,
): Promise<RunOutcome> {
  const { db } = options;
  if (error.code === 'LEASE_LOST' || error.code === 'CANCELLED') {
    log.warn({ code: error.code }, `stopped: ${error.message}`);
    return { outcome: 'lease_lost', error };
  }
  try {
    if (error.code === 'WORKER_SHUTDOWN') {
      await db.releaseJob(job.id, job.lease_token);
      log.warn('job handed back to the queue');
      return { outcome: 'released', error };
    }
    // The job row is tenant-readable: secrets by value, stack frames and host paths out.
    const redactor = new Redactor(secretsOf(options.config));
    const failed = await db.failJob(job.id, job.lease_token, {
      code: error.code,
      message: redactor.message(error.message),
      retryable: error.retryable,
      details: redactor.forTenant({ ...error.details, worker_id: options.config.HD_WORKER_ID }),
    });
    log.error(
      { code: error.code, retryable: error.retryable, status: failed.status, err: error.cause },
      `job failed: ${error.message}`,
    );
    return { outcome: failed.status === 'queued' ? 'retrying' : 'failed', job: failed, error };
  } catch (recordError) {
    return notRecorded(recordError, log);
  }
}

/** A call that records the outcome failed: the lease moved on, or the database is out of reach. */
function notRecorded(error: unknown, log: Logger): RunOutcome {
  const err = toHdError(error);
  if (err.code === 'LEASE_LOST' || err.code === 'CANCELLED')
    return { outcome: 'lease_lost', error: err };
  if (err.code !== 'DATABASE_UNAVAILABLE') throw err;
  log.error({ code: err.code }, `lost the database, nothing recorded: ${err.message}`);
  return { outcome: 'database_lost', error: err };
}
