import { createHash, randomBytes } from 'node:crypto';
import type { Config } from '../../control-plane/config.ts';

/** USD per million tokens. */
export interface Price {
  input: number;
  cached_input?: number | undefined;
  output: number;
}

/** Tokens one request used, as the provider reported them. */
export interface TokenUsage {
  prompt: number;
  completion: number;
  /** Part of `prompt` served from the provider's prompt cache. */
  cached: number;
}

/** The price table: HD_LLM_PRICES, else HD_LLM_PRICE_* for HD_LLM_MODEL; unknown models cost 0. */
export function priceTable(config: Config): Record<string, Price> {
  return (
    config.HD_LLM_PRICES ?? {
      [config.HD_LLM_MODEL]: {
        input: config.HD_LLM_PRICE_INPUT_PER_MTOK,
        output: config.HD_LLM_PRICE_OUTPUT_PER_MTOK,
      },
    }
  );
}

export function costUsd(price: Price | undefined, usage: TokenUsage): number {
  if (!price) return 0;
  const cached = Math.min(usage.cached, usage.prompt);
  return (
    ((usage.prompt - cached) * price.input +
      cached * (price.cached_input ?? price.input) +
      usage.completion * price.output) /
    1e6
  );
}

/**
 * The most tokens a chat request can use, reserved against the budget and the
 * tokens-per-minute limit before it is sent: its prompt estimated at 4 bytes of JSON per
 * token (tokenizers differ; the provider's count replaces this when the answer comes),
 * plus the output limit it asks for (the larger where it names both; `defaultOutput` where
 * it names none) for each of the
 * `n` choices it asks for (the limit is per choice: n: 100 of 50 tokens is 5,000).
 */
export function chatTokenCeiling(
  body: Record<string, unknown>,
  bodyBytes: number,
  defaultOutput: number,
): number {
  // The whole body, not only `messages`: a provider bills tools, functions and a
  // response_format schema as prompt tokens too, so a runner could otherwise put its
  // prompt there and be reserved next to nothing (docs/containers.md, residual: the ratio).
  const prompt = Math.ceil(bodyBytes / 4);
  // Both limits may be sent, and providers read different ones (Ollama max_tokens only):
  // the larger counts.
  const limits = [body.max_completion_tokens, body.max_tokens].map(count).filter((l) => l > 0);
  const choices = Math.max(count(body.n), 1);
  const output = limits.length > 0 ? Math.max(...limits) : defaultOutput;
  return prompt + output * choices;
}

/** A count as a lax provider reads it (vLLM's pydantic takes "100" for 100); 0 otherwise. */
function count(value: unknown): number {
  const n = typeof value === 'string' && /^\s*\d+(\.\d*)?\s*$/.test(value) ? Number(value) : value;
  return typeof n === 'number' && Number.isFinite(n) && n > 0 ? Math.ceil(n) : 0;
}

/** The usage block of a chat completion or a transcription (OpenAI's two shapes). */
export function reportedUsage(body: unknown): TokenUsage | undefined {
  const usage = (body as { usage?: Record<string, unknown> } | undefined)?.usage;
  if (!usage || typeof usage !== 'object') return undefined;
  const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
  const details = (usage.prompt_tokens_details ?? usage.input_token_details) as
    Record<string, unknown> | undefined;
  return {
    prompt: num(usage.prompt_tokens ?? usage.input_tokens),
    completion: num(usage.completion_tokens ?? usage.output_tokens),
    cached: num(details?.cached_tokens),
  };
}

/** A runner's gateway credential: random, recognisable in a leak, stored only hashed. */
export function newCredential(): string {
  return `hdgw_${randomBytes(32).toString('base64url')}`;
}

export function credentialHash(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/**
 * Writes requests' usage through `write` (hd_llm_record): at once when nothing is being
 * written, else together with every answer that came back meanwhile, in one call. The
 * promise of `add` settles once its row is written (or the write failed: `onError`).
 */
export class UsageRecorder<Row> {
  readonly #write: (rows: Row[]) => Promise<void>;
  readonly #onError: (error: unknown, rows: Row[]) => void;
  #queue: { row: Row; done: () => void }[] = [];
  #writing = false;

  constructor(
    write: (rows: Row[]) => Promise<void>,
    onError: (error: unknown, rows: Row[]) => void,
  ) {
    this.#write = write;
    this.#onError = onError;
  }

  add(row: Row): Promise<void> {
    return new Promise((done) => {
      this.#queue.push({ row, done });
      if (!this.#writing) void this.#drain();
    });
  }

  async #drain(): Promise<void> {
    this.#writing = true;
    while (this.#queue.length > 0) {
      const batch = this.#queue.splice(0);
      const rows = batch.map((b) => b.row);
      await this.#write(rows).catch((error: unknown) => this.#onError(error, rows));
      for (const b of batch) b.done();
    }
    this.#writing = false;
  }
}
