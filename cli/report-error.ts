import { toHdError } from '../contract/errors.ts';
import { CommandError, UsageError } from './command-spec.ts';

/**
 * Prints why a command failed and gives its exit code: 2 for usage and configuration,
 * 1 otherwise. With --json the answer stays JSON, on stdout: {"error": {code, message}}.
 */
export function reportError(error: unknown, json: boolean): number {
  // By name: config.ts (and zod) is not loaded for an error found before the command ran.
  const isConfig = error instanceof Error && error.name === 'ConfigError';
  const usage = isConfig || error instanceof UsageError;
  // A database or network failure the command did not classify: named by its code too.
  const known = toHdError(error);
  const classified = known.code === 'INTERNAL_ERROR' ? undefined : known;
  const code = isConfig
    ? 'CONFIG'
    : error instanceof UsageError
      ? 'USAGE'
      : error instanceof CommandError
        ? error.code
        : (classified?.code ?? 'UNEXPECTED');
  const message = classified?.message ?? (error instanceof Error ? error.message : String(error));
  if (json) {
    console.log(JSON.stringify({ error: { code, message } }, null, 2));
    if (code === 'UNEXPECTED') console.error((error as Error)?.stack ?? message);
  } else if (usage) console.error(`hd-runner: ${message}`);
  else if (code === 'UNEXPECTED')
    console.error(`hd-runner: unexpected error: ${(error as Error)?.stack ?? message}`);
  else console.error(`hd-runner: ${code}: ${message}`);
  return usage ? 2 : 1;
}
