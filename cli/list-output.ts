import { UsageError } from './command-spec.ts';

/** `--limit` of a list command: 1..1000, `fallback` when not given. */
export function limitOption(value: unknown, fallback: number, command: string): number {
  const limit = Number(typeof value === 'string' ? value : fallback);
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000)
    throw new UsageError(`${command}: --limit must be 1..1000 (got ${JSON.stringify(value)})`);
  return limit;
}

/**
 * A list command's answer: `rows` as JSON or as the table `table` draws, and `cut` (the list
 * stopped at --limit) said on stderr under --json so that stdout stays one JSON document.
 */
export function printList<T>(
  command: string,
  rows: readonly T[],
  options: { json: boolean; table: (rows: readonly T[]) => string; empty: string; cut?: string },
): void {
  if (options.json) {
    console.log(JSON.stringify(rows, null, 2));
    if (options.cut) console.error(`${command}: ${options.cut}`);
  } else {
    console.log(rows.length ? options.table(rows) : options.empty);
    if (options.cut) console.log(`\n${options.cut}`);
  }
}
