import type OpenAI from 'openai';
import type * as OpenAiSdk from 'openai';
import type { ChatCompletion, ChatCompletionMessageParam } from 'openai/resources/chat/completions';
import type { z } from 'zod';
import { HdError } from '../../contract/errors.ts';
import type { Config } from '../../control-plane/config.ts';
import type { Logger } from '../../control-plane/logger.ts';
import {
  learnedCapabilities,
  parseFamilyRules,
  rememberCapabilities,
  resolveCapabilities,
  type Capabilities,
  type FamilyRule,
} from './families.ts';
import { budgetRefusal } from './budget-refusal.ts';
import { responseJsonSchema } from './json-schema.ts';
import { repairPrompt, schemaInstruction } from './prompts.ts';
import { refusedParameter, sentParameters, withoutParameter } from './refusals.ts';
import { backoffMs, retryAfterMs, Semaphore, sleep } from './retry.ts';
import { addReported, emptyUsage, UsageMeter, type CallUsage } from './usage.ts';

export const OPENAI_BASE_URL = 'https://api.openai.com/v1';

export interface LlmSettings {
  baseURL: string | undefined;
  /** The provider behind a gateway at baseURL, for the family table (HD_LLM_PROVIDER_URL). */
  providerURL: string | undefined;
  apiKey: string | undefined;
  model: string;
  concurrency: number;
  timeoutMs: number;
  maxRetries: number;
  retryBaseMs: number;
  retryMaxMs: number;
  /** Forces the structured-output mode; undefined: the model family's. */
  responseFormat: Capabilities['responseFormat'] | undefined;
  /** HD_LLM_MODEL_FAMILIES: rules tried before the built-in capability table. */
  familyRules: FamilyRule[];
  maxOutputTokens: number;
  prices: { inputPerMTok: number; outputPerMTok: number };
}

export function llmSettings(config: Config): LlmSettings {
  return {
    baseURL: config.HD_LLM_BASE_URL ?? (config.HD_LLM_API_KEY ? OPENAI_BASE_URL : undefined),
    providerURL: config.HD_LLM_PROVIDER_URL,
    apiKey: config.HD_LLM_API_KEY,
    model: config.HD_LLM_MODEL,
    concurrency: config.HD_LLM_CONCURRENCY,
    timeoutMs: config.HD_LLM_TIMEOUT_MS,
    maxRetries: config.HD_LLM_MAX_RETRIES,
    retryBaseMs: config.HD_LLM_RETRY_BASE_MS,
    retryMaxMs: config.HD_LLM_RETRY_MAX_MS,
    responseFormat: config.HD_LLM_RESPONSE_FORMAT,
    familyRules: parseFamilyRules(config.HD_LLM_MODEL_FAMILIES),
    maxOutputTokens: config.HD_LLM_MAX_OUTPUT_TOKENS,
    prices: {
      inputPerMTok: config.HD_LLM_PRICE_INPUT_PER_MTOK,
      outputPerMTok: config.HD_LLM_PRICE_OUTPUT_PER_MTOK,
    },
  };
}

export interface StructuredRequest<T> {
  /** Structured-output schema name, e.g. `interpretation`. */
  task: string;
  schema: z.ZodType<T>;
  system: string;
  user: string;
  /** Cancels this call only; the client's own signal (the job's) always applies. */
  signal?: AbortSignal;
}

export interface StructuredResult<T> {
  value: T;
  model: string;
  usage: CallUsage;
}

/**
 * A chat-completions client for one job, over the openai package against any
 * OpenAI-compatible endpoint. Structured output from a zod schema, the answer validated
 * with the same schema and repaired once, then LLM_FAILED. At most `concurrency`
 * requests in flight; 429/5xx/timeouts retried with Retry-After or backoff; the job's
 * AbortSignal cancels requests in flight. The API key is never logged or put in an error.
 */
