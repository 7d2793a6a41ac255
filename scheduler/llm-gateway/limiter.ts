/** Limits of one provider + model across all runners of this scheduler (HD_LLM_LIMITS). */
export interface ModelLimits {
  concurrency?: number | undefined;
  requests_per_minute?: number | undefined;
  tokens_per_minute?: number | undefined;
}

/** A place under a lane's limits; give it back with the tokens the request really used. */
export interface Permit {
  release(usedTokens: number): void;
}

interface Waiter {
  tokens: number;
  grant: (permit: Permit) => void;
}

const MINUTE_MS = 60_000;

/**
 * Requests of one provider + model: at most `concurrency` in flight, and per sliding
 * minute at most `requests_per_minute` sent and `tokens_per_minute` reserved (each
 * request's most possible tokens until it reports what it used). A 429's Retry-After
 * pauses the whole lane, so every runner waits once instead of each finding out alone.
 * While the limits hold requests back, accounts take turns: one request per account with
 * work in round-robin order, so a tenant with 500 queued requests does not starve one
 * with 5.
 */
class Lane {
  readonly #limits: ModelLimits;
  readonly #now: () => number;
  #inFlight = 0;
  /**
   * Sent within the last minute, when a per-minute limit needs them: when, and the tokens
   * counted for it; #sentTokens is their sum, kept as they come and go (summing the list
   * per request was the gateway's hottest function at thousands of requests a minute).
   */
  readonly #sent: { at: number; tokens: number; counted: boolean }[] = [];
  #sentTokens = 0;
  readonly #perMinute: boolean;
  #pausedUntil = 0;
  /** Waiting requests per account; Map order is the round-robin order. */
  readonly #waiting = new Map<string, Waiter[]>();
  #timer: NodeJS.Timeout | undefined;

  constructor(limits: ModelLimits, now: () => number) {
    this.#limits = limits;
    this.#now = now;
    this.#perMinute =
      limits.requests_per_minute !== undefined || limits.tokens_per_minute !== undefined;
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  get waiting(): number {
    let count = 0;
    for (const queue of this.#waiting.values()) count += queue.length;
    return count;
  }

  acquire(account: string, tokens: number, signal: AbortSignal): Promise<Permit> {
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { tokens, grant: resolve };
      const queue = this.#waiting.get(account);
      if (queue) queue.push(waiter);
      else this.#waiting.set(account, [waiter]);
      signal.addEventListener(
        'abort',
        () => {
          const list = this.#waiting.get(account);
          const at = list?.indexOf(waiter) ?? -1;
          if (at < 0) return; // already granted: its permit is released by the caller
          list!.splice(at, 1);
          if (list!.length === 0) this.#waiting.delete(account);
          reject(signal.reason);
        },
        { once: true },
      );
      this.#pump();
    });
  }

  pause(ms: number): void {
    this.#pausedUntil = Math.max(this.#pausedUntil, this.#now() + ms);
    this.#pump();
  }

  /** Grants waiting requests while the limits allow; else wakes itself when they will. */
  #pump(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const { concurrency, requests_per_minute: rpm, tokens_per_minute: tpm } = this.#limits;
    while (this.#waiting.size > 0) {
      const now = this.#now();
      if (now < this.#pausedUntil) return this.#wakeAt(this.#pausedUntil);
      if (concurrency !== undefined && this.#inFlight >= concurrency) return; // a release pumps
      while (this.#sent.length > 0 && this.#sent[0]!.at <= now - MINUTE_MS) {
        const gone = this.#sent.shift()!;
        gone.counted = false;
        this.#sentTokens -= gone.tokens;
      }
      const [account, queue] = this.#waiting.entries().next().value!;
      const next = queue[0]!;
      const oldest = this.#sent[0];
      if (rpm !== undefined && this.#sent.length >= rpm)
        return this.#wakeAt(oldest!.at + MINUTE_MS);
      // One request larger than the whole minute's tokens goes alone, not never.
      if (tpm !== undefined && oldest && this.#sentTokens + next.tokens > tpm)
        return this.#wakeAt(oldest.at + MINUTE_MS);
      queue.shift();
      this.#waiting.delete(account);
      if (queue.length > 0) this.#waiting.set(account, queue); // to the back of the round
      next.grant(this.#grant(now, next.tokens));
    }
  }

  #grant(now: number, tokens: number): Permit {
    this.#inFlight += 1;
    const entry = { at: now, tokens, counted: this.#perMinute };
    if (entry.counted) {
      this.#sent.push(entry);
      this.#sentTokens += tokens;
    }
    let released = false;
    return {
      release: (usedTokens: number) => {
        if (released) return;
        released = true;
        this.#inFlight -= 1;
        if (entry.counted) this.#sentTokens += usedTokens - entry.tokens; // still in the minute
        entry.tokens = usedTokens;
        this.#pump();
      },
    };
  }

  #wakeAt(at: number): void {
    this.#timer = setTimeout(() => this.#pump(), Math.max(1, at - this.#now()));
    this.#timer.unref();
  }
}

/** The lanes of all provider + model pairs; limits by model name, `*` for any other. */
export class LlmLimiter {
  readonly #limits: Record<string, ModelLimits>;
  readonly #lanes = new Map<string, Lane>();
  readonly #now: () => number;

  constructor(limits: Record<string, ModelLimits> = {}, now: () => number = Date.now) {
    this.#limits = limits;
    this.#now = now;
  }

  #lane(provider: string, model: string): Lane {
    const key = `${provider} ${model}`;
    let lane = this.#lanes.get(key);
    if (!lane) {
      lane = new Lane(this.#limits[model] ?? this.#limits['*'] ?? {}, this.#now);
      this.#lanes.set(key, lane);
    }
    return lane;
  }

  /** Waits for a place; rejects with `signal`'s reason if the caller gives up first. */
  acquire(
    provider: string,
    model: string,
    account: string,
    tokens: number,
    signal: AbortSignal,
  ): Promise<Permit> {
    return this.#lane(provider, model).acquire(account, tokens, signal);
  }

  /** The provider said 429 with Retry-After: nobody sends to this model before then. */
  pause(provider: string, model: string, ms: number): void {
    this.#lane(provider, model).pause(ms);
  }

  inFlight(provider: string, model: string): number {
    return this.#lanes.get(`${provider} ${model}`)?.inFlight ?? 0;
  }

  /** Requests admitted and waiting for their place: what a test waits on before it lets one go. */
  waiting(provider: string, model: string): number {
    return this.#lanes.get(`${provider} ${model}`)?.waiting ?? 0;
  }
}
