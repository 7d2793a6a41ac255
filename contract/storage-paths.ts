import { HdError } from './errors.ts';

const MAX_PATH_LENGTH = 1024;
// Control characters (NUL included) have no place in an object key.
// eslint-disable-next-line no-control-regex
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;
/**
 * The characters Supabase Storage accepts in a key (its `isValidKey`), less `?`, which a
 * URL would cut the key at. `%` and `#` are not in it: a key never carries an escape.
 */
const KEY_CHARS = /^[A-Za-z0-9_/!.*'() &$=@;:+,-]+$/;
const OUTSIDE_KEY_CHARS = /[^A-Za-z0-9_/!.*'() &$=@;:+,-]/gu;
/** Bucket names: one plain segment (Supabase allows more; hd-runner needs no more). */
const BUCKET_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$/;

/** The prefix every storage path of an account lies under. */
export function tenantPrefix(accountId: string): string {
  return `accounts/${accountId}/`;
}

/** The private bucket of job results (artifacts, migration 00017). */
export const OUTPUTS_BUCKET = 'hd_outputs';

/** Where a job's artifacts lie: `accounts/{account_id}/jobs/{job_id}/` of OUTPUTS_BUCKET. */
export function jobOutputPrefix(accountId: string, jobId: string): string {
  return `${tenantPrefix(accountId)}jobs/${jobId}/`;
}

function refuser(path: unknown, accountId?: string) {
  return (why: string): never => {
    throw new HdError(
      'PATH_OUTSIDE_TENANT',
      `storage path ${JSON.stringify(path)} refused: ${why}`,
      {
        details: {
          path: typeof path === 'string' ? path.slice(0, 200) : null,
          ...(accountId === undefined ? {} : { accountId }),
        },
      },
    );
  };
}

/**
 * The one canonical key form, for every backend and every caller: NFC, relative,
 * non-empty segments, no `.` or `..` segment, and only characters that every layer
 * (Supabase Storage, URL parsers, file systems) passes through unchanged. Anything else
 * is refused rather than "fixed", so a key means the same object everywhere.
 */
export function assertStorageKey(path: unknown, accountId?: string): string {
  const refuse = refuser(path, accountId);
  if (typeof path !== 'string' || path.length === 0) return refuse('it is empty');
  if (path.length > MAX_PATH_LENGTH)
    return refuse(`it is longer than ${MAX_PATH_LENGTH} characters`);
  const key = path.normalize('NFC');
  // NFC can lengthen a string (up to 3x), so the limit applies to what is returned too.
  if (key.length > MAX_PATH_LENGTH)
    return refuse(`it is longer than ${MAX_PATH_LENGTH} characters once normalised (NFC)`);
  if (CONTROL_CHARS.test(key)) return refuse('it contains a control character (NUL, newline, …)');
  if (key.includes('\\')) return refuse('it contains a backslash');
  // A URL parser turns %2e%2e into "..": a key with an escape could name another object.
  if (key.includes('%')) return refuse('it contains "%" (percent-escapes are not allowed)');
  if (/[?#]/.test(key)) return refuse('it contains "?" or "#" (a URL would end the key there)');
  if (key.startsWith('/')) return refuse('it is absolute');
  const segments = key.split('/');
  if (segments.some((s) => s === '..' || s === '.'))
    return refuse('it contains a "." or ".." segment');
  if (segments.some((s) => s === ''))
    return refuse('it contains an empty segment or a trailing slash');
  if (!KEY_CHARS.test(key)) {
    const bad = [...new Set(key.match(OUTSIDE_KEY_CHARS))].join('');
    return refuse(
      `it contains characters Supabase Storage does not accept in keys: ${JSON.stringify(bad)} ` +
        "(allowed: A-Z a-z 0-9 and _ / ! - . * ' ( ) space & $ @ = ; : + ,)",
    );
  }
  return key;
}

/**
 * Checks that `path` is a canonical key (assertStorageKey) inside
 * `accounts/{accountId}/` and returns it; the prefix is checked on the canonical form.
 */
export function assertTenantPath(accountId: string, path: unknown): string {
  const key = assertStorageKey(path, accountId);
  const prefix = tenantPrefix(accountId);
  if (!key.startsWith(prefix) || key.length === prefix.length) {
    return refuser(path, accountId)(`it is not inside ${prefix}`);
  }
  return key;
}

/** Checks a bucket name: one plain segment that no URL or file path can widen. */
export function assertBucketName(bucket: unknown): string {
  if (typeof bucket !== 'string' || !BUCKET_NAME.test(bucket)) {
    throw new HdError(
      'INVALID_INPUT',
      `bucket name ${JSON.stringify(bucket)} is not valid: use 1-63 letters, digits, "_", "-" or "." (not first)`,
      { details: { bucket: typeof bucket === 'string' ? bucket.slice(0, 200) : null } },
    );
  }
  return bucket;
}

// Letters that Unicode decomposition does not reduce to ASCII, spelled as a reader would.
const SPELLED: Record<string, string> = {
  ß: 'ss',
  ẞ: 'SS',
  æ: 'ae',
  Æ: 'AE',
  œ: 'oe',
  Œ: 'OE',
  ø: 'o',
  Ø: 'O',
  đ: 'd',
  Đ: 'D',
  ð: 'd',
  Ð: 'D',
  þ: 'th',
  Þ: 'TH',
  ł: 'l',
  Ł: 'L',
  ı: 'i',
};
const MAX_NAME_LENGTH = 200;

/**
 * Maps any file name into one key segment: accents dropped (`Müller` → `Muller`),
 * ligatures spelled out (`Straße` → `Strasse`), anything else outside a plain set
 * (letters, digits, `_ - . ( ) ! ' +` and space) becomes `_`. Never empty, never `.`/`..`.
 */
export function toStorageName(name: string): string {
  const spelled = name
    .normalize('NFKD')
    .replace(/\p{M}/gu, '')
    .replace(/[^\x20-\x7e]/gu, (c) => SPELLED[c] ?? '_');
  const plain = spelled
    .replace(/[^A-Za-z0-9_\-.()!'+ ]/g, '_')
    .replace(/_{2,}/g, '_')
    .trim()
    .slice(0, MAX_NAME_LENGTH);
  return /^\.*$/.test(plain) ? 'file' : plain;
}
