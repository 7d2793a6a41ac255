import { ConfigError, loadConfig, type Config } from '../control-plane/config.ts';
import {
  createLogger,
  prepareLogger,
  type Logger,
  type LoggerOptions,
} from '../control-plane/logger.ts';
import { secretsOf } from '../control-plane/redact.ts';
import { UsageError, type ParsedArgs } from './command-spec.ts';

// Helpers for the code of commands (loaded when a command runs, not for --help).

export {
  CommandError,
  UsageError,
  type CommandRun,
  type Env,
  type ParsedArgs,
} from './command-spec.ts';

/**
 * Configuration from env, with flags taking precedence: `flags` maps a setting to the
 * flag and value the user typed, and an error about it names the flag, not the setting.
 */
export function configFrom(
  env: Record<string, string | undefined>,
  overrides: Record<string, string | undefined> = {},
  flags: Record<string, { flag: string; value: string | undefined }> = {},
): Config {
  const merged = { ...env };
  for (const [key, value] of Object.entries(overrides))
    if (value !== undefined) merged[key] = value;
  for (const [key, { value }] of Object.entries(flags))
    if (value !== undefined) merged[key] = value;
  try {
    return loadConfig(merged);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    const typed = Object.entries(flags).find(
      ([key, { value }]) => value !== undefined && error.message.includes(`: ${key}: `),
    );
    if (!typed) throw error;
    const [key, { flag }] = typed;
    throw new UsageError(error.message.replace(`invalid configuration: ${key}: `, `${flag}: `));
  }
}

export function loggerFor(config: Config, name: string): Logger {
  return createLogger(loggerOptions(config, name));
}

/** Makes loggerFor's logger of a later configuration (a job's), prepared now (prepareLogger). */
export type LoggerFor = typeof loggerFor;

/** A LoggerFor whose pino set-up is done now, for `config` (a warm runner's, before its job). */
export function preparedLoggerFor(config: Config, name: string): LoggerFor {
  const prepared = prepareLogger(loggerOptions(config, name));
  return (later, laterName) => prepared(loggerOptions(later, laterName));
}

function loggerOptions(config: Config, name: string): LoggerOptions {
  return {
    level: config.HD_LOG_LEVEL,
    name,
    base: { worker_id: config.HD_WORKER_ID },
    secrets: secretsOf(config),
  };
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
