import type { Logger } from '../control-plane/logger.ts';
import type { WarmRunner } from './launcher.ts';
import { Backoff } from './retry.ts';

export interface WarmPoolEvents {
  /** A warm runner is loaded and waits for a job. */
  ready?: (runnerId: string) => void;
  /** A warm runner ended without a job (idle limit, crash, discarded). */
  ended?: (runnerId: string) => void;
}

/**
 * The scheduler's warm runners (HD_WARM_RUNNERS): runners started for idle slots before
 * a job exists, each handed exactly one job. A runner that ends unused is replaced at the
 * next fill; one that ends before it was ever ready (a broken install) makes the pool
 * wait, doubling up to a minute, so that it does not start runners in a loop.
 */
export class WarmPool {
  readonly #prestart: () => Promise<WarmRunner>;
  readonly #log: Logger;
  readonly #events: WarmPoolEvents;
  /** Started, not yet taken (ready or still loading). */
  readonly #idle: WarmRunner[] = [];
  /** Runners being started (prestart not settled). */
  readonly #starting = new Set<Promise<WarmRunner>>();
  #closed = false;
  readonly #backoff = new Backoff(1000, 60_000);
  #pausedUntil = 0;

  constructor(prestart: () => Promise<WarmRunner>, log: Logger, events: WarmPoolEvents = {}) {
    this.#prestart = prestart;
    this.#log = log;
    this.#events = events;
  }

  /** Warm runners started and not taken. */
  get size(): number {
    return this.#idle.length + this.#starting.size;
  }

  /** Starts runners until `wanted` are warm; ends the ones past it. */
  fill(wanted: number): void {
    while (!this.#closed && this.#idle.length > wanted) this.#idle.pop()!.discard();
    while (!this.#closed && this.size < wanted && Date.now() >= this.#pausedUntil)
      void this.#start();
  }

  /** A warm runner for a job, the longest ready first; undefined when there is none. */
  take(): WarmRunner | undefined {
    return this.#idle.shift();
  }

  /**
   * Ends every warm runner (their stdin closes; they exit without a job), those still
   * starting too: resolves once all have ended.
   */
  async close(): Promise<void> {
    this.#closed = true;
    const starting = await Promise.all([...this.#starting].map((p) => p.catch(() => undefined)));
    const idle = this.#idle.splice(0);
    for (const runner of idle) runner.discard();
    // Those still starting are discarded by #start as they come.
    await Promise.all([...idle, ...starting].map((runner) => runner?.ended));
  }

  async #start(): Promise<void> {
    let runner: WarmRunner;
    const starting = this.#prestart();
    this.#starting.add(starting);
    try {
      runner = await starting;
    } catch (error) {
      this.#pause(`a warm runner could not be started: ${(error as Error).message}`);
      return;
    } finally {
      this.#starting.delete(starting);
    }
    if (this.#closed) return runner.discard();
    this.#idle.push(runner);
    const ready = await runner.ready;
    if (ready) {
      this.#backoff.reset();
      this.#events.ready?.(runner.id);
    }
    await runner.ended;
    const index = this.#idle.indexOf(runner);
    if (index < 0) return; // taken: its job's end is the scheduler's to see
    this.#idle.splice(index, 1);
    if (!ready) this.#pause(`warm runner ${runner.id} ended before it was ready`);
    this.#events.ended?.(runner.id);
  }

  #pause(message: string) {
    const pause = this.#backoff.next();
    this.#pausedUntil = Date.now() + pause;
    this.#log.warn({ retry_in_ms: pause }, message);
  }
}
