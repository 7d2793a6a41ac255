import { PostgresDb } from './postgres.ts';
import { SupabaseDb } from './supabase.ts';
import type { ControlPlaneDb } from './transport.ts';

/** hd_llm_admit's answer (00015). */
export type Admission =
  | { verdict: 'refused' }
  | {
      verdict: 'admitted';
      job_id: string;
      account_id: string;
      day: string;
      /** Whether tokens were reserved (the account has a budget) for hd_llm_record to release. */
      reserved: boolean;
      /** The lease the credential is bound to: its reservations end with it (00027). */
      lease_token?: string;
    }
  | {
      verdict: 'budget';
      job_id: string;
      account_id: string;
      day: string;
      used_tokens: number;
      budget_tokens: number | null;
      used_cost_usd: number;
      budget_cost_usd: number | null;
    };

/** hd_llm_credential's answer (00026): a credential whose lease is current. */
export interface CurrentCredential {
  job_id: string;
  account_id: string;
  valid_until: string;
}

/** What one request used, as the provider reported it, and what its admission reserved. */
export interface LlmUsageRecord {
  accountId: string;
  day: string;
  jobId: string;
  /** The admission's lease: hd_llm_record takes back only what it still holds (00027; absent: the job's current lease). */
  leaseToken?: string | undefined;
  model: string;
  reservedTokens: number;
  reservedCostUsd: number;
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
  costUsd: number;
}

/** The gateway's SQL (00015) on either transport: credentials, admissions, usage. */
export interface LlmLedger {
  grantCredential(
    jobId: string,
    leaseToken: string,
    tokenSha256: string,
    validUntil: Date,
  ): Promise<void>;
  dropCredentials(): Promise<number>;
  /** The credential's job while its lease is current (no budget read, nothing written). */
  credential(tokenSha256: string): Promise<CurrentCredential | null>;
  admit(
    tokenSha256: string,
    model: string,
    tokens: number,
    costUsd: number,
    defaultDailyTokens: number | undefined,
  ): Promise<Admission>;
  /** Several requests' usage in one call (hd_llm_record). */
  record(rows: readonly LlmUsageRecord[]): Promise<void>;
}

type Call = (fn: string, args: Record<string, unknown>) => Promise<unknown>;

export function llmLedgerOf(db: ControlPlaneDb): LlmLedger {
  if (db instanceof PostgresDb) {
    // Named arguments, as PostgREST passes them: one argument list for both transports.
    return ledger(async (fn, args) => {
      const names = Object.keys(args);
      const list = names.map((name, i) => `${name} => $${i + 1}`).join(', ');
      // jsonb arguments as JSON text (pg would send an array as a PostgreSQL array).
      const values = Object.values(args).map((v) =>
        v !== null && typeof v === 'object' ? JSON.stringify(v) : v,
      );
      const { rows } = await db.pool.query(`select public.${fn}(${list}) as r`, values);
      return rows[0]?.r;
    });
  }
  if (db instanceof SupabaseDb) return ledger((fn, args) => db.rpc(fn, args));
  throw new Error('llm gateway: unknown database transport');
}

function ledger(call: Call): LlmLedger {
  return {
    async grantCredential(jobId, leaseToken, tokenSha256, validUntil) {
      await call('hd_grant_llm_credential', {
        p_job_id: jobId,
        p_lease_token: leaseToken,
        p_token_sha256: tokenSha256,
        p_valid_until: validUntil.toISOString(),
      });
    },
    async dropCredentials() {
      return Number(await call('hd_drop_llm_credentials', {}));
    },
    async credential(tokenSha256) {
      return ((await call('hd_llm_credential', { p_token_sha256: tokenSha256 })) ??
        null) as CurrentCredential | null;
    },
    async admit(tokenSha256, model, tokens, costUsd, defaultDailyTokens) {
      return (await call('hd_llm_admit', {
        p_token_sha256: tokenSha256,
        p_model: model,
        p_tokens: tokens,
        p_cost: costUsd,
        p_default_daily_tokens: defaultDailyTokens ?? null,
      })) as Admission;
    },
    async record(rows) {
      await call('hd_llm_record', {
        p_rows: rows.map((u) => ({
          account_id: u.accountId,
          day: u.day,
          job_id: u.jobId,
          lease_token: u.leaseToken,
          model: u.model,
          reserved_tokens: u.reservedTokens,
          reserved_cost_usd: u.reservedCostUsd,
          prompt_tokens: u.promptTokens,
          completion_tokens: u.completionTokens,
          cached_tokens: u.cachedTokens,
          cost_usd: u.costUsd,
        })),
      });
    },
  };
}
