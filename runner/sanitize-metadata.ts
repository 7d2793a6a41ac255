export const METADATA_LIMITS = {
  maxDepth: 6,
  maxKeys: 100,
  /** Values copied in total: bounds the work on wide, shared-reference object graphs. */
  maxNodes: 10_000,
  maxArrayItems: 100,
  maxStringLength: 4000,
  /** Serialized size above which metadata is replaced by a truncation marker. */
  maxBytes: 32 * 1024,
  /** source_line keeps this many flat (primitive) fields, strings cut to maxFlatString. */
  maxFlatFields: 20,
  maxFlatString: 200,
};

// PostgreSQL's jsonb refuses NUL and unpaired UTF-16 surrogates: one such string would
// make the whole batch of rows it travels in fail.
// eslint-disable-next-line no-control-regex
const UNSTORABLE = /\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/**
 * A string PostgreSQL can store: at most `max` UTF-16 units, never cut between the two
 * halves of a surrogate pair, NUL and unpaired surrogates replaced by U+FFFD.
 */
export function storableString(value: string, max = Infinity): string {
  let out = value;
  if (out.length > max) {
    out = out.slice(0, max);
    if (/[\ud800-\udbff]$/.test(out)) out = out.slice(0, -1);
  }
  return out.replace(UNSTORABLE, '\ufffd');
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/**
 * Returns a fresh, bounded copy of arbitrary metadata: limited depth, keys, array items
 * and string length, and a size cap. The copy never shares objects with its input, so
 * no reference cycle (seed ops note: "Circular reference detected") can reach the
 * database, and one hostile line cannot bloat a row.
 */
export function sanitizeMetadata(value: unknown): Record<string, Json> {
  if (!isPlainObject(value)) return {};
  const copy = copyBounded(value, 1, { left: METADATA_LIMITS.maxNodes }) as Record<string, Json>;
  if ('source_line' in value) copy.source_line = flatSubset(value.source_line);
  const size = Buffer.byteLength(JSON.stringify(copy));
  if (size > METADATA_LIMITS.maxBytes) {
    return { _truncated: true, _original_bytes: size };
  }
  return copy;
}

/** A small flat record: only primitive fields, a bounded number, strings shortened. */
export function flatSubset(value: unknown): Record<string, Json> {
  const out: Record<string, Json> = {};
  if (!isPlainObject(value)) return out;
  let kept = 0;
  for (const [rawKey, v] of Object.entries(value)) {
    if (kept >= METADATA_LIMITS.maxFlatFields) break;
    if (rawKey === '__proto__') continue; // would set the copy's prototype, not a field
    // A long key would make the "small" subset large; this is not the place for it.
    if (rawKey.length > METADATA_LIMITS.maxFlatString) continue;
    const key = storableString(rawKey);
    if (typeof v === 'string') out[key] = storableString(v, METADATA_LIMITS.maxFlatString);
    else if (typeof v === 'number' || typeof v === 'boolean' || v === null) out[key] = v;
    else continue;
    kept += 1;
  }
  return out;
}

function copyBounded(value: unknown, depth: number, budget: { left: number }): Json {
  if (--budget.left < 0) return '[truncated: too large]';
  if (value === null || typeof value === 'boolean') return value;
  if (typeof value === 'number') return Number.isFinite(value) ? value : null;
  if (typeof value === 'string') return storableString(value, METADATA_LIMITS.maxStringLength);
  if (depth > METADATA_LIMITS.maxDepth) return '[truncated: too deep]';
  if (Array.isArray(value)) {
    return value
      .slice(0, METADATA_LIMITS.maxArrayItems)
      .map((v) => copyBounded(v, depth + 1, budget));
  }
  if (isPlainObject(value)) {
    const out: Record<string, Json> = {};
    let kept = 0;
    for (const [key, v] of Object.entries(value)) {
      if (kept++ >= METADATA_LIMITS.maxKeys) break;
      if (key === '__proto__') continue; // would set the copy's prototype, not a field
      out[storableString(key)] = copyBounded(v, depth + 1, budget);
    }
    return out;
  }
  return null;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
