import { hostname } from 'node:os';
import { z } from 'zod';
import { DEFAULT_BUCKET } from '../contract/jobs.ts';
import { parseFamilyRules } from '../runner/llm/families.ts';
import { parseRanges } from '../scheduler/public-http.ts';
import { DEFAULT_GRANT_RATE } from '../scheduler/upload-grant-limits.ts';
import { combinationError } from './config-rules.ts';
import { isSecretSetting } from './redact.ts';

const positiveInt = z.coerce.number().int().positive();
const csv = z.string().transform((s) =>
  s
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean),
);
/** Comma-separated CIDRs (`10.1.0.0/16,fd00::/8`), each checked as the guard will read it. */
const addressRanges = z.string().superRefine((text, ctx) => {
  try {
    parseRanges(text);
  } catch (error) {
    ctx.addIssue({
      code: 'custom',
      message: `a list of address/prefix: ${(error as Error).message}`,
    });
  }
});

const limitValue = z.number().int().positive();
/** Limits of one model across all runners (scheduler/llm-gateway/limiter.ts). */
export const llmLimitsSchema = z.record(
  z.string().min(1),
  z.strictObject({
    concurrency: limitValue.optional(),
    requests_per_minute: limitValue.optional(),
    tokens_per_minute: limitValue.optional(),
  }),
);
/** USD per million tokens of one model. */
export const llmPricesSchema = z.record(
  z.string().min(1),
  z.strictObject({
    input: z.number().nonnegative(),
    cached_input: z.number().nonnegative().optional(),
    output: z.number().nonnegative(),
  }),
);

/** A setting holding JSON, checked with `schema`; the error says where it is wrong. */
function jsonSetting<T extends z.ZodType>(schema: T) {
  return z.string().transform((text, ctx): z.infer<T> => {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (error) {
      ctx.addIssue({ code: 'custom', message: `not JSON (${(error as Error).message})` });
      return z.NEVER;
    }
    const parsed = schema.safeParse(value);
    if (parsed.success) return parsed.data;
    const issue = parsed.error.issues[0]!;
    ctx.addIssue({
      code: 'custom',
      message: `${issue.path.join('.') || '(root)'}: ${issue.message}`,
    });
    return z.NEVER;
  });
}

/**
 * All configuration, from the environment (CLI flags are merged in by the entry).
 * Parsed once at start-up; nothing else reads process.env.
 */
