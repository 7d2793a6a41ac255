import type { Config } from './config.ts';

const CENSOR = '[redacted]';
/** Settings whose value is a secret, by name (also config.ts's rule for its error messages). */
const SECRET_SETTING = /KEY|SECRET|PASSWORD|TOKEN/i;
// Settings whose names say TOKEN but that count tokens: their values ("4096") are no secret.
const TOKEN_COUNTS = new Set(['HD_LLM_MAX_OUTPUT_TOKENS', 'HD_LLM_DAILY_TOKEN_BUDGET']);

/** A setting (or query parameter) whose value is a secret, by its name. */
export function isSecretSetting(name: string): boolean {
  return SECRET_SETTING.test(name) && !TOKEN_COUNTS.has(name);
}
// Secrets recognised by their look wherever they come from (an echoed key in an error
// body, a token in a URL): JWTs, OpenAI-style and Supabase secret keys, URL passwords.
const SECRET_SHAPES: readonly [RegExp, string][] = [
  [/\beyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}/g, CENSOR],
  [/\b(sk|rk)-[\w-]{16,}/g, CENSOR],
  [/\bsb_secret_[\w-]{8,}/g, CENSOR],
  [/([a-z][a-z0-9+.-]*:\/\/[^/\s:@]+:)[^/\s@]+@/gi, `$1${CENSOR}@`],
  [/([?&](?:token|apikey|api_key|key)=)[^&\s"']+/gi, `$1${CENSOR}`],
];
// Shorter values would also hide ordinary words; real secrets are far longer.
const MIN_SECRET_LENGTH = 8;
// A stack frame as V8 prints it ("    at fn (/app/dist/x.js:1:2)"), and an absolute path
// not inside a URL: install paths, work dirs, the host's storage root.
const STACK_FRAME = /^\s*at .*(\(.*\)|:\d+:\d+|<anonymous>|native)\s*$/;
const HOST_PATH = /(?<![\w:/.~-])\/(?:[^\s/'"`():,;]+\/)+([^\s/'"`():,;]+)/g;
const MAX_TENANT_MESSAGE = 1000;

/** Whether a setting holds a secret: by its name, a URL with a password, signed URLs. */
export function holdsSecret(name: string, value: string): boolean {
  if (isSecretSetting(name) || name === 'HD_JOB_STORAGE_URLS') return true;
  return URL.canParse(value) && new URL(value).password !== '';
}

/** Every secret value in the configuration: keys, tokens, URL passwords, signed-URL tokens. */
export function secretsOf(config: Partial<Config> | Record<string, string | undefined>): string[] {
  const values: string[] = [];
  for (const [name, value] of Object.entries(config)) {
    if (typeof value !== 'string') continue;
    if (isSecretSetting(name)) values.push(value);
    if (URL.canParse(value)) {
      const url = new URL(value);
      if (url.password) values.push(decodeURIComponent(url.password), url.password);
    }
  }
  const storageUrls = config.HD_JOB_STORAGE_URLS;
  if (typeof storageUrls === 'string') {
    try {
      for (const url of Object.values(JSON.parse(storageUrls) as object))
        if (typeof url === 'string' && URL.canParse(url))
          values.push(new URL(url).searchParams.get('token') ?? '');
    } catch {
      values.push(storageUrls); // not JSON: hide it whole
    }
  }
  return values;
}

/**
 * Replaces secrets by value, not by key name: each configured secret wherever it appears
 * in a string (also JSON- or URL-escaped), and anything shaped like a key or token.
 * `forTenant` further makes a value fit for a row tenants read (hd_job_logs, a job's
 * error): no stack frames, host paths cut to their last segment.
 */
export class Redactor {
  #values: string[] = [];

  constructor(secrets: Iterable<string | undefined>) {
    this.add(secrets);
  }

  /** Hides these secrets too (a warm runner's logger, given its job's: logger.ts). */
  add(secrets: Iterable<string | undefined>): void {
    const forms = new Set<string>(this.#values);
    for (const secret of secrets) {
      if (!secret || secret.length < MIN_SECRET_LENGTH) continue;
      forms.add(secret);
      forms.add(JSON.stringify(secret).slice(1, -1));
      forms.add(encodeURIComponent(secret));
    }
    // Longest first, so a secret containing another is replaced whole.
    this.#values = [...forms].sort((a, b) => b.length - a.length);
  }

  text(text: string): string {
    let out = text;
    for (const value of this.#values) if (out.includes(value)) out = out.split(value).join(CENSOR);
    for (const [shape, replacement] of SECRET_SHAPES) out = out.replace(shape, replacement);
    return out;
  }

  /** A one-line message for a tenant-readable row (a job's `error`). */
  message(text: string): string {
    const first =
      this.tenantText(text)
        .split('\n')
        .find((line) => line.trim() !== '') ?? '';
    return first.length > MAX_TENANT_MESSAGE ? `${first.slice(0, MAX_TENANT_MESSAGE)}…` : first;
  }

  /** Text for a tenant: secrets out, stack frames out, host paths shortened. */
  tenantText(text: string): string {
    return this.text(text)
      .split('\n')
      .filter((line) => !STACK_FRAME.test(line))
      .join('\n')
      .replace(HOST_PATH, '…/$1');
  }

  /** Any JSON value for a tenant: every string as tenantText, `stack` keys dropped. */
  forTenant<T>(value: T): T {
    return this.#deep(value, 0) as T;
  }

  #deep(value: unknown, depth: number): unknown {
    if (typeof value === 'string') return this.tenantText(value);
    if (typeof value !== 'object' || value === null || depth > 20) return value;
    if (Array.isArray(value)) return value.map((v) => this.#deep(v, depth + 1));
    return Object.fromEntries(
      Object.entries(value)
        .filter(([key]) => key !== 'stack')
        .map(([key, v]) => [key, this.#deep(v, depth + 1)]),
    );
  }
}
