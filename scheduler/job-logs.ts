import { toHdError } from '../contract/errors.ts';
import type { LeasedJob } from '../contract/jobs.ts';
import type { ControlPlaneDb, NewJobLogLine } from '../control-plane/db/transport.ts';
import type { Logger } from '../control-plane/logger.ts';
import { LINE_OVERHEAD_CHARS, MAX_LINE_CHARS, parseOutputLine } from './output-line.ts';

export interface JobLogLimits {
  /** Lines per hd_append_job_logs call; a full batch is sent at once. Default 200. */
  batchLines: number;
  /** Longest a line waits before it is sent, in ms. Default 1000. */
  flushIntervalMs: number;
  /**
   * Characters of output held per job while the database lags behind; past it, lines are
   * dropped and a marker line says how many. Default 2 MiB.
   */
  maxPendingChars: number;
  /** Longest the final flush, after the runner exited, may take, in ms. Default 5000. */
  finalFlushMs: number;
}

export const DEFAULT_JOB_LOG_LIMITS: JobLogLimits = {
  batchLines: 200,
  flushIntervalMs: 1000,
  maxPendingChars: 2 * 1024 * 1024,
  finalFlushMs: 5000,
};

interface Pending {
  line: NewJobLogLine;
  chars: number;
}

export interface JobLogCollectorDeps {
  db: Pick<ControlPlaneDb, 'appendJobLogs' | 'listJobLogs'>;
  job: LeasedJob;
  log: Logger;
  limits?: Partial<JobLogLimits> | undefined;
}

/**
 * Collects one runner's output lines and stores them in hd_job_logs under the job's
 * lease: numbered (seq), in batches while the job runs, and a final flush when the
 * runner has exited. Logging never fails or holds up a job: push() never throws or
 * waits, memory is bounded (maxPendingChars), failures are logged once per job, and
 * finish() gives up after finalFlushMs.
 */
export class JobLogCollector {
  readonly #db: JobLogCollectorDeps['db'];
  readonly #job: LeasedJob;
  readonly #log: Logger;
  readonly #limits: JobLogLimits;
  readonly #pending: Pending[] = [];
  /** Numbering continues after the lines already stored for this attempt. */
  readonly #seqBase: Promise<number>;
  readonly #timer: NodeJS.Timeout;
  #pendingChars = 0;
  #seq = 0;
  #droppedSinceMarker = 0;
  #dropped = 0;
  #stored = 0;
  #flushing: Promise<unknown> | undefined;
  #closed = false;
  #leaseGone = false;
  #warned = false;
  #finished: Promise<void> | undefined;

