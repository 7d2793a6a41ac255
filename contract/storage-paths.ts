import { HdError } from './errors.ts';

const MAX_PATH_LENGTH = 1024;
// Control characters (NUL included) have no place in an object key.
// eslint-disable-next-line no-control-regex
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;

/** The prefix every storage path of an account lies under. */
export function tenantPrefix(accountId: string): string {
  return `accounts/${accountId}/`;
}

/**
 * Checks that `path` is a plain object key inside `accounts/{accountId}/` and returns it
 * in normal form (NFC). Anything that could escape the prefix is refused rather than
 * "fixed": `..` or `.` segments, empty segments, absolute paths, backslashes, control
 * characters, or another account's prefix.
 */
export function assertTenantPath(accountId: string, path: unknown): string {
  const refuse = (why: string): never => {
    throw new HdError(
      'PATH_OUTSIDE_TENANT',
      `storage path ${JSON.stringify(path)} refused: ${why}`,
      {
        details: { path: typeof path === 'string' ? path.slice(0, 200) : null, accountId },
      },
    );
  };
  if (typeof path !== 'string' || path.length === 0) return refuse('it is empty');
  if (path.length > MAX_PATH_LENGTH)
    return refuse(`it is longer than ${MAX_PATH_LENGTH} characters`);
  if (CONTROL_CHARS.test(path)) return refuse('it contains a control character (NUL, newline, …)');
  if (path.includes('\\')) return refuse('it contains a backslash');
  if (path.startsWith('/')) return refuse('it is absolute');
  const normal = path.normalize('NFC');
  // NFC can lengthen a string (up to 3x), so the limit applies to what is returned too.
  if (normal.length > MAX_PATH_LENGTH)
    return refuse(`it is longer than ${MAX_PATH_LENGTH} characters once normalised (NFC)`);
  const segments = normal.split('/');
  if (segments.some((s) => s === '..' || s === '.'))
    return refuse('it contains a "." or ".." segment');
  if (segments.some((s) => s === ''))
    return refuse('it contains an empty segment or a trailing slash');
  const prefix = tenantPrefix(accountId);
  if (!normal.startsWith(prefix) || normal.length === prefix.length) {
    return refuse(`it is not inside ${prefix}`);
  }
  return normal;
}