export const configSchema = z.object({
  /** Queue/output transport: `postgres` (direct connection) or `supabase` (REST via SUPABASE_URL + service-role key). Default postgres. */
  HD_TRANSPORT: z.enum(['postgres', 'supabase']).default('postgres'),
  /** PostgreSQL connection string (postgres transport). No default. */
  HD_DATABASE_URL: z.string().url().optional(),
  /** Pool size per process. Default 4. */
  HD_DATABASE_POOL_SIZE: positiveInt.default(4),
  /** Session connection for LISTEN wake-ups (postgres transport): a direct or session-mode URL when HD_DATABASE_URL is a transaction pooler, or `off` to poll only. Default: HD_DATABASE_URL. */
  HD_LISTEN_DATABASE_URL: z.union([z.literal('off'), z.string().url()]).optional(),
  /** Supabase project URL, e.g. https://<ref>.supabase.co (supabase transport/storage). No default. */
  SUPABASE_URL: z.string().url().optional(),
  /** Supabase service-role key (supabase transport/storage); a secret, never logged. No default. */
  SUPABASE_SERVICE_ROLE_KEY: z.string().min(20).optional(),
  /** Supabase anon (publishable) key runners send as `apikey` to the project's API gateway; public, grants nothing by itself. No default. */
  SUPABASE_ANON_KEY: z.string().min(20).optional(),
  /** Supabase's legacy JWT secret (HS256); the scheduler signs each runner's job-scoped token with it (secret, scheduler only). No default. */
  SUPABASE_JWT_SECRET: z.string().min(32).optional(),
  /** Private key (PEM, or a private JWK as JSON; EC P-256 → ES256, RSA → RS256) imported as one of the project's JWT signing keys; signs runner tokens (secret, scheduler only). No default. */
  HD_RUNNER_JWT_PRIVATE_KEY: z.string().min(1).optional(),
  /** Key id (`kid`) Supabase shows for HD_RUNNER_JWT_PRIVATE_KEY. No default. */
  HD_RUNNER_JWT_KID: z.string().min(1).optional(),
  /** What runners are given: `scoped` (a credential for their one job, see docs/containers.md) or `operator` (the scheduler's own; trusted single-tenant setups only). Default scoped. */
  HD_RUNNER_CREDENTIALS: z.enum(['scoped', 'operator']).default('scoped'),
  /** One login all runners share on the postgres transport (role hd_runner or a role granted it), where the scheduler cannot make a role per job (secret). Default: a role per job. */
  HD_RUNNER_DATABASE_URL: z.string().url().optional(),
  /** Set by the scheduler for one runner (supabase transport): its job-scoped JWT (secret). */
  HD_JOB_TOKEN: z.string().min(20).optional(),
  /** Set by the scheduler for one runner (supabase storage): JSON map of `bucket/key` to a signed download URL of each input object (secret). */
  HD_JOB_STORAGE_URLS: z.string().min(2).optional(),
  /** Set by the scheduler for its runners (supabase storage, scoped credentials): where a runner asks for a signed upload URL of each artifact. */
  HD_UPLOAD_GRANT_URL: z.url().optional(),
  /** Scheduler, supabase storage with scoped credentials: host:port where runners ask for artifact upload URLs (reachable from runner containers: a bridge network needs the bridge's address). Default 127.0.0.1:0 (any free port). */
  HD_UPLOAD_GRANT_ADDRESS: z
    .string()
    .regex(
      /^([0-9.]+|localhost|\[[0-9a-fA-F:]+\]):\d{1,5}$/,
      'an IP address (or localhost) and port, host:port',
    )
    .default('127.0.0.1:0'),
  /** Scheduler, upload grants: grants one runner (one job lease) may ask for a second, on average; more are answered 429 with Retry-After, and Storage is not asked. Default 10. */
  HD_UPLOAD_GRANT_RATE: z.coerce.number().positive().max(10_000).default(DEFAULT_GRANT_RATE.rate),
  /** Scheduler, upload grants: grants one runner may ask for at once beyond HD_UPLOAD_GRANT_RATE (the size of its token bucket). Default 20. */
  HD_UPLOAD_GRANT_BURST: positiveInt.max(10_000).default(DEFAULT_GRANT_RATE.burst),
  /** Longest one REST call of the supabase transport may take, in ms. Default 30000. */
  HD_SUPABASE_TIMEOUT_MS: positiveInt.default(30_000),
  /** Supabase Realtime wake-ups on new/cancelled jobs (supabase transport; polling stays on): `true`/`false`. Default false. */
  HD_REALTIME: z
    .enum(['true', 'false', '1', '0'])
    .default('false')
    .transform((v) => v === 'true' || v === '1'),
  /** Supabase project ref this worker must talk to (`local` for one on this machine); a mismatch stops it. No default. */
  HD_EXPECTED_PROJECT_REF: z
    .string()
    .regex(/^([a-z0-9]{20}|local)$/, 'must be a 20-character project ref or local')
    .optional(),
  /** Storage backend: `fs` (a folder laid out like the buckets) or `supabase` (Supabase Storage via SUPABASE_URL). Default fs. */
  HD_STORAGE: z.enum(['fs', 'supabase']).default('fs'),
  /** Root folder of the fs storage backend; buckets are its sub-folders. Default ./.hd-data/storage */
  HD_STORAGE_ROOT: z.string().min(1).default('./.hd-data/storage'),
  /** Bucket of uploaded inputs. Default hd_uploads_raw. */
  HD_BUCKET: z.string().min(1).default(DEFAULT_BUCKET),
  /** Name of this worker in locked_by and logs. Default hostname:pid. */
  HD_WORKER_ID: z.string().min(1).default(`${hostname()}:${process.pid}`),
  /** Jobs run at once by the scheduler. Default 2. */
  HD_SLOTS: positiveInt.default(2),
  /** Jobs one account may run at once on all hosts together, unless hd_account_limits says otherwise (set it alike on every host). Default: no limit. */
  HD_ACCOUNT_MAX_RUNNING: positiveInt.optional(),
  /** Comma-separated job types to claim. Default: all (unknown types then fail loudly). */
  HD_JOB_TYPES: csv.optional(),
  /** Lease length in seconds (at most 3600: the database refuses a lease ending later); runners heartbeat at a third of it. Default 60. */
  HD_LEASE_SECONDS: positiveInt.max(3600).default(60),
  /** Polling interval in ms when no NOTIFY arrives (and for run_after backoffs). Default 2000. */
  HD_POLL_INTERVAL_MS: positiveInt.default(2000),
  /** How often the scheduler reaps expired leases, in ms. Default 15000. */
  HD_REAP_INTERVAL_MS: positiveInt.default(15000),
  /** On SIGTERM, how long running jobs may finish before they are handed back, in ms. Default 30000. */
  HD_SHUTDOWN_GRACE_MS: z.coerce.number().int().nonnegative().default(30000),
  /** Process launcher: runners kept started for idle slots before a job exists (no job, lease or credential in them until one is handed over on stdin), up to this many; `0`: each runner starts with its job. Ignored by the docker launcher. Default 1. */
  HD_WARM_RUNNERS: z.coerce.number().int().nonnegative().default(1),
  /** How long a warm runner waits for its job before it exits (and is replaced), in ms. Default 300000. */
  HD_WARM_RUNNER_IDLE_MS: positiveInt.default(300_000),
  /** Launcher for runners: `process` (child process via execa) or `docker` (one container per job). Default process. */
  HD_LAUNCHER: z.enum(['process', 'docker']).default('process'),
  /** Runner image for CPU jobs (docker launcher). Default hd-runner:latest. */
  HD_DOCKER_IMAGE: z.string().min(1).default('hd-runner:latest'),
  /** Runner image for GPU jobs, built from Dockerfile.gpu (docker launcher). Default hd-runner-gpu:latest. */
  HD_DOCKER_GPU_IMAGE: z.string().min(1).default('hd-runner-gpu:latest'),
  /** Network mode of runner containers: `bridge`, `host` (needed for a database on 127.0.0.1), or a network name. Default bridge. */
  HD_DOCKER_NETWORK: z.string().min(1).default('bridge'),
  /** uid:gid runner containers run as (never root). Default 1000:1000. */
  HD_DOCKER_USER: z
    .string()
    .regex(/^[1-9]\d*(:\d+)?$/, 'must be a non-root numeric uid[:gid]')
    .default('1000:1000'),
  /** Most processes/threads in one runner container. Default 256. */
  HD_DOCKER_PIDS_LIMIT: positiveInt.default(256),
  /** Size of the tmpfs at /tmp (the runner's work dir) in MiB; counts against the job's memory. Default 256. */
  HD_DOCKER_TMPFS_MB: positiveInt.default(256),
  /** Keep the container of a failed job (renamed hd-failed-…) for inspection: `true`/`false`. Default false. */
  HD_DOCKER_KEEP_FAILED: z
    .enum(['true', 'false', '1', '0'])
    .default('false')
    .transform((v) => v === 'true' || v === '1'),
  /** After SIGTERM, how long a runner container may take to exit before SIGKILL, in ms. Default 10000. */
  HD_DOCKER_KILL_GRACE_MS: z.coerce.number().int().nonnegative().default(10000),
  /** How often the scheduler reconciles its labelled containers with job rows, in ms. Default 30000. */
  HD_RECONCILE_INTERVAL_MS: positiveInt.default(30000),
  /** GPUs to pin GPU jobs to: `all`, a count (`4`), ids/UUIDs (`0,1,3`), or `none`. Default: what `nvidia-smi -L` lists. */
  HD_GPUS: z.string().optional(),
  /** GPU jobs that may share one GPU at once. Default 1. */
  HD_GPU_JOBS_PER_GPU: positiveInt.default(1),
  /** Rows per upsert batch in imports (a batch also ends at 4 MiB of input). Default 5000. */
  HD_IMPORT_BATCH_SIZE: z.coerce.number().int().min(1).max(10000).default(5000),
  /** Longest JSONL line accepted, in bytes; longer lines are reported invalid. Default 1048576. */
  HD_MAX_LINE_BYTES: positiveInt.default(1024 * 1024),
  /** extract_text: largest input file accepted, in bytes. Default 209715200 (200 MiB). */
  HD_EXTRACT_MAX_FILE_BYTES: positiveInt.default(200 * 1024 * 1024),
  /** extract_text: most pages of one PDF; larger ones are refused before parsing. Default 5000. */
  HD_EXTRACT_MAX_PAGES: positiveInt.default(5000),
  /** extract_text: wall-clock limit for parsing one file (PDF text layer, HTML, text), in ms. Default 600000. */
  HD_EXTRACT_PARSE_TIMEOUT_MS: positiveInt.default(600_000),
  /** extract_text: wall-clock limit for the text layer of one PDF page (pdftotext), in ms; a page past it is skipped and counted. Default 30000. */
  HD_EXTRACT_PAGE_TIMEOUT_MS: positiveInt.default(30_000),
  /** extract_text: most resident memory of the PDF parser process (and of each OCR tool), in MiB. Default 1024. */
  HD_EXTRACT_MAX_MEMORY_MB: z.coerce.number().int().min(64).default(1024),
  /** extract_text: Tesseract languages for OCR, `+`-separated (a job's `ocr_languages` wins); a page read with doubt in a script they do not cover (tesseract's OSD) is OCRed again in that script's language where installed (`ara`, `heb`, `rus` in the images), the reading with more confidently read characters kept, else skipped and counted. The runner's `TESSDATA_PREFIX`, where set, is passed to tesseract (its folder needs `osd.traineddata` and `configs/` too). Default deu+eng. */
  HD_OCR_LANGUAGES: z
    .string()
    .regex(/^[A-Za-z_]{3,20}(\+[A-Za-z_]{3,20}){0,7}$/, 'must look like deu+eng')
    .default('deu+eng'),
  /** extract_text: resolution PDF pages are rendered at for OCR, in dpi; a page mostly covered by images at about their resolution instead (150 at least, this at most), big pages less (25 megapixels at most). Default 300. */
  HD_OCR_DPI: z.coerce.number().int().min(72).max(600).default(300),
  /** extract_text: a PDF page whose text layer has fewer non-blank characters is OCRed if it shows an image. Default 20. */
  HD_OCR_MIN_CHARS: z.coerce.number().int().nonnegative().default(20),
  /** extract_text: wall-clock limit for rendering, and for OCR, of one page or image, in ms; a PDF page past it is skipped and counted. Default 120000. */
  HD_OCR_PAGE_TIMEOUT_MS: positiveInt.default(120_000),
  /** extract_text: target chunk length, in characters. Default 1500. */
  HD_CHUNK_TARGET_CHARS: z.coerce.number().int().min(100).max(100_000).default(1500),
  /** extract_text: characters repeated from one chunk's end at the next chunk's start. Default 200. */
  HD_CHUNK_OVERLAP_CHARS: z.coerce.number().int().nonnegative().default(200),
  /** extract_text: OpenAI-compatible endpoint for audio/video transcription (…/v1). Default none: audio files fail UNSUPPORTED_FILE. */
  HD_TRANSCRIBE_BASE_URL: z.string().url().optional(),
  /** extract_text: API key of the transcription endpoint (secret). Default HD_LLM_API_KEY. */
  HD_TRANSCRIBE_API_KEY: z.string().min(1).optional(),
  /** extract_text: transcription model name. Default whisper-1. */
  HD_TRANSCRIBE_MODEL: z.string().min(1).default('whisper-1'),
  /** extract_text: audio is cut into segments of this length, one request each, in seconds. Default 600. */
  HD_TRANSCRIBE_SEGMENT_SECONDS: positiveInt.default(600),
  /** LLM stages: OpenAI-compatible endpoint (OpenAI, vLLM, Ollama …/v1). Default https://api.openai.com/v1 when HD_LLM_API_KEY is set, else none (LLM jobs fail). */
  HD_LLM_BASE_URL: z.string().url().optional(),
  /** LLM stages: API key sent as a bearer token (secret, redacted from logs). Default none (keyless local servers). */
  HD_LLM_API_KEY: z.string().min(1).optional(),
  /** LLM stages: model name the endpoint serves. Default gpt-4o-mini. */
  HD_LLM_MODEL: z.string().min(1).default('gpt-4o-mini'),
  /** LLM stages: requests in flight at once per job. Default 4. */
  HD_LLM_CONCURRENCY: z.coerce.number().int().min(1).max(64).default(4),
  /** LLM stages: time limit of one request, in ms. Default 120000. */
  HD_LLM_TIMEOUT_MS: positiveInt.default(120_000),
  /** LLM stages: retries of one request after 429, 5xx, timeouts and connection errors. Default 4. */
  HD_LLM_MAX_RETRIES: z.coerce.number().int().min(0).max(20).default(4),
  /** LLM stages: first backoff before a retry, doubled each time (with jitter), in ms; Retry-After wins. Default 1000. */
  HD_LLM_RETRY_BASE_MS: positiveInt.default(1000),
  /** LLM stages: longest wait before one retry, in ms; a longer Retry-After fails the job (retryable). Default 60000. */
  HD_LLM_RETRY_MAX_MS: positiveInt.default(60_000),
  /** LLM stages: `json_schema` (structured output), `json_object` (JSON mode, schema in the prompt) or `prompt` (no response_format); a refused one steps down by itself. Default: the model family's (json_schema). */
  HD_LLM_RESPONSE_FORMAT: z.enum(['json_schema', 'json_object', 'prompt']).optional(),
  /** Set by the scheduler for runners behind its LLM gateway: the provider's base URL (no credentials), read by the model-family table only, never called. Default HD_LLM_BASE_URL. */
  HD_LLM_PROVIDER_URL: z.string().url().optional(),
  /** LLM stages: JSON array of capability rules tried before the built-in table, e.g. `[{"model":"^my-r1","family":"openai-reasoning"}]` (fields model, base_url: regular expressions; family: openai-reasoning|openai|vllm|ollama|generic; token_limit, temperature, response_format). Default none. */
  HD_LLM_MODEL_FAMILIES: z
    .string()
    .superRefine((text, ctx) => {
      try {
        parseFamilyRules(text);
      } catch (error) {
        const why =
          error instanceof z.ZodError
            ? error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')
            : `not JSON (${(error as Error).message})`;
        ctx.addIssue({ code: 'custom', message: why });
      }
    })
    .optional(),
  /** LLM stages: most tokens the model may generate per request. Default 4096. */
  HD_LLM_MAX_OUTPUT_TOKENS: positiveInt.default(4096),
  /** LLM stages: price of input tokens for the cost estimate in stats, in USD per million tokens. Default 0 (unknown). */
  HD_LLM_PRICE_INPUT_PER_MTOK: z.coerce.number().nonnegative().default(0),
  /** LLM stages: price of output tokens for the cost estimate in stats, in USD per million tokens. Default 0 (unknown). */
  HD_LLM_PRICE_OUTPUT_PER_MTOK: z.coerce.number().nonnegative().default(0),
  /** LLM gateway: the scheduler serves the LLM and transcription endpoints to its runners and keeps the API keys (docs/containers.md): `on` or `off` (runners get the endpoint and key themselves). Default on. */
  HD_LLM_GATEWAY: z.enum(['on', 'off']).default('on'),
  /** LLM gateway: host:port it listens on (port 0: any free one, and after a restart the port its running containers were given; a fixed port to open in a host firewall). Default the Docker network's gateway address (bridge) or 127.0.0.1 (host network, process launcher), port 0. */
  HD_LLM_GATEWAY_ADDRESS: z
    .string()
    .regex(/^(\d{1,3}(\.\d{1,3}){3}|localhost|\[[\da-fA-F:]+\]):\d{1,5}$/, 'an address:port')
    .optional(),
  /** LLM gateway: requests one runner's credential may have in the gateway at once (being read, waiting or at the provider); more are answered 429 unread. Default twice HD_LLM_CONCURRENCY. */
  HD_LLM_GATEWAY_RUNNER_REQUESTS: z.coerce.number().int().min(1).max(1000).optional(),
  /** LLM gateway: bytes of request bodies it holds at once, all runners together, at least 33554432 (one transcription); a request that does not fit waits, its body unread. Default 268435456 (256 MiB). */
  HD_LLM_GATEWAY_BUFFER_BYTES: z.coerce
    .number()
    .int()
    .min(32 << 20)
    .default(256 << 20),
  /** LLM gateway: limits of all runners together per model (`*`: any other), JSON: `{"gpt-4o-mini":{"concurrency":8,"requests_per_minute":500,"tokens_per_minute":200000}}`. Default none. */
  HD_LLM_LIMITS: jsonSetting(llmLimitsSchema).optional(),
  /** LLM gateway: prices per model in USD per million tokens, JSON: `{"gpt-4o-mini":{"input":0.15,"cached_input":0.075,"output":0.6}}`. Default HD_LLM_PRICE_* for HD_LLM_MODEL. */
  HD_LLM_PRICES: jsonSetting(llmPricesSchema).optional(),
  /** LLM gateway: tokens one account may use per UTC day where hd_llm_budgets sets none. Default: no limit. */
  HD_LLM_DAILY_TOKEN_BUDGET: z.coerce.number().int().nonnegative().optional(),
  /** text2kg: evidence items one edge keeps, the strongest (the rest are counted in evidence_dropped). Default 20. */
  HD_KG_MAX_EVIDENCE_PER_EDGE: z.coerce.number().int().min(1).max(1000).default(20),
  /** Webhooks: private, loopback or link-local ranges deliveries may reach anyway, comma-separated CIDRs (`10.1.0.0/16`). Default none. */
  HD_WEBHOOK_ALLOW_CIDRS: addressRanges.optional(),
  /** Webhooks: time limit of one delivery, redirects included, in ms. Default 10000. */
  HD_WEBHOOK_TIMEOUT_MS: positiveInt.default(10_000),
  /** Webhooks: how often the scheduler looks for due deliveries, in ms. Default 2000. */
  HD_WEBHOOK_POLL_MS: positiveInt.default(2000),
  /** Inputs by URL: private, loopback or link-local ranges a job's URL may reach anyway, comma-separated CIDRs (`10.1.0.0/16`). Default none. */
  HD_URL_INPUT_ALLOW_CIDRS: addressRanges.optional(),
  /** Inputs by URL: largest download, in bytes. Default 104857600 (100 MiB). */
  HD_URL_INPUT_MAX_BYTES: positiveInt.default(100 * 1024 * 1024),
  /** Inputs by URL: time limit of one download, redirects and the body included, in ms. Default 120000. */
  HD_URL_INPUT_TIMEOUT_MS: positiveInt.default(120_000),
  /** Inputs by URL: redirects followed at most. Default 5. */
  HD_URL_INPUT_MAX_REDIRECTS: z.coerce.number().int().min(0).max(20).default(5),
  /** Scheduler: serve /metrics (Prometheus), /healthz and /readyz on this loopback host:port (`127.0.0.1:9464`). Default off. */
  HD_METRICS_ADDRESS: z
    .string()
    .regex(/^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost|\[::1\]):\d{1,5}$/, 'a loopback host:port')
    .optional(),
  /** Folder where process-launcher runners write their output (a sub-folder per HD_WORKER_ID), so that it outlives a killed scheduler and the next one stores it. Default ./.hd-data/runner-output */
  HD_RUNNER_OUTPUT_DIR: z.string().min(1).default('./.hd-data/runner-output'),
  /** Folder for downloaded inputs and scratch files. Default the OS temp dir. */
  HD_WORK_DIR: z.string().min(1).optional(),
  /** pino level: fatal, error, warn, info, debug, trace, silent. Default info. */
  HD_LOG_LEVEL: z
    .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
    .default('info'),
});

