import { z } from 'zod';

/** How many grants one lease may ask for: `rate` a second on average, `burst` at once. */
export interface GrantRate {
  rate: number;
  burst: number;
}

/** HD_UPLOAD_GRANT_RATE, HD_UPLOAD_GRANT_BURST by default. */
export const DEFAULT_GRANT_RATE: GrantRate = { rate: 10, burst: 20 };

// Storage signs an upload URL for 2 hours (not settable); a URL handed out again is given
// at least this long before its end, or a new one is signed.
export const SIGNED_UPLOAD_URL_MS = 2 * 60 * 60_000;
const REUSE_MARGIN_MS = 5 * 60_000;
/** Signed URLs kept per lease, the oldest dropped first: memory stays bounded for a long job. */
export const MAX_URLS_PER_LEASE = 256;

/** The claims of a signed upload URL's token that say when it ends. */
const tokenClaims = z.object({ exp: z.number().int().positive() });

/** When a signed upload URL ends: its token's `exp`, else 2 hours after `signedAt`. */
export function signedUrlEnd(url: string, signedAt: number): number {
  try {
    const token = new URL(url).searchParams.get('token') ?? '';
    const payload = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString());
    return tokenClaims.parse(payload).exp * 1000;
  } catch {
    return signedAt + SIGNED_UPLOAD_URL_MS;
  }
}

interface Lease {
  /** Token bucket: tokens left at `at`. */
  tokens: number;
  at: number;
  /** Signed URLs by key: given again while they last, instead of asking Storage again. */
  urls: Map<string, Promise<{ url: string; reuseUntil: number }>>;
}

/**
 * Per runner (per job lease) bounds of the upload grants, so one runner cannot spend the
 * project's Storage rate limits (docs/containers.md, residual risks): a token bucket on its
 * asks (`take`), and one signed URL per key while it lasts (`signOnce`). Kept in memory by
 * job and lease; `forget(jobId)` when the job's runner ended.
 */
export class GrantLimits {
  readonly #rate: GrantRate;
  readonly #now: () => number;
  readonly #leases = new Map<string, Lease>();

  constructor(rate: GrantRate, now: () => number = Date.now) {
    this.#rate = rate;
    this.#now = now;
  }

  #lease(jobId: string, leaseToken: string): Lease {
    const id = `${jobId}/${leaseToken}`;
    let lease = this.#leases.get(id);
    if (!lease) {
      lease = { tokens: this.#rate.burst, at: this.#now(), urls: new Map() };
      this.#leases.set(id, lease);
    }
    return lease;
  }

  /**
   * One ask of a (checked) lease: 0 when the bucket had a token for it, else how many ms
   * until it has one (nothing taken).
   */
  take(jobId: string, leaseToken: string): number {
    const lease = this.#lease(jobId, leaseToken);
    const now = this.#now();
    const { rate, burst } = this.#rate;
    lease.tokens = Math.min(burst, lease.tokens + ((now - lease.at) / 1000) * rate);
    lease.at = now;
    if (lease.tokens >= 1) {
      lease.tokens -= 1;
      return 0;
    }
    // In whole ms, past the float's noise (0.998 tokens at 2/s: 1 ms, not 1.0000000000000009).
    return Math.max(1, Math.ceil(Math.round(((1 - lease.tokens) / rate) * 1e6) / 1e3));
  }

  /**
   * The URL signed earlier for this lease and key while it lasts (an ask in flight
   * included), else `sign()`'s, kept for the next ask. A failed `sign` is not kept.
   */
  async signOnce(
    jobId: string,
    leaseToken: string,
    key: string,
    sign: () => Promise<string>,
  ): Promise<string> {
    const { urls } = this.#lease(jobId, leaseToken);
    const now = this.#now();
    const earlier = urls.get(key);
    if (earlier) {
      const held = await earlier.catch(() => undefined);
      if (held && held.reuseUntil > this.#now()) return held.url;
      if (urls.get(key) === earlier) urls.delete(key);
      return this.signOnce(jobId, leaseToken, key, sign);
    }
    const signing = sign().then((url) => ({
      url,
      reuseUntil: signedUrlEnd(url, now) - REUSE_MARGIN_MS,
    }));
    urls.set(key, signing);
    // A key dropped here is only signed again if asked again (the bucket bounds that).
    for (const oldest of urls.keys()) {
      if (urls.size <= MAX_URLS_PER_LEASE) break;
      urls.delete(oldest);
    }
    try {
      return (await signing).url;
    } catch (error) {
      if (urls.get(key) === signing) urls.delete(key);
      throw error;
    }
  }

  /** Drops what is held for the job's leases (its runner ended). */
  forget(jobId: string): void {
    for (const id of this.#leases.keys()) if (id.startsWith(`${jobId}/`)) this.#leases.delete(id);
  }

  /** Leases held now (for tests: what `forget` left). */
  get leases(): number {
    return this.#leases.size;
  }
}
