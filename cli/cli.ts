import { parseCommandArgs, type Command } from './command-spec.ts';
import { reportError } from './report-error.ts';
import { Redactor, secretsOf } from '../control-plane/redact.ts';
import { guardOutput } from './terminal-safe.ts';

function mainHelp(commands: readonly Command[]): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return `hd-runner: the data plane of the document pipeline

Usage: hd-runner <command> [options]     hd-runner <command> --help

Commands:
${commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join('\n')}

Configuration comes from the environment (see README, "Configuration").`;
}

/**
 * The CLI over a table of commands: every command (main.ts), or `run` alone in the
 * runner's bundle (runner-entry.ts). Resolves to the exit code.
 */
export async function main(
  argv: string[],
  env: Record<string, string | undefined>,
  commands: readonly Command[],
): Promise<number> {
  const redactor = new Redactor(secretsOf(env));
  const redact = (text: string) => redactor.text(text);
  guardOutput(process.stdout, redact);
  guardOutput(process.stderr, redact);
  // `docker run hd-runner --job-id X` is short for `run --job-id X`.
  const args = argv[0]?.startsWith('--job-id') ? ['run', ...argv] : argv;
  const [name, ...rest] = args;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(mainHelp(commands));
    return name ? 0 : 2;
  }
  const command = commands.find((c) => c.name === name);
  if (!command) {
    console.error(`hd-runner: unknown command ${JSON.stringify(name)}\n\n${mainHelp(commands)}`);
    return 2;
  }
  try {
    const parsed = parseCommandArgs(command, rest);
    if (parsed.values.help) {
      console.log(command.usage);
      return 0;
    }
    const run = await command.load();
    if (!command.embeddedDefault) return await run(parsed, env);
    const { withEmbeddedDefault } = await import('./embedded-default.ts');
    return await withEmbeddedDefault(env, (withDatabase) => run(parsed, withDatabase));
  } catch (error) {
    return reportError(error, rest.includes('--json'));
  }
}