  constructor(deps: JobLogCollectorDeps) {
    this.#db = deps.db;
    this.#job = deps.job;
    this.#log = deps.log;
    this.#limits = { ...DEFAULT_JOB_LOG_LIMITS, ...deps.limits };
    // An attempt handed back (released) is numbered again by the next claim, and a
    // re-adopted runner keeps its attempt: their lines must not reuse stored seqs.
    const { id, attempts } = deps.job;
    this.#seqBase = deps.db.listJobLogs(id, 1).then(
      ([last]) => (last?.attempt === attempts ? last.seq : 0),
      () => 0,
    );
    this.#timer = setInterval(() => this.#kick(), this.#limits.flushIntervalMs).unref();
  }

  /** Takes one printed line; never throws, never waits. */
  push(text: string): void {
    if (this.#closed) return;
    const chars = Math.min(text.length, MAX_LINE_CHARS) + LINE_OVERHEAD_CHARS;
    if (this.#leaseGone || this.#pendingChars + chars > this.#limits.maxPendingChars) {
      this.#droppedSinceMarker++;
      return;
    }
    try {
      this.#addDropMarker();
      this.#add(parseOutputLine(text, ++this.#seq, new Date()), chars);
      if (this.#pending.length >= this.#limits.batchLines) this.#kick();
    } catch (error) {
      this.#warnOnce(error);
    }
  }

  /** Sends what is left (for at most finalFlushMs) and stops; never throws. */
  finish(): Promise<void> {
    this.#finished ??= this.#finish();
    return this.#finished;
  }

  async #finish(): Promise<void> {
    clearInterval(this.#timer);
    this.#closed = true;
    if (!this.#leaseGone) this.#addDropMarker();
    const deadline = Date.now() + this.#limits.finalFlushMs;
    let timer: NodeJS.Timeout | undefined;
    const drain = async () => {
      while (this.#flushing) await this.#flushing; // from here on, only this loop sends
      while (this.#pending.length > 0 && !this.#leaseGone && Date.now() < deadline) {
        if (!(await this.#sendBatch())) await sleep(Math.min(250, deadline - Date.now()));
      }
    };
    await Promise.race([
      drain().catch(() => {}),
      new Promise((r) => (timer = setTimeout(r, deadline - Date.now()))),
    ]);
    clearTimeout(timer);
    const lost = this.#dropped + this.#droppedSinceMarker + this.#pending.length;
    if (lost > 0)
      this.#log.warn(
        { job_id: this.#job.id, attempt: this.#job.attempts, stored: this.#stored, lost },
        'not every line the runner printed reached hd_job_logs',
      );
  }

  #add(line: NewJobLogLine, chars: number) {
    this.#pending.push({ line, chars });
    this.#pendingChars += chars;
  }

  /** Marks where lines were dropped, with how many, once there is room again. */
  #addDropMarker() {
    const dropped = this.#droppedSinceMarker;
    if (dropped === 0) return;
    this.#droppedSinceMarker = 0;
    this.#dropped += dropped;
    const message = `hd-runner: ${dropped} output lines dropped here: the database did not keep up`;
    const marker = {
      seq: ++this.#seq,
      level: 'warn',
      message,
      logged_at: new Date().toISOString(),
    };
    this.#add({ ...marker, fields: { dropped_lines: dropped } }, LINE_OVERHEAD_CHARS);
  }

  #kick(): void {
    if (this.#flushing || this.#closed || this.#pending.length === 0 || this.#leaseGone) return;
    this.#flushing = this.#sendBatch()
      .catch(() => false)
      .then((sent) => {
        this.#flushing = undefined;
        // A full batch waiting goes at once; after a failure, at the next tick.
        if (sent && this.#pending.length >= this.#limits.batchLines) this.#kick();
      });
  }

  /** Sends the oldest batch; false when it has to be tried again later. */
  async #sendBatch(): Promise<boolean> {
    const batch = this.#pending.slice(0, this.#limits.batchLines);
    const base = await this.#seqBase;
    const lines = batch.map(({ line }) => ({ ...line, seq: base + line.seq }));
    try {
      await this.#db.appendJobLogs(this.#job.id, this.#job.lease_token, lines);
      this.#stored += this.#take(batch.length);
      return true;
    } catch (error) {
      const code = this.#warnOnce(error);
      if (code === 'DATABASE_UNAVAILABLE') return false; // kept, sent again (seq dedupes)
      if (code === 'LEASE_LOST' || code === 'CANCELLED') {
        // A newer attempt holds the job: nothing of this one is taken any more.
        this.#leaseGone = true;
        this.#dropped += this.#take(this.#pending.length);
        return false;
      }
      this.#dropped += this.#take(batch.length); // refused as it is: sending again won't help
      return true;
    }
  }

  #take(count: number): number {
    for (const { chars } of this.#pending.splice(0, count)) this.#pendingChars -= chars;
    return count;
  }

  #warnOnce(error: unknown): string {
    const err = toHdError(error);
    if (!this.#warned) {
      this.#warned = true;
      this.#log.warn(
        { job_id: this.#job.id, code: err.code, err: err.cause ?? err },
        `could not store runner output in hd_job_logs: ${err.message}`,
      );
    }
    return err.code;
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

/** The output collectors of one scheduler, one per supervised runner. */
export class JobLogBook {
  readonly #deps: Omit<JobLogCollectorDeps, 'job'>;
  /** Collectors of re-adopted runners until open() takes them. */
  readonly #adopted = new Map<string, JobLogCollector>();

  constructor(deps: Omit<JobLogCollectorDeps, 'job'>) {
    this.#deps = deps;
  }

  /** The collector of a job about to run: a new one, or the one sinkFor() started. */
  open(job: LeasedJob): JobLogCollector {
    const adopted = this.#adopted.get(job.id);
    this.#adopted.delete(job.id);
    return adopted ?? new JobLogCollector({ ...this.#deps, job });
  }

  /** Where a re-adopted runner prints, from its first line on (open() takes it over). */
  sinkFor(job: LeasedJob): (line: string) => void {
    const logs = new JobLogCollector({ ...this.#deps, job });
    this.#adopted.set(job.id, logs);
    return (line) => logs.push(line);
  }

  /** Finishes what sinkFor() started but no open() took (a reconcile that failed half-way). */
  closeUnopened(): void {
    for (const logs of this.#adopted.values()) void logs.finish();
    this.#adopted.clear();
  }
}
