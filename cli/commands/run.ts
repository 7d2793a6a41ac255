import {
  configFrom,
  loggerFor,
  requiredOption,
  type LoggerFor,
  uuidArg,
  type Env,
  type ParsedArgs,
} from '../command.ts';
import type { ControlPlaneDb } from '../../control-plane/db/transport.ts';
import { openDb, openStorage } from '../../control-plane/open.ts';
import { OUTCOME_EXIT_CODE, runJob } from '../../runner/run-job.ts';

/** A database connection a warm runner opened before its job (runner-entry.ts). */
export interface ConnectedDb {
  /** The login it was opened with. */
  url: string;
  db: ControlPlaneDb & { close(): Promise<void> };
  /** Settles once the connection is open (or failed: the job's first call reconnects). */
  open: Promise<void>;
}

/**
 * `connected` and `makeLogger`: a warm runner's, its connection opened and its logger's
 * pino set-up done before its job (runner-entry.ts).
 */
export async function runCommand(
  args: ParsedArgs,
  env: Env,
  connected?: ConnectedDb,
  makeLogger: LoggerFor = loggerFor,
): Promise<number> {
  const jobId = uuidArg(requiredOption(args, 'job-id', 'run'), '--job-id');
  const config = configFrom(env);
  const log = makeLogger(config, 'runner');
  // Taken only for the very login the job is configured with.
  const reuse =
    connected && config.HD_TRANSPORT === 'postgres' && config.HD_DATABASE_URL === connected.url;
  if (connected && !reuse) await connected.db.close();
  // Waited for: a call made while it is still opening would open a second connection.
  if (reuse) await connected.open;
  const db = reuse ? connected.db : openDb(config, { runner: true });
  const interrupt = new AbortController();
  const onSignal = () => interrupt.abort();
  // Kept (on, not once) until the job is settled: execa's exit-cleanup listener, while a
  // child tool runs, re-sends a signal it finds no other listener for, which kills the
  // runner before it hands the job back. A repeated signal changes nothing.
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    const result = await runJob({
      db,
      storage: openStorage(config),
      config,
      log,
      jobId,
      leaseToken: env.HD_LEASE_TOKEN || undefined,
      interrupt: interrupt.signal,
    });
    if (result.outcome === 'not_runnable') console.error(`hd-runner run: ${result.message}`);
    else if (result.outcome !== 'completed')
      console.error(
        `hd-runner run: ${result.outcome}: ${result.error.code}: ${result.error.message}`,
      );
    return OUTCOME_EXIT_CODE[result.outcome];
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    await db.close();
  }
}
