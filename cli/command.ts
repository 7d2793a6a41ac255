import { ConfigError, loadConfig, type Config } from '../control-plane/config.ts';
import { createLogger, type Logger } from '../control-plane/logger.ts';
import { UsageError, type ParsedArgs } from './command-spec.ts';

// Helpers for the code of commands (loaded when a command runs, not for --help).

export { UsageError, type CommandRun, type Env, type ParsedArgs } from './command-spec.ts';

/** Configuration from env, with flags (given as env names) taking precedence. */
export function configFrom(
  env: Record<string, string | undefined>,
  overrides: Record<string, string | undefined> = {},
): Config {
  const merged = { ...env };
  for (const [key, value] of Object.entries(overrides))
    if (value !== undefined) merged[key] = value;
  return loadConfig(merged);
}

export function loggerFor(config: Config, name: string): Logger {
  return createLogger({
    level: config.HD_LOG_LEVEL,
    name,
    base: { worker_id: config.HD_WORKER_ID },
  });
}

export function stringOption(args: ParsedArgs, name: string): string | undefined {
  const value = args.values[name];
  return typeof value === 'string' ? value : undefined;
}

export function requiredOption(args: ParsedArgs, name: string, command: string): string {
  const value = stringOption(args, name);
  if (!value) throw new UsageError(`${command}: --${name} is required`);
  return value;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function uuidArg(value: string, what: string): string {
  if (!UUID.test(value))
    throw new UsageError(`${what} must be a UUID (got ${JSON.stringify(value)})`);
  return value.toLowerCase();
}

export { ConfigError };
