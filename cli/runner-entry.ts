import { main } from './cli.ts';
import { runCommand } from './commands/run.ts';
import { RUN_SPEC } from './commands/run-spec.ts';

/**
 * The entry of the runner's bundle (dist/cli/runner.mjs, scripts/bundle-runner.ts):
 * `hd-runner run` with its code imported up front, so that the bundler puts the whole
 * path of a job into one file (issue 13: a runner starts ~100 ms of CPU sooner than
 * from ~200 separate modules). main.ts loads it for `run` when it is there.
 */
export function runnerMain(argv: string[], env: Record<string, string | undefined>) {
  return main(argv, env, [{ ...RUN_SPEC, load: async () => runCommand }]);
}
