import type { Command } from '../command-spec.ts';

/**
 * `hd-runner run`'s name, usage and flags, apart from the command table: the runner's
 * bundle (scripts/bundle-runner.ts) takes this command alone, with its code.
 */
export const RUN_SPEC = {
  name: 'run',
  summary: 'run exactly one job (the container entrypoint)',
  usage: `hd-runner run --job-id ID

Claims the queued job ID (or, under a scheduler, adopts the lease passed in
HD_LEASE_TOKEN), runs its handler with heartbeats, records the outcome and exits:

  0   completed                10  failed, permanently (error code recorded)
  11  failed, will be retried  12  lease lost or job cancelled (nothing recorded)
  13  interrupted; job handed back to the queue
  14  lost the database; nothing recorded (a scheduler hands the job back, attempt refunded)
  2   usage or configuration error, or the job is not runnable
  1   unexpected error

SIGTERM/SIGINT stop the handler and hand the job back.`,
  options: { 'job-id': { type: 'string' } },
} satisfies Omit<Command, 'load'>;
