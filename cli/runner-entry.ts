import { main } from './cli.ts';
import {
  configFrom,
  preparedLoggerFor,
  type Env,
  type LoggerFor,
  type ParsedArgs,
} from './command.ts';
import { runCommand, type ConnectedDb } from './commands/run.ts';
import { PostgresDb } from '../control-plane/db/postgres.ts';
import { openDb } from '../control-plane/open.ts';
import { RUN_SPEC } from './commands/run-spec.ts';
import { warmStart } from './warm-start.ts';
import { preloadHandlers } from '../runner/handlers/load.ts';
import { warmUpCode } from './warm-up.ts';
import { prestartToolStarters, stopToolStarters } from '../runner/extract/tool-starters.ts';

/**
 * Tool starters a warm runner makes before its job: the tools of a PDF's text layer run at
 * once (runner/extract/tool-starters.ts): pdfinfo, and a pdftotext for each part of a long
 * file on extract_text's two CPUs (readPages).
 */
const TOOL_STARTERS = 3;

/**
 * The entry of the runner's bundle (dist/cli/runner.mjs, scripts/bundle-runner.ts):
 * `hd-runner run` with its code imported up front, so that the bundler puts the whole
 * path of a job into one file (issue 13: a runner starts ~100 ms of CPU sooner than
 * from ~200 separate modules). main.ts loads it for `run` when it is there, and for
 * `run --warm` always: a warm runner waits for its job here (warm-start.ts), with its
 * handlers loaded, and then runs it as `run --job-id` would, credentials from stdin.
 */
export async function runnerMain(argv: string[], env: Record<string, string | undefined>) {
  let connected: ConnectedDb | undefined;
  let makeLogger: LoggerFor | undefined;
  const warm = await warmStart(
    argv,
    env,
    async () => {
      makeLogger = await warmUp(env);
    },
    (loginEnv) => (connected = connectAhead(loginEnv)),
  );
  if (warm && 'exitCode' in warm) return warm.exitCode;
  const [args, runEnv] = warm ? [['run', '--job-id', warm.jobId], warm.env] : [argv, env];
  const run = (parsed: ParsedArgs, runEnv: Env) =>
    runCommand(parsed, runEnv, connected, makeLogger);
  try {
    return await main(args, runEnv, [{ ...RUN_SPEC, load: async () => run }]);
  } finally {
    void stopToolStarters();
  }
}

/**
 * A warm runner's database connection, opened with its login while it waits for its job
 * (postgres transport): the job's calls then start without a server process to fork and a
 * SCRAM log-in (50-160 ms of wall time on a busy host, bench/RESULTS.md, issue 13).
 */
function connectAhead(env: Env): ConnectedDb | undefined {
  let config;
  try {
    config = configFrom(env);
  } catch {
    return undefined; // the job's own parse says what is wrong
  }
  if (config.HD_TRANSPORT !== 'postgres' || !config.HD_DATABASE_URL) return undefined;
  const db = openDb(config, { runner: true });
  if (!(db instanceof PostgresDb)) return undefined;
  return { url: config.HD_DATABASE_URL, db, open: db.connectAhead() };
}

/**
 * A warm runner's preparation before its job: every handler's modules loaded, and its
 * configuration parsed once (without the job's settings), so that the job's own parse
 * runs code V8 has already compiled (zod's parse 6.5 ms of CPU in a profile of a 200-page
 * job, issue 13); the code a job runs first run on made-up input (warm-up.ts): ~5 ms
 * more. Its tools' processes are forked now too, from small shells that run them when the
 * job comes. Resolves to the job's logger, made now (pino's set-up: 3-6 ms) where the
 * configuration parses; the job's settings add their secrets to it.
 */
async function warmUp(env: Record<string, string | undefined>): Promise<LoggerFor | undefined> {
  await preloadHandlers();
  await warmUpCode();
  prestartToolStarters(TOOL_STARTERS);
  try {
    return preparedLoggerFor(configFrom(env), 'runner');
  } catch {
    return undefined; // the job's own parse says what is wrong
  }
}
