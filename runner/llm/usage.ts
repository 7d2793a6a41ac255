import { z } from 'zod';
import type { Capabilities } from './families.ts';

/** Token usage of one structured call (all its HTTP attempts and its repair). */
export interface CallUsage {
  requests: number;
  retries: number;
  repaired: boolean;
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** Prices for the estimate, in USD per million tokens (0 = unknown). */
export interface Prices {
  inputPerMTok: number;
  outputPerMTok: number;
}

export function emptyUsage(): CallUsage {
  return {
    requests: 0,
    retries: 0,
    repaired: false,
    prompt_tokens: 0,
    completion_tokens: 0,
    total_tokens: 0,
  };
}

const reportedUsage = z.object({
  prompt_tokens: z.number().nonnegative().catch(0),
  completion_tokens: z.number().nonnegative().catch(0),
  total_tokens: z.number().nonnegative().optional(),
});

/** Adds a response's `usage` (when the server reports one) to `usage`. */
export function addReported(usage: CallUsage, reported: unknown): boolean {
  const parsed = reportedUsage.safeParse(reported);
  if (!parsed.success) return false;
  const { prompt_tokens, completion_tokens, total_tokens } = parsed.data;
  usage.prompt_tokens += prompt_tokens;
  usage.completion_tokens += completion_tokens;
  usage.total_tokens += total_tokens ?? prompt_tokens + completion_tokens;
  return true;
}

export function estimateCostUsd(
  usage: Pick<CallUsage, 'prompt_tokens' | 'completion_tokens'>,
  prices: Prices,
) {
  const usd =
    (usage.prompt_tokens * prices.inputPerMTok + usage.completion_tokens * prices.outputPerMTok) /
    1e6;
  return Math.round(usd * 1e6) / 1e6;
}

/** Running totals of one job, for its stats (debug.stats.llm). */
export class UsageMeter {
  calls = 0;
  failures = 0;
  repairs = 0;
  requests = 0;
  retries = 0;
  /** Responses that carried no `usage` (their tokens are not counted). */
  unreported = 0;
  prompt_tokens = 0;
  completion_tokens = 0;
  total_tokens = 0;

  /** What the last answered request carried (the family table plus what was learned). */
  capabilities: Capabilities | undefined;

  readonly model: string;
  readonly prices: Prices;

  constructor(model: string, prices: Prices) {
    this.model = model;
    this.prices = prices;
  }

  add(call: CallUsage, ok: boolean): void {
    this.calls += 1;
    if (!ok) this.failures += 1;
    if (call.repaired) this.repairs += 1;
    this.requests += call.requests;
    this.retries += call.retries;
    this.prompt_tokens += call.prompt_tokens;
    this.completion_tokens += call.completion_tokens;
    this.total_tokens += call.total_tokens;
  }

  stats() {
    return {
      model: this.model,
      calls: this.calls,
      failures: this.failures,
      repairs: this.repairs,
      requests: this.requests,
      retries: this.retries,
      responses_without_usage: this.unreported,
      prompt_tokens: this.prompt_tokens,
      completion_tokens: this.completion_tokens,
      total_tokens: this.total_tokens,
      cost_usd_estimate: estimateCostUsd(this, this.prices),
      prices_usd_per_mtok: { input: this.prices.inputPerMTok, output: this.prices.outputPerMTok },
      ...(this.capabilities ? { request_shape: this.capabilities } : {}),
    };
  }
}
