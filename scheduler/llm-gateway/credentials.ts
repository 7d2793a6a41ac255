import type { CurrentCredential } from '../../control-plane/db/llm-ledger.ts';

/** A credential the gateway accepts before reading a body: its job, account and end. */
export interface KnownCredential {
  jobId: string;
  accountId: string;
  /** Epoch ms after which it is refused (its grant's valid_until). */
  validUntil: number;
}

export type CredentialCheck =
  | { verdict: 'known'; credential: KnownCredential }
  | { verdict: 'unknown' }
  /** Too many lookups of credentials it did not issue are waiting: try again shortly. */
  | { verdict: 'busy' };

/** A gateway credential as newCredential (budgets.ts) makes them. */
const CREDENTIAL_SHAPE = /^hdgw_[A-Za-z0-9_-]{43}$/;
// Lookups in SQL at once, and waiting: a flood of made-up credentials costs the database
// at most this, and the gateway a socket each (nothing read) until it answers 503.
const LOOKUPS_AT_ONCE = 2;
const LOOKUPS_WAITING = 64;
// Hashes SQL refused, remembered so that one made-up credential sent again costs nothing.
// A refused credential never becomes valid: a token is granted before any runner holds it,
// and a lease, once ended, is never current again.
const REFUSED_REMEMBERED = 1024;

/**
 * The credentials the gateway checks before it reads a request's body (the admission
 * order: docs/containers.md). Those it issued are in memory, with their job, until their
 * runner ends (forgetJob), SQL refuses them (forget) or they pass valid_until. Any other
 * well-formed token is looked up once in SQL (hd_llm_credential, 00026: a runner
 * re-adopted after a scheduler restart holds one) and remembered either way. This is a
 * gate against unauthenticated bodies, not the authority: hd_llm_admit checks the lease
 * and the budget again before the provider is called.
 */
export class CredentialTable {
  readonly #lookup: (tokenSha256: string) => Promise<CurrentCredential | null>;
  readonly #now: () => number;
  readonly #known = new Map<string, KnownCredential>();
  readonly #refused = new Set<string>();
  #lookups = 0;
  readonly #waiting: (() => void)[] = [];

  constructor(
    lookup: (tokenSha256: string) => Promise<CurrentCredential | null>,
    now: () => number = Date.now,
  ) {
    this.#lookup = lookup;
    this.#now = now;
  }

  remember(tokenSha256: string, credential: KnownCredential): void {
    this.#known.set(tokenSha256, credential);
  }

  forget(tokenSha256: string): void {
    this.#known.delete(tokenSha256);
    this.#refuse(tokenSha256);
  }

  /** The job's runner ended: its credentials are refused from now on. */
  forgetJob(jobId: string): void {
    for (const [hash, c] of this.#known) if (c.jobId === jobId) this.forget(hash);
  }

  /** Drops the credentials past their valid_until (memory stays bounded by live runners). */
  dropExpired(): void {
    const now = this.#now();
    for (const [hash, c] of this.#known) if (c.validUntil <= now) this.#known.delete(hash);
  }

  async check(token: string, tokenSha256: string): Promise<CredentialCheck> {
    const known = this.#known.get(tokenSha256);
    if (known) {
      if (known.validUntil > this.#now()) return { verdict: 'known', credential: known };
      this.forget(tokenSha256);
      return { verdict: 'unknown' };
    }
    if (!CREDENTIAL_SHAPE.test(token) || this.#refused.has(tokenSha256))
      return { verdict: 'unknown' };
    if (this.#lookups >= LOOKUPS_AT_ONCE) {
      if (this.#waiting.length >= LOOKUPS_WAITING) return { verdict: 'busy' };
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    } else this.#lookups += 1;
    try {
      const found = await this.#lookup(tokenSha256);
      if (!found) {
        this.#refuse(tokenSha256);
        return { verdict: 'unknown' };
      }
      const credential = {
        jobId: found.job_id,
        accountId: found.account_id,
        validUntil: Date.parse(found.valid_until),
      };
      this.remember(tokenSha256, credential);
      return { verdict: 'known', credential };
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#lookups -= 1;
    }
  }

  #refuse(tokenSha256: string): void {
    if (this.#refused.size >= REFUSED_REMEMBERED)
      this.#refused.delete(this.#refused.values().next().value!);
    this.#refused.add(tokenSha256);
  }
}
