import { parseArgs, type ParseArgsOptionsConfig } from 'node:util';

// What main needs before a command runs. Kept free of heavy imports: `--help` loads this,
// the command table and nothing else.

export type Env = Record<string, string | undefined>;

export interface ParsedArgs {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
}

/** A command's code: resolves to the process exit code. */
export type CommandRun = (args: ParsedArgs, env: Env) => Promise<number>;

export interface Command {
  name: string;
  summary: string;
  usage: string;
  options: ParseArgsOptionsConfig;
  /** Imports the command's module (only when it runs). */
  load(): Promise<CommandRun>;
  /**
   * An operator command: without a configured database it uses the demo's embedded
   * PostgreSQL when the demo left one (see cli/embedded-default.ts).
   */
  embeddedDefault?: boolean;
}

/** Wrong flags or arguments: exit 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** The command was understood but cannot be done (a job in the wrong state…): exit 1. */
export class CommandError extends Error {
  override readonly name = 'CommandError';
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
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
