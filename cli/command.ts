import { parseArgs, type ParseArgsOptionsConfig } from 'node:util';
import { ConfigError, loadConfig, type Config } from '../control-plane/config.ts';
import { createLogger, type Logger } from '../control-plane/logger.ts';

export interface Command {
  name: string;
  summary: string;
  usage: string;
  options: ParseArgsOptionsConfig;
  /** Resolves to the process exit code. */
  run(args: ParsedArgs, env: Record<string, string | undefined>): Promise<number>;
}

export interface ParsedArgs {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
}

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export function parseCommandArgs(command: Command, argv: string[]): ParsedArgs {
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      options: { ...command.options, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
    });
    return { values: values as ParsedArgs['values'], positionals };
  } catch (error) {
    throw new UsageError(`${command.name}: ${(error as Error).message}`);
  }
}

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
