import { HdError } from '../../contract/errors.ts';

/**
 * The scheduler's LLM gateway refuses a request over the account's daily budget with
 * HTTP 402 and error code LLM_BUDGET_EXCEEDED (scheduler/llm-gateway/server.ts), before
 * the provider sees it: the job fails with that code, to be retried once the budget resets.
 */
export function budgetRefusal(error: unknown): HdError | undefined {
  const e = error as { status?: unknown; code?: unknown; error?: { message?: unknown } };
  if (e?.status !== 402 || e.code !== 'LLM_BUDGET_EXCEEDED') return undefined;
  const why = typeof e.error?.message === 'string' ? e.error.message : 'budget exceeded';
  return new HdError('LLM_BUDGET_EXCEEDED', why, { cause: error });
}
