import { toHdError, type HdError } from '../contract/errors.ts';
import type { ClaimedJob } from '../contract/jobs.ts';
import type { ControlPlaneDb, NewJobLogLine } from '../control-plane/db/transport.ts';
import type { Logger } from '../control-plane/logger.ts';
import { Redactor } from '../control-plane/redact.ts';
import { Backoff, isTransient, sleep } from './retry.ts';
import {
  LINE_OVERHEAD_CHARS,
  MAX_LINE_CHARS,
  parseOutputLine,
  tenantSafeLine,
} from './output-line.ts';

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
  /**
   * Longest finish() holds up the job's settling after the runner exited, in ms; sending
   * goes on in the background after it. Default 5000.
   */
  finalFlushMs: number;
  /**
   * How long after the runner exited lines are still sent while the database is
   * unreachable, in ms; then what is left is dropped and counted. Default 10 min.
   */
  keepTryingMs: number;
}

export const DEFAULT_JOB_LOG_LIMITS: JobLogLimits = {
  batchLines: 200,
  flushIntervalMs: 1000,
  maxPendingChars: 2 * 1024 * 1024,
  finalFlushMs: 5000,
  keepTryingMs: 10 * 60_000,
};

interface Pending {
  line: NewJobLogLine;
  chars: number;
}

export interface JobLogCollectorDeps {
  db: Pick<ControlPlaneDb, 'appendJobLogs' | 'listJobLogs'>;
  job: ClaimedJob;
  log: Logger;
  limits?: Partial<JobLogLimits> | undefined;
  /** Told once everything is sent or given up, with how many lines were lost. */
  onDone?: ((lost: number) => void) | undefined;
  /** Secrets by value, stack frames and host paths out of every stored line. */
  redactor?: Redactor | undefined;
  /**
   * Where this runner's numbering starts (its launch recorded it: a container label, a
   * process runner's output file). Default: after the lines stored for this attempt.
   */
  seqBase?: number | undefined;
}

/**
 * Collects one runner's output lines and stores them in hd_job_logs under the job's
 * lease: numbered (seq = base + the line's place in the runner's output, so that output
 * read again from the start after a scheduler restart gets the same numbers and the
 * database keeps each line once), in batches while the job runs, and a final flush when the
 * runner has exited. The database takes an attempt's lines until a newer attempt's lease
 * has ended (00011), so a failed send is tried again (seq dedupes) and lines are dropped
 * only when a newer attempt holds the job, the database refuses the batch as it is, or
 * it stayed unreachable for keepTryingMs after the runner exited; each drop is counted.
 * Logging never fails or holds up a job: push() never throws or waits, memory is bounded
 * (maxPendingChars), failures are logged once per job, and finish() waits at most
 * finalFlushMs (sending goes on in the background: done()).
 */
export class JobLogCollector {
  readonly #db: JobLogCollectorDeps['db'];
  readonly #job: ClaimedJob;
  readonly #log: Logger;
  readonly #limits: JobLogLimits;
  readonly #onDone: JobLogCollectorDeps['onDone'];
  readonly #redactor: Redactor;
  readonly #pending: Pending[] = [];
  /** Numbering continues after the lines already stored for this attempt. */
  readonly seqBase: Promise<number>;
  readonly #timer: NodeJS.Timeout;
  #pendingChars = 0;
  #seq = 0;
  #droppedSinceMarker = 0;
  /** The seq of the first line dropped since the last marker: the marker takes it. */
  #markerSeq = 0;
  #dropped = 0;
  #stored = 0;
  #flushing: Promise<unknown> | undefined;
  #closed = false;
  /** Lines pushed after done(): never stored. */
  #late = 0;
  #leaseGone = false;
  #warned = false;
  #finished: Promise<void> | undefined;
  #drained: Promise<number> | undefined;