export class LlmClient {
  readonly settings: LlmSettings;
  readonly meter: UsageMeter;
  readonly #log: Logger;
  readonly #signal: AbortSignal;
  readonly #limit: Semaphore;
  #openai: OpenAI | undefined;
  #sdk: typeof OpenAiSdk | undefined;

  constructor(settings: LlmSettings, options: { log: Logger; signal: AbortSignal }) {
    this.settings = settings;
    this.meter = new UsageMeter(settings.model, settings.prices);
    this.#log = options.log;
    this.#signal = options.signal;
    this.#limit = new Semaphore(settings.concurrency);
  }

  get model(): string {
    return this.settings.model;
  }

  /** What the next request sends: what the endpoint refused so far, else the family table. */
  capabilities(): Capabilities {
    const { baseURL, providerURL, model, familyRules, responseFormat } = this.settings;
    const learned = learnedCapabilities(baseURL, model);
    if (learned) return learned.capabilities;
    const guessed = resolveCapabilities(model, providerURL ?? baseURL, familyRules);
    return responseFormat ? { ...guessed, responseFormat } : guessed;
  }

  async structured<T>(request: StructuredRequest<T>): Promise<StructuredResult<T>> {
    const signal = request.signal ? AbortSignal.any([this.#signal, request.signal]) : this.#signal;
    const jsonSchema = responseJsonSchema(request.schema);
    // Without json_schema the schema goes into the prompt; the answer is validated either way.
    const system = (capabilities: Capabilities) =>
      capabilities.responseFormat === 'json_schema'
        ? request.system
        : `${request.system}\n${schemaInstruction(jsonSchema)}`;
    const conversation: ChatCompletionMessageParam[] = [{ role: 'user', content: request.user }];
    const usage = emptyUsage();
    let ok = false;
    try {
      for (let pass = 0; ; pass++) {
        const completion = await this.#limit.run(() =>
          this.#complete(
            request.task,
            (capabilities) => [{ role: 'system', content: system(capabilities) }, ...conversation],
            jsonSchema,
            usage,
            signal,
          ),
        );
        const answer = readAnswer(completion, request.schema);
        if (answer.ok) {
          ok = true;
          return { value: answer.value, model: completion.model || this.model, usage };
        }
        if (pass > 0) {
          throw new HdError(
            'LLM_FAILED',
            `the model's ${request.task} answer was unusable after one repair attempt: ${answer.problem}`,
            { details: { task: request.task, model: this.model } },
          );
        }
        this.#log.warn({ task: request.task, problem: answer.problem }, 'repairing model answer');
        usage.repaired = true;
        conversation.push(
          { role: 'assistant', content: answer.raw },
          { role: 'user', content: repairPrompt(answer.problem) },
        );
      }
    } finally {
      this.meter.add(usage, ok);
    }
  }