export type Config = z.infer<typeof configSchema>;

/** Raised for a wrong or missing setting; the CLI prints the message as one line. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/** Parses configuration; the error names the first bad variable and its value. */
export function loadConfig(env: Record<string, string | undefined>): Config {
  const result = configSchema.safeParse(env);
  if (result.success) {
    const wrong = combinationError(result.data);
    if (wrong) throw new ConfigError(`invalid configuration: ${wrong}`);
    return result.data;
  }
  const issue = result.error.issues[0]!;
  const name = String(issue.path[0] ?? '?');
  const raw = env[name];
  const shown =
    raw === undefined ? 'it is not set' : `got ${JSON.stringify(redactValue(name, raw))}`;
  throw new ConfigError(`invalid configuration: ${name}: ${issue.message} (${shown})`);
}

/** Requires a setting that is optional in general but needed by one command. */
export function requireSetting<K extends keyof Config>(config: Config, name: K, why: string) {
  const value = config[name];
  if (value === undefined || value === '') {
    throw new ConfigError(`invalid configuration: ${name} is required ${why} (it is not set)`);
  }
  return value as NonNullable<Config[K]>;
}

/** The environment a child runner needs to see the same configuration. */
export function configToEnv(config: Config): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(config)) {
    if (value === undefined) continue;
    env[key] = Array.isArray(value)
      ? value.join(',')
      : typeof value === 'object'
        ? JSON.stringify(value) // a JSON setting (HD_LLM_LIMITS), as it was given
        : String(value);
  }
  return env;
}

// Secrets recognised by their look, whatever variable they were put in by mistake:
// JWTs (Supabase keys) and Supabase's sb_secret_ keys.
const SECRET_VALUE = /^eyJ[\w-]+\.[\w-]+\.|^sb_secret_/;

/** Hides the secret part of a value before it is shown anywhere. */
export function redactValue(name: string, value: string): string {
  if (isSecretSetting(name) || SECRET_VALUE.test(value)) return '[redacted]';
  // Any URL, not only in *_URL: a connection string pasted into the wrong variable.
  if (/URL$/.test(name) || /^[a-z][a-z0-9+.-]*:\/\//i.test(value)) return redactUrl(value);
  return value;
}

/** `postgres://user:pw@host/db` → `postgres://user:***@host/db` (bad URLs are hidden whole). */
export function redactUrl(value: string): string {
  try {
    const url = new URL(value);
    if (url.password) url.password = '***';
    for (const key of [...url.searchParams.keys()]) {
      if (isSecretSetting(key)) url.searchParams.set(key, '***');
    }
    return url.toString();
  } catch {
    return '[unparseable url]';
  }
}
