import type { NewJobLogLine } from '../control-plane/db/transport.ts';
import type { Redactor } from '../control-plane/redact.ts';

/** Longest line kept; a runner printing a huge object must not fill the scheduler's memory. */
export const MAX_LINE_CHARS = 16_384;
/** Per-line bookkeeping counted against a memory budget besides the text. */
export const LINE_OVERHEAD_CHARS = 64;
const PINO_LEVELS: Readonly<Record<number, string>> = {
  10: 'trace',
  20: 'debug',
  30: 'info',
  40: 'warn',
  50: 'error',
  60: 'fatal',
};
// Columns of their own (level, msg, time), or the same on every line of a runner.
const NOT_FIELDS = new Set(['level', 'msg', 'time', 'pid', 'hostname']);

/**
 * One line a runner printed, as an hd_job_logs line: a pino JSON line gives its level,
 * msg, time and its other keys as fields; any other text is an `info` line as printed.
 * Text PostgreSQL's jsonb refuses (NUL, lone surrogates) is replaced, never sent.
 */
export function parseOutputLine(line: string, seq: number, receivedAt: Date): NewJobLogLine {
  const text = clean(
    line.length > MAX_LINE_CHARS
      ? `${line.slice(0, MAX_LINE_CHARS)}… [${line.length - MAX_LINE_CHARS} characters cut]`
      : line,
  );
  const asText = { seq, level: 'info', message: text, fields: null, logged_at: iso(receivedAt) };
  if (!text.startsWith('{')) return asText;
  let value: unknown;
  try {
    value = JSON.parse(text, (_key, v: unknown) => (typeof v === 'string' ? clean(v) : v));
  } catch {
    return asText;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return asText;
  const record = value as Record<string, unknown>;
  const fields = Object.entries(record).filter(([key]) => !NOT_FIELDS.has(key));
  return {
    seq,
    level: levelName(record.level),
    message: typeof record.msg === 'string' ? record.msg : '',
    fields: fields.length > 0 ? Object.fromEntries(fields) : null,
    logged_at: timeOf(record.time) ?? iso(receivedAt),
  };
}

/**
 * The line as tenants may read it in hd_job_logs: secrets by value, stack frames and host
 * paths out; undefined for a line that was nothing but a stack frame.
 */
export function tenantSafeLine(line: NewJobLogLine, redactor: Redactor): NewJobLogLine | undefined {
  const message = redactor.tenantText(line.message);
  if (message.trim() === '' && line.message.trim() !== '') return undefined;
  return { ...line, message, fields: line.fields && redactor.forTenant(line.fields) };
}

// A high surrogate without its low one, or a low one without its high one.
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

function clean(text: string): string {
  return text.replace(LONE_SURROGATE, '\uFFFD').replaceAll('\0', '\uFFFD');
}

function levelName(level: unknown): string {
  if (typeof level === 'number') return PINO_LEVELS[level] ?? String(level);
  return typeof level === 'string' && level ? level : 'info';
}

/** pino's `time`: ISO text (hd-runner's loggers) or epoch milliseconds (pino's default). */
function timeOf(time: unknown): string | undefined {
  if (typeof time !== 'string' && typeof time !== 'number') return undefined;
  const date = new Date(time);
  const year = date.getUTCFullYear(); // NaN for an invalid date
  return year >= 1 && year <= 9999 ? iso(date) : undefined;
}

const iso = (date: Date) => date.toISOString();
