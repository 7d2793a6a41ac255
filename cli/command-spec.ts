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