  async #client(): Promise<OpenAI> {
    if (!this.settings.baseURL) {
      throw new HdError(
        'LLM_FAILED',
        'no language model endpoint is configured: set HD_LLM_BASE_URL (and HD_LLM_MODEL, HD_LLM_API_KEY as needed)',
        { retryable: false },
      );
    }
    // Every option given explicitly, so nothing is read from OPENAI_* variables, and the
    // SDK's own retries are off: ours honour the job's signal and count in the stats.
    // Imported on the first request: runners of the other job types never load the SDK.
    this.#sdk ??= await import('openai');
    this.#openai ??= new this.#sdk.OpenAI({
      baseURL: this.settings.baseURL,
      apiKey: this.settings.apiKey ?? 'none',
      organization: null,
      project: null,
      webhookSecret: null,
      maxRetries: 0,
      timeout: this.settings.timeoutMs,
      logLevel: 'off',
      fetch: keepErrorBodies,
    });
    return this.#openai;
  }

  async #complete(
    task: string,
    messages: (capabilities: Capabilities) => ChatCompletionMessageParam[],
    jsonSchema: Record<string, unknown>,
    usage: CallUsage,
    signal: AbortSignal,
  ): Promise<ChatCompletion> {
    const client = await this.#client();
    let capabilities = this.capabilities();
    for (let attempt = 0; ;) {
      if (signal.aborted) throw signal.reason;
      usage.requests += 1;
      try {
        const completion = await client.chat.completions.create(
          {
            model: this.model,
            messages: messages(capabilities),
            ...requestParameters(capabilities, this.settings.maxOutputTokens, task, jsonSchema),
          },
          { signal, timeout: this.settings.timeoutMs, maxRetries: 0 },
        );
        if (!addReported(usage, completion.usage)) this.meter.unreported += 1;
        this.meter.capabilities = capabilities;
        return completion;
      } catch (error) {
        if (signal.aborted) throw signal.reason;
        const refused = budgetRefusal(error);
        if (refused) throw refused;
        // A parameter the endpoint does not take: asked again without it, at once, and
        // never sent to this model again (not a retry: nothing was wrong but the request).
        const adapted = this.#adaptToRefusal(error, capabilities, task);
        if (adapted) {
          capabilities = adapted;
          continue;
        }
        const failure = this.#classify(error);
        const waitMs = failure.retryable ? (failure.retryAfterMs ?? this.#backoff(attempt)) : 0;
        if (!failure.retryable || attempt >= this.settings.maxRetries) {
          throw new HdError('LLM_FAILED', failure.message, {
            cause: error,
            retryable: failure.retryable,
            details: { task, model: this.model, status: failure.status, requests: usage.requests },
          });
        }
        if (waitMs > this.settings.retryMaxMs) {
          throw new HdError(
            'LLM_FAILED',
            `${failure.message}; the endpoint asked to wait ${waitMs} ms, more than HD_LLM_RETRY_MAX_MS (${this.settings.retryMaxMs}); the job will be retried later`,
            { cause: error, details: { task, status: failure.status, retry_after_ms: waitMs } },
          );
        }
        usage.retries += 1;
        this.#log.warn(
          { task, status: failure.status, attempt: attempt + 1, wait_ms: waitMs },
          `model request failed, retrying: ${failure.message}`,
        );
        attempt += 1;
        await sleep(waitMs, signal);
      }
    }
  }

  /** When `error` refused a parameter: what to ask again with (also remembered). */
  #adaptToRefusal(
    error: unknown,
    capabilities: Capabilities,
    task: string,
  ): Capabilities | undefined {
    const sdk = this.#sdk;
    if (!sdk || !(error instanceof sdk.APIError) || !error.headers) return undefined;
    const parameter = refusedParameter(
      error.status,
      ERROR_BODIES.get(error.headers),
      sentParameters(capabilities),
    );
    if (!parameter) return undefined;
    const { baseURL, model } = this.settings;
    const learned = learnedCapabilities(baseURL, model);
    // Requests in flight together are refused together: build on what another one learned.
    const base = learned?.capabilities ?? capabilities;
    if (!sentParameters(base).includes(parameter)) return base;
    const refused = new Set(learned?.refused).add(parameter);
    const next = withoutParameter(base, parameter, refused);
    if (!next) return undefined;
    rememberCapabilities(baseURL, model, { capabilities: next, refused });
    this.#log.warn(
      { task, model, refused: parameter, family: capabilities.family, now: next },
      `the model endpoint refused ${parameter} (HTTP ${error.status}); asking again without it, and from now on for this model`,
    );
    return next;
  }

  #backoff(attempt: number): number {
    return backoffMs(attempt, this.settings.retryBaseMs, this.settings.retryMaxMs);
  }

  /** Which failures are worth another request, with a message free of the API key. */
  #classify(error: unknown): {
    retryable: boolean;
    status: number | undefined;
    retryAfterMs?: number | undefined;
    message: string;
  } {
    const text = this.#scrub(error instanceof Error ? error.message : String(error));
    const sdk = this.#sdk;
    if (sdk && error instanceof sdk.APIConnectionError) {
      const what = /timed out/i.test(text) ? `timed out after ${this.settings.timeoutMs} ms` : text;
      return { retryable: true, status: undefined, message: `model request ${what}` };
    }
    if (sdk && error instanceof sdk.APIError && typeof error.status === 'number') {
      const status = error.status;
      // An answer without OpenAI's `error` object (older vLLM) is told by its own body.
      const body = error.error === undefined && error.headers && ERROR_BODIES.get(error.headers);
      const said = body ? `${status} ${this.#scrub(body.slice(0, 500))}` : text;
      const retryable = status === 408 || status === 409 || status === 429 || status >= 500;
      const why =
        status === 401 || status === 403
          ? 'the model endpoint refused the credentials (check HD_LLM_API_KEY)'
          : status === 404
            ? `the model endpoint does not know this path or model (${this.model})`
            : 'the model endpoint answered with an error';
      return {
        retryable,
        status,
        retryAfterMs: retryAfterMs(error.headers),
        message: `${why} (HTTP ${status}): ${said}`,
      };
    }
    return { retryable: true, status: undefined, message: `model request failed: ${text}` };
  }

  #scrub(text: string): string {
    const key = this.settings.apiKey;
    return key && key.length >= 4 ? text.split(key).join('[redacted]') : text;
  }
}

