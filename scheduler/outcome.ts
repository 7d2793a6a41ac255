import { EXIT_CODES, HdError, toHdError, type ErrorCode } from '../contract/errors.ts';
import type { ClaimedJob } from '../contract/jobs.ts';
import type { ControlPlaneDb } from '../control-plane/db/transport.ts';
import type { Logger } from '../control-plane/logger.ts';
import type { Redactor } from '../control-plane/redact.ts';
import type { RunnerExit } from './launcher.ts';
import { Backoff, isTransient, sleep } from './retry.ts';

/** Exit codes with which the runner itself recorded the outcome (see `hd-runner run`). */
const RUNNER_RECORDED_EXITS = new Set<number>([
  EXIT_CODES.completed,
  EXIT_CODES.failedPermanent,
  EXIT_CODES.failedRetryable,
  EXIT_CODES.leaseLost,
  EXIT_CODES.interrupted,
]);

/** What is left for the scheduler to record once a runner has ended. */
export type ExitOutcome =
  /** Nothing: the runner recorded its outcome, or a cancel already failed the job. */
  | { kind: 'recorded' }
  /** Stopped for a scheduler shutdown, or the runner lost the database: hand the job back. */
  | { kind: 'release' }
  /** The runner could not record it (crash, kill, timeout): fail the attempt with `code`. */
  | { kind: 'fail'; code: ErrorCode; message: string; details: Record<string, unknown> };

/**
 * Classifies how a runner ended: a crash, an OOM kill and a timeout are recorded by the
 * scheduler (the queue retries them while attempts remain); what the runner or a cancel
 * already recorded is left alone. Pure: the scheduler does the recording.
 */
export function classifyExit(exit: RunnerExit): ExitOutcome {
  if (exit.stoppedFor === 'cancelled') return { kind: 'recorded' };
  if (exit.exitCode !== null && RUNNER_RECORDED_EXITS.has(exit.exitCode))
    return { kind: 'recorded' };
  // The platform's fault, not the job's: no attempt spent (recorded once the database is back).
  if (exit.stoppedFor === 'shutdown' || exit.exitCode === EXIT_CODES.databaseLost)
    return { kind: 'release' };
  const details = {
    exit_code: exit.exitCode,
    signal: exit.signal,
    duration_ms: exit.durationMs,
    output_tail: exit.outputTail.slice(-20),
  };
  if (exit.oomKilled) {
    const message = `the runner ran out of memory (exit ${exit.exitCode ?? exit.signal})`;
    return { kind: 'fail', code: 'OOM_KILLED', message, details };
  }
  if (exit.timedOut) {
    const message = `the runner was killed after ${exit.durationMs} ms`;
    return { kind: 'fail', code: 'PROCESSING_TIMEOUT', message, details };
  }
  const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.exitCode}`;
  const message = `the runner ${how} without reporting a result`;
  return { kind: 'fail', code: 'CRASHED', message, details };
}

export interface OutcomeRecorderDeps {
  db: Pick<ControlPlaneDb, 'failJob' | 'releaseJob'>;
  /** Goes into the error details of what is recorded. */
  workerId: string;
  log: Logger;
  /**
   * Aborted when recording should stop being retried (the scheduler stops); until then a
   * call the database could not take is tried again, however long it stays away.
   */
  signal?: AbortSignal | undefined;
  /** Told when recording failed for another reason than the lease having moved on. */
  onError: (error: HdError) => void;
  /** What tenants read of it (the job's error and details): secrets, stacks, host paths out. */
  redactor?: Redactor | undefined;
}

/**
 * Records in the queue what a runner could not: a crash, a kill, a timeout, a shutdown,
 * a failed launch. A lease that moved on (cancelled, taken over) leaves nothing to record.
 * While the database is out of reach the call is tried again with backoff, also past the
 * lease's end: the database takes an outcome while the lease is still the job's, and its
 * reaper leaves a cut-off scheduler's leases alone until it is back (00019). Each job's
 * outcome is recorded once, after the runner's own calls, so the order the runner
 * reported holds.
 */
export class OutcomeRecorder {
  readonly #d: OutcomeRecorderDeps;

  constructor(deps: OutcomeRecorderDeps) {
    this.#d = deps;
  }

  async settle(job: ClaimedJob, exit: RunnerExit): Promise<void> {
    const outcome = classifyExit(exit);
    if (outcome.kind === 'release') await this.release(job);
    else if (outcome.kind === 'fail')
      await this.fail(job, outcome.code, outcome.message, outcome.details);
  }

  /** Hands the job back to the queue, its attempt refunded; `why`, if given, is logged. */
  async release(job: ClaimedJob, why?: string): Promise<void> {
    const released = await this.#durably(job, () => this.#d.db.releaseJob(job.id, job.lease_token));
    if (released && why) this.#d.log.warn({ job_id: job.id }, `handed the job back: ${why}`);
  }

  async fail(job: ClaimedJob, code: ErrorCode, message: string, details: Record<string, unknown>) {
    const error = new HdError(code, message, { details });
    const tenant = this.#d.redactor;
    const recorded = await this.#durably(job, () =>
      this.#d.db.failJob(job.id, job.lease_token, {
        code,
        message: tenant ? tenant.message(message) : message,
        retryable: error.retryable,
        details: { ...(tenant ? tenant.forTenant(details) : details), worker_id: this.#d.workerId },
      }),
    );
    if (recorded) this.#d.log.warn({ job_id: job.id, code }, message);
  }

  /** Makes the call until it succeeds, is refused, or the signal says to give up. */
  async #durably(job: ClaimedJob, call: () => Promise<unknown>): Promise<boolean> {
    const { signal } = this.#d;
    const backoff = new Backoff();
    for (let tries = 1; ; tries++) {
      try {
        await call();
        if (tries > 1) this.#d.log.info({ job_id: job.id, tries }, 'recorded a job outcome');
        return true;
      } catch (error) {
        const err = toHdError(error);
        if (err.code === 'LEASE_LOST' || err.code === 'CANCELLED') return false;
        if (!isTransient(err) || signal?.aborted) {
          this.#d.onError(err);
          return false;
        }
        if (tries === 1)
          this.#d.log.warn(
            { job_id: job.id, code: err.code },
            `could not record a job outcome, trying again until the database takes it: ${err.message}`,
          );
        await sleep(backoff.next(), signal);
      }
    }
  }
}
