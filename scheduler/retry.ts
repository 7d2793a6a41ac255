import type { HdError } from '../contract/errors.ts';
import type { Logger } from '../control-plane/logger.ts';

/**
 * Whether the same call may succeed when tried again: the database (or PostgREST) was out
 * of reach or the connection dropped. An SQL error other than a connection one is the
 * database's verdict, and so is a lost lease.
 */
export function isTransient(err: HdError): boolean {
  if (err.code === 'DATABASE_UNAVAILABLE') return true;
  // A lost lease, and a refusal that says so (PostgREST: unknown function, refused key).
  if (!err.retryable) return false;
  const sqlstate = (err.cause as { code?: unknown } | undefined)?.code;
  return !(typeof sqlstate === 'string' && /^[0-9A-Z]{5}$/.test(sqlstate));
}

/** Pauses between tries that double from `firstMs` up to `maxMs`. */
export class Backoff {
  readonly #firstMs: number;
  readonly #maxMs: number;
  #nextMs: number;

  constructor(firstMs = 250, maxMs = 5000) {
    this.#firstMs = firstMs;
    this.#maxMs = maxMs;
    this.#nextMs = firstMs;
  }

  /** The next pause, in ms. */
  next(): number {
    const pause = this.#nextMs;
    this.#nextMs = Math.min(pause * 2, this.#maxMs);
    return pause;
  }

  reset(): void {
    this.#nextMs = this.#firstMs;
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, ms));
    signal?.addEventListener('abort', done, { once: true });
  });

/**
 * Tells the log that something the scheduler needs is down: at once, then at most every
 * `everyMs` while it stays down (with how long so far), and once when it is back.
 */
export class OutageNotice {
  readonly #log: Logger;
  readonly #everyMs: number;
  #since: number | undefined;
  #lastSaid = 0;

  constructor(log: Logger, everyMs = 5000) {
    this.#log = log;
    this.#everyMs = everyMs;
  }

  get isDown(): boolean {
    return this.#since !== undefined;
  }

  down(err: HdError, what: string): void {
    const now = Date.now();
    this.#since ??= now;
    if (this.#lastSaid > 0 && now - this.#lastSaid < this.#everyMs) return;
    this.#lastSaid = now;
    this.#log.warn(
      { code: err.code, down_ms: now - this.#since },
      `${what}, waiting: ${err.message}`,
    );
  }

  up(what: string): void {
    if (this.#since === undefined) return;
    this.#log.info({ down_ms: Date.now() - this.#since }, what);
    this.#since = undefined;
    this.#lastSaid = 0;
  }
}