/** The optional part of a chat-completions request, as `capabilities` allow. */
export function requestParameters(
  capabilities: Capabilities,
  maxOutputTokens: number,
  task: string,
  jsonSchema: Record<string, unknown>,
) {
  return {
    ...(capabilities.temperature ? { temperature: 0 } : {}),
    ...(capabilities.tokenLimit === 'none' ? {} : { [capabilities.tokenLimit]: maxOutputTokens }),
    ...(capabilities.responseFormat === 'json_schema'
      ? {
          response_format: {
            type: 'json_schema' as const,
            json_schema: { name: task, schema: jsonSchema, strict: true },
          },
        }
      : capabilities.responseFormat === 'json_object'
        ? { response_format: { type: 'json_object' as const } }
        : {}),
  };
}

// The body of each error answer, by its Headers object (the SDK keeps that object on the
// APIError it throws, but drops a body without an `error` key, as older vLLM sends).
const ERROR_BODIES = new WeakMap<Headers, string>();

async function keepErrorBodies(url: string | URL | Request, init?: RequestInit) {
  const response = await fetch(url, init);
  if (response.status >= 400 && response.status < 500) {
    ERROR_BODIES.set(response.headers, (await response.clone().text()).slice(0, 8192));
  }
  return response;
}

type Answer<T> = { ok: true; value: T } | { ok: false; problem: string; raw: string };

/** Parses and validates the first choice; says what was wrong in words the model can use. */
function readAnswer<T>(completion: ChatCompletion, schema: z.ZodType<T>): Answer<T> {
  const message = completion.choices?.[0]?.message;
  const raw = message?.content ?? '';
  if (message?.refusal) return { ok: false, problem: `refused: ${message.refusal}`, raw };
  if (!raw.trim()) return { ok: false, problem: 'the reply was empty', raw };
  let value: unknown;
  try {
    value = JSON.parse(stripFence(raw));
  } catch (error) {
    return { ok: false, problem: `not valid JSON (${(error as Error).message})`, raw };
  }
  const parsed = schema.safeParse(value);
  if (parsed.success) return { ok: true, value: parsed.data };
  const issues = parsed.error.issues
    .slice(0, 5)
    .map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
  return { ok: false, problem: `does not match the schema (${issues.join('; ')})`, raw };
}

/** Some local models wrap JSON in a Markdown fence even when asked not to. */
function stripFence(text: string): string {
  const m = /^\s*```(?:json)?\s*\n([\s\S]*?)\n\s*```\s*$/.exec(text);
  return m ? m[1]! : text;
}
