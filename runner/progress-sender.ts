import { toHdError } from '../contract/errors.ts';

export interface ProgressReport {
  percent: number;
  step: string | undefined;
}

/**
 * A job's progress reports, sent in order, one at a time, while the handler goes on: a
 * report is a database round trip (5-100 ms on a loaded machine, bench/RESULTS.md), and a
 * handler that waited for each one also stopped reading its tool's output meanwhile.
 * Every phase still reaches the row, in order (the steps contract: README, Operations);
 * a counter of the phase still waiting to be sent is replaced by the newer one.
 *
 * The job's own database calls wait for the reports queued before them (`flush`), as when
 * each report was awaited: one connection serves both, none is opened for a report. A
 * report the lease refuses (LEASE_LOST, CANCELLED) stops the job at once (`onStop`); any
 * other failure is thrown by the next report or `flush`, as it was by the report itself.
 */
export class ProgressSender {
  readonly #send: (report: ProgressReport) => Promise<void>;
  readonly #onStop: (error: unknown) => void;
  readonly #queue: ProgressReport[] = [];
  #sending: Promise<void> | undefined;
  #failed: { error: unknown } | undefined;

  constructor(send: (report: ProgressReport) => Promise<void>, onStop: (error: unknown) => void) {
    this.#send = send;
    this.#onStop = onStop;
  }

  report(report: ProgressReport): void {
    this.#throwFailure();
    const waiting = this.#queue.at(-1);
    if (waiting && phaseOf(waiting.step) === phaseOf(report.step)) this.#queue.pop();
    this.#queue.push(report);
    this.#sending ??= this.#drain();
  }

  /** Resolves once every report queued so far reached the database; throws a failed one. */
  async flush(): Promise<void> {
    await this.#sending;
    this.#throwFailure();
  }

  async #drain(): Promise<void> {
    for (let next = this.#queue.shift(); next; next = this.#queue.shift()) {
      try {
        await this.#send(next);
      } catch (error) {
        this.#queue.length = 0;
        this.#failed = { error };
        const { code } = toHdError(error);
        if (code === 'LEASE_LOST' || code === 'CANCELLED') this.#onStop(error);
        break;
      }
    }
    this.#sending = undefined;
  }

  #throwFailure(): void {
    if (this.#failed) throw this.#failed.error;
  }
}

/** `processing_pages:3/10` → `processing_pages`. */
export function phaseOf(step: string | undefined): string | undefined {
  return step?.split(':')[0];
}