  constructor(deps: JobLogCollectorDeps) {
    this.#db = deps.db;
    this.#job = deps.job;
    this.#log = deps.log;
    this.#limits = { ...DEFAULT_JOB_LOG_LIMITS, ...deps.limits };
    this.#onDone = deps.onDone;
    this.#redactor = deps.redactor ?? new Redactor([]);
    // An attempt handed back (released) is numbered again by the next claim, and a
    // re-adopted runner keeps its attempt: their lines must not reuse stored seqs.
    const { id, attempts } = deps.job;
    this.seqBase =
      deps.seqBase !== undefined
        ? Promise.resolve(deps.seqBase)
        : deps.db.listJobLogs(id, 1).then(
            ([last]) => (last?.attempt === attempts ? last.seq : 0),
            () => 0,
          );
    this.#timer = setInterval(() => this.#kick(), this.#limits.flushIntervalMs).unref();
  }

  /** Lines taken but neither stored nor counted as dropped yet. */
  get unsent(): number {
    return this.#pending.length + this.#droppedSinceMarker;
  }

  /** Takes one printed line; never throws, never waits. */
  push(text: string): void {
    if (this.#closed) {
      this.#late += 1; // too late to store: counted among the lost
      return;
    }
    const seq = ++this.#seq;
    const chars = Math.min(text.length, MAX_LINE_CHARS) + LINE_OVERHEAD_CHARS;
    if (this.#leaseGone || this.#pendingChars + chars > this.#limits.maxPendingChars) {
      if (this.#droppedSinceMarker++ === 0) this.#markerSeq = seq;
      return;
    }
    try {
      this.#addDropMarker();
      const line = tenantSafeLine(parseOutputLine(text, seq, new Date()), this.#redactor);
      if (!line) return; // a stack frame: the scheduler's own log has it, tenants do not
      this.#add(line, chars);
      if (this.#pending.length >= this.#limits.batchLines) this.#kick();
    } catch (error) {
      this.#warnOnce(error);
    }
  }

  /**
   * Stops taking lines and waits until what is left is sent, for at most finalFlushMs;
   * never throws. Sending goes on after that: see done().
   */
  finish(): Promise<void> {
    this.#finished ??= (async () => {
      let timer: NodeJS.Timeout | undefined;
      const waited = new Promise((r) => (timer = setTimeout(r, this.#limits.finalFlushMs)));
      await Promise.race([this.done(), waited]);
      clearTimeout(timer);
    })();
    return this.#finished;
  }

  /**
   * Resolves, after finish(), with the number of lines that never reached hd_job_logs
   * once everything is sent or given up (keepTryingMs); never throws.
   */
  done(): Promise<number> {
    if (!this.#drained) {
      clearInterval(this.#timer);
      this.#closed = true;
      if (!this.#leaseGone) this.#addDropMarker();
      this.#drained = this.#drain();
    }
    return this.#drained;
  }

  async #drain(): Promise<number> {
    const deadline = Date.now() + this.#limits.keepTryingMs;
    let timer: NodeJS.Timeout | undefined;
    const sendAll = async () => {
      while (this.#flushing) await this.#flushing; // from here on, only this loop sends
      const backoff = new Backoff();
      while (this.#pending.length > 0 && !this.#leaseGone && Date.now() < deadline) {
        if (await this.#sendBatch()) backoff.reset();
        else await sleep(Math.min(backoff.next(), deadline - Date.now()));
      }
    };
    await Promise.race([
      sendAll().catch(() => {}),
      new Promise((r) => (timer = setTimeout(r, deadline - Date.now()))),
    ]);
    clearTimeout(timer);
    const lost = this.#dropped + this.#droppedSinceMarker + this.#pending.length + this.#late;
    if (lost > 0)
      this.#log.warn(
        { job_id: this.#job.id, attempt: this.#job.attempts, stored: this.#stored, lost },
        'not every line the runner printed reached hd_job_logs',
      );
    this.#onDone?.(lost);
    return lost;
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
      seq: this.#markerSeq,
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
    const base = await this.seqBase;
    const lines = batch.map(({ line }) => ({ ...line, seq: base + line.seq }));
    try {
      await this.#db.appendJobLogs(this.#job.id, this.#job.lease_token, lines);
      this.#stored += this.#take(batch.length);
      return true;
    } catch (error) {
      const err = this.#warnOnce(error);
      if (err.code === 'LEASE_LOST' || err.code === 'CANCELLED') {
        // A newer attempt's lease holds the job or has ended: this attempt is over.
        this.#leaseGone = true;
        this.#dropped += this.#take(this.#pending.length);
        return false;
      }
      if (isTransient(err)) return false; // kept, sent again (seq dedupes)
      this.#dropped += this.#take(batch.length); // sending it again won't help
      return true;
    }
  }

  #take(count: number): number {
    for (const { chars } of this.#pending.splice(0, count)) this.#pendingChars -= chars;
    return count;
  }

  #warnOnce(error: unknown): HdError {
    const err = toHdError(error);
    if (!this.#warned) {
      this.#warned = true;
      this.#log.warn(
        { job_id: this.#job.id, code: err.code, err: err.cause ?? err },
        `could not store runner output in hd_job_logs: ${err.message}`,
      );
    }
    return err;
  }
}

/** The output collectors of one scheduler, one per supervised runner. */
export class JobLogBook {
  readonly #deps: Omit<JobLogCollectorDeps, 'job' | 'onDone'>;
  /** Collectors of re-adopted runners until open() takes them. */
  readonly #adopted = new Map<string, JobLogCollector>();
  /** Collectors with lines still to send (their runner may have exited). */
  readonly #live = new Set<JobLogCollector>();
  #lost = 0;

  constructor(deps: Omit<JobLogCollectorDeps, 'job' | 'onDone'>) {
    this.#deps = deps;
  }

  /** Lines of all runners so far that never reached hd_job_logs. */
  get lostLines(): number {
    return this.#lost;
  }

  /** The collector of a job about to run: a new one, or the one sinkFor() started. */
  open(job: ClaimedJob): JobLogCollector {
    const adopted = this.#adopted.get(job.id);
    this.#adopted.delete(job.id);
    return adopted ?? this.#collector(job);
  }

  /**
   * Where a re-adopted runner prints, from its first line on (open() takes it over);
   * `seqBase` is where its launch started the numbering, when known.
   */
  sinkFor(job: ClaimedJob, seqBase?: number): (line: string) => void {
    const logs = this.#collector(job, seqBase);
    this.#adopted.set(job.id, logs);
    return (line) => logs.push(line);
  }

  /**
   * Stores the whole output of a runner that ended unwatched (read back from its output
   * file or its container), numbered from `seqBase` as when it ran: lines already stored
   * are kept once. Resolves, never throws, with how many lines could not be stored.
   */
  async store(job: ClaimedJob, seqBase: number, lines: readonly string[]): Promise<number> {
    // Lines are stored in order, so those up to the last stored seq are there (or marked
    // dropped): skipped, so that what is new fits the memory budget.
    const [last] = await this.#deps.db.listJobLogs(job.id, 1).catch(() => []);
    const stored = last?.attempt === job.attempts ? last.seq - seqBase : 0;
    const skip = Math.min(Math.max(0, stored), lines.length);
    const logs = this.#collector(job, seqBase + skip);
    for (const line of lines.slice(skip)) logs.push(line);
    return logs.done();
  }

  /** Finishes what sinkFor() started but no open() took (a reconcile that failed half-way). */
  closeUnopened(): void {
    for (const logs of this.#adopted.values()) void logs.finish();
    this.#adopted.clear();
  }

  /**
   * Finishes every collector and waits, for at most finalFlushMs, until their lines are
   * sent (a stopping scheduler); returns how many lines were lost, in all.
   */
  async close(): Promise<number> {
    this.closeUnopened();
    const timeoutMs = { ...DEFAULT_JOB_LOG_LIMITS, ...this.#deps.limits }.finalFlushMs;
    let timer: NodeJS.Timeout | undefined;
    const all = Promise.all([...this.#live].map((logs) => logs.done()));
    await Promise.race([all, new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
    let unsent = 0;
    for (const logs of this.#live) unsent += logs.unsent;
    return this.#lost + unsent;
  }

  #collector(job: ClaimedJob, seqBase?: number): JobLogCollector {
    const logs: JobLogCollector = new JobLogCollector({
      ...this.#deps,
      job,
      seqBase,
      onDone: (lost) => {
        this.#lost += lost;
        this.#live.delete(logs);
      },
    });
    this.#live.add(logs);
    return logs;
  }
}
