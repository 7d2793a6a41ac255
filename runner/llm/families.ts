import { z } from 'zod';

/**
 * What a chat-completions endpoint accepts, by model family. OpenAI's reasoning models
 * (o1, o3, o4-mini, gpt-5 …) refuse `max_tokens` and any `temperature` but the default
 * with HTTP 400 `unsupported_parameter` / `unsupported_value`; vLLM and Ollama read
 * `max_tokens` (Ollama ignores `max_completion_tokens` silently, so sending it there would
 * lift the limit). The table is a first guess: a parameter an endpoint refuses anyway is
 * dropped or swapped once and remembered (refusals.ts).
 */
export interface Capabilities {
  /** Name of the family the guess came from, for logs and stats. */
  family: string;
  tokenLimit: 'max_tokens' | 'max_completion_tokens' | 'none';
  /** Whether `temperature: 0` may be sent. */
  temperature: boolean;
  /** json_schema (structured output), json_object (JSON mode, schema in the prompt), prompt (no response_format). */
  responseFormat: 'json_schema' | 'json_object' | 'prompt';
}

export const FAMILIES = {
  'openai-reasoning': {
    tokenLimit: 'max_completion_tokens',
    temperature: false,
    responseFormat: 'json_schema',
  },
  // max_tokens is deprecated on OpenAI's API in favour of max_completion_tokens.
  openai: { tokenLimit: 'max_completion_tokens', temperature: true, responseFormat: 'json_schema' },
  vllm: { tokenLimit: 'max_tokens', temperature: true, responseFormat: 'json_schema' },
  ollama: { tokenLimit: 'max_tokens', temperature: true, responseFormat: 'json_schema' },
  // Anything else OpenAI-compatible: what most servers have read since 2023.
  generic: { tokenLimit: 'max_tokens', temperature: true, responseFormat: 'json_schema' },
} as const satisfies Record<string, Omit<Capabilities, 'family'>>;

export type FamilyName = keyof typeof FAMILIES;

const regex = z.string().refine(
  (source) => {
    try {
      new RegExp(source, 'i');
      return true;
    } catch {
      return false;
    }
  },
  { message: 'not a valid regular expression' },
);

/** One row of the capability table: the first row whose patterns all match wins. */
export const familyRuleSchema = z
  .object({
    /** Regular expression (case-insensitive) on the model name. */
    model: regex.optional(),
    /** Regular expression (case-insensitive) on the base URL. */
    base_url: regex.optional(),
    family: z.enum(Object.keys(FAMILIES) as [FamilyName, ...FamilyName[]]),
    token_limit: z.enum(['max_tokens', 'max_completion_tokens', 'none']).optional(),
    temperature: z.boolean().optional(),
    response_format: z.enum(['json_schema', 'json_object', 'prompt']).optional(),
  })
  .strict()
  .refine((rule) => rule.model !== undefined || rule.base_url !== undefined, {
    message: 'a rule needs model or base_url',
  });
export type FamilyRule = z.infer<typeof familyRuleSchema>;
export const familyRulesSchema = z.array(familyRuleSchema).max(100);

// Model names as OpenAI publishes them, optionally behind a provider prefix
// ("openai/o3-mini", "azure/gpt-5"): o1, o1-mini, o3, o3-mini, o4-mini, gpt-5, gpt-5.1-mini …
const REASONING_MODEL = '(^|/)(o[1-9]|gpt-5)([-.:]|$)';

export const DEFAULT_FAMILY_RULES: readonly FamilyRule[] = [
  { model: REASONING_MODEL, family: 'openai-reasoning' },
  { base_url: '^https://api\\.openai\\.com(/|$)', family: 'openai' },
  // Ollama's default port, or a host named after it.
  { base_url: ':11434(/|$)|ollama', family: 'ollama' },
  { base_url: 'vllm', family: 'vllm' },
];

/** The capabilities of `model` at `baseURL`: configured rules first, then the defaults. */
export function resolveCapabilities(
  model: string,
  baseURL: string | undefined,
  configured: readonly FamilyRule[] = [],
): Capabilities {
  const rule = [...configured, ...DEFAULT_FAMILY_RULES].find(
    (r) =>
      (r.model === undefined || new RegExp(r.model, 'i').test(model)) &&
      (r.base_url === undefined || new RegExp(r.base_url, 'i').test(baseURL ?? '')),
  );
  const family: FamilyName = rule?.family ?? 'generic';
  const base = FAMILIES[family];
  return {
    family,
    tokenLimit: rule?.token_limit ?? base.tokenLimit,
    temperature: rule?.temperature ?? base.temperature,
    responseFormat: rule?.response_format ?? base.responseFormat,
  };
}

/**
 * What a runner behind the scheduler's gateway is told about the provider: its base URL
 * without user, password, query or fragment (the table reads host and path only).
 */
export function providerHint(baseURL: string | undefined): string | undefined {
  if (!baseURL) return undefined;
  try {
    const url = new URL(baseURL);
    return `${url.protocol}//${url.host}${url.pathname}`;
  } catch {
    return undefined;
  }
}

/** HD_LLM_MODEL_FAMILIES: a JSON array of rules, checked once when the config is read. */
export function parseFamilyRules(text: string | undefined): FamilyRule[] {
  if (!text) return [];
  return familyRulesSchema.parse(JSON.parse(text));
}

/** What one endpoint and model turned out to accept, and the parameters it refused. */
export interface Learned {
  capabilities: Capabilities;
  refused: ReadonlySet<string>;
}

/**
 * What endpoints refused, per base URL and model, for the rest of the process: the next
 * request (of this job, and of any other client in the process) starts from it instead of
 * being refused again.
 */
const learned = new Map<string, Learned>();

const learnedKey = (baseURL: string | undefined, model: string) => `${baseURL ?? ''}\u0000${model}`;

export function learnedCapabilities(baseURL: string | undefined, model: string) {
  return learned.get(learnedKey(baseURL, model));
}

export function rememberCapabilities(baseURL: string | undefined, model: string, state: Learned) {
  learned.set(learnedKey(baseURL, model), state);
}
