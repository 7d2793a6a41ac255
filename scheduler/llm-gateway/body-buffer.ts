/** A place for one request's body; give it back once the request is answered. */
export interface BodyPlace {
  /** The body was read and is this size: room held beyond it goes back (never grows). */
  shrink(bytes: number): void;
  release(): void;
}

export interface BodyBufferStats {
  /** Bytes held for request bodies now: being read, waiting at the limiter, at the provider. */
  reservedBytes: number;
  /** The most that were held at once since the start. */
  peakBytes: number;
  /** Requests of admitted credentials waiting for room, their bodies unread. */
  waiting: number;
}

/**
 * What the gateway holds of request bodies (HD_LLM_GATEWAY_BUFFER_BYTES): a body's room is
 * taken before its first byte is read (its Content-Length, or the largest allowed where
 * none is sent) and held until its request is answered, since the body stays in memory
 * while it waits at the limiter and goes to the provider. A request that does not fit waits,
 * its body unread in the socket, first come first served; one that gives up leaves the queue.
 */
export class BodyBuffer {
  readonly #maxBytes: number;
  #reserved = 0;
  #peak = 0;
  readonly #waiting: { bytes: number; grant: (place: BodyPlace) => void }[] = [];

  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  get stats(): BodyBufferStats {
    return { reservedBytes: this.#reserved, peakBytes: this.#peak, waiting: this.#waiting.length };
  }

  /** Room for `bytes` (at most the whole buffer); rejects with `signal`'s reason on give-up. */
  reserve(bytes: number, signal: AbortSignal): Promise<BodyPlace> {
    const size = Math.min(bytes, this.#maxBytes);
    if (this.#waiting.length === 0 && this.#reserved + size <= this.#maxBytes)
      return Promise.resolve(this.#take(size));
    return new Promise((resolve, reject) => {
      const waiter = { bytes: size, grant: resolve };
      this.#waiting.push(waiter);
      signal.addEventListener(
        'abort',
        () => {
          const at = this.#waiting.indexOf(waiter);
          if (at < 0) return; // already granted: the caller releases it
          this.#waiting.splice(at, 1);
          reject(signal.reason);
          this.#pump(); // a large one leaving may let smaller ones behind it in
        },
        { once: true },
      );
    });
  }

  #take(bytes: number): BodyPlace {
    this.#reserved += bytes;
    this.#peak = Math.max(this.#peak, this.#reserved);
    let held = bytes;
    const giveBack = (to: number) => {
      if (to >= held) return;
      this.#reserved -= held - to;
      held = to;
      this.#pump();
    };
    return { shrink: (size) => giveBack(Math.max(0, size)), release: () => giveBack(0) };
  }

  #pump(): void {
    while (this.#waiting.length > 0) {
      const next = this.#waiting[0]!;
      if (this.#reserved + next.bytes > this.#maxBytes) return;
      this.#waiting.shift();
      next.grant(this.#take(next.bytes));
    }
  }
}
