import type { HdError } from '../contract/errors.ts';

/**
 * Whether the same call may succeed when tried again: the database (or PostgREST) was out
 * of reach or the connection dropped. An SQL error other than a connection one is the
 * database's verdict, and so is a lost lease.
 */
export function isTransient(err: HdError): boolean {
  if (err.code === 'DATABASE_UNAVAILABLE') return true;
  if (err.code === 'LEASE_LOST' || err.code === 'CANCELLED') return false;
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

export const sleep = (ms: number) =>
  new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, ms)));
