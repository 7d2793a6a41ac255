import type { ControlPlaneDb } from '../control-plane/db/transport.ts';
import { CommandError, UsageError } from './command-spec.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const LAYOUT = 'xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx';
const MIN_PREFIX = 4;

/** The lowest and highest UUID that start with `prefix` (hex digits, dashes where a UUID has them). */
export function uuidPrefixRange(prefix: string): [string, string] | undefined {
  const p = prefix.toLowerCase();
  if (p.length > LAYOUT.length) return undefined;
  for (let i = 0; i < p.length; i++) {
    const ok = LAYOUT[i] === '-' ? p[i] === '-' : /[0-9a-f]/.test(p[i]!);
    if (!ok) return undefined;
  }
  const fill = (digit: string) => p + LAYOUT.slice(p.length).replace(/x/g, digit);
  return [fill('0'), fill('f')];
}

/**
 * A job id as the operator typed it: a full UUID, or a unique prefix of one (at least
 * four characters, as the demo's 8-character ids), as git and docker accept.
 */
export async function resolveJobId(db: ControlPlaneDb, typed: string, what = 'job id') {
  return resolveIdPrefix(typed, what, 'job', (range) => db.listJobs({ idRange: range, limit: 3 }));
}

/** resolveJobId for any table: `find` lists up to 3 rows whose id is in the range. */
export async function resolveIdPrefix(
  typed: string,
  what: string,
  noun: string,
  find: (range: [string, string]) => Promise<readonly { id: string }[]>,
) {
  const text = typed.toLowerCase();
  if (UUID.test(text)) return text;
  const range = text.length >= MIN_PREFIX ? uuidPrefixRange(text) : undefined;
  if (!range) {
    throw new UsageError(
      `${what} must be a UUID or its first ${MIN_PREFIX}+ characters (got ${JSON.stringify(typed)})`,
    );
  }
  const matches = await find(range);
  if (matches.length === 1) return matches[0]!.id;
  if (matches.length === 0)
    throw new CommandError('NOT_FOUND', `no ${noun} id starts with ${text}`);
  const shown = matches
    .map((j) => j.id)
    .sort()
    .slice(0, 2);
  throw new CommandError(
    'AMBIGUOUS',
    `${text} is the start of several ${noun} ids (${shown.join(', ')}${matches.length > 2 ? ', …' : ''}): give more characters`,
  );
}
