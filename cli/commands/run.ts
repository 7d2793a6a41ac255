import { configFrom, loggerFor, requiredOption, uuidArg, type Command } from '../command.ts';
import { openDb, openStorage } from '../../control-plane/open.ts';
import { OUTCOME_EXIT_CODE, runJob } from '../../runner/run-job.ts';

export const runCommand: Command = {
  name: 'run',
  summary: 'run exactly one job (the container entrypoint)',
  usage: `hd-runner run --job-id ID

Claims the queued job ID (or, under a scheduler, adopts the lease passed in
HD_LEASE_TOKEN), runs its handler with heartbeats, records the outcome and exits:

  0   completed                10  failed, permanently (error code recorded)
  11  failed, will be retried  12  lease lost or job cancelled (nothing recorded)
  13  interrupted; job handed back to the queue
  2   usage or configuration error, or the job is not runnable
  1   unexpected error

SIGTERM/SIGINT stop the handler and hand the job back.`,
  options: { 'job-id': { type: 'string' } },
  async run(args, env) {
    const jobId = uuidArg(requiredOption(args, 'job-id', 'run'), '--job-id');
    const config = configFrom(env);
    const log = loggerFor(config, 'runner');
    const db = openDb(config);
    const interrupt = new AbortController();
    const onSignal = () => interrupt.abort();
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
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
  },
};
