import type { Command } from '../command-spec.ts';

/**
 * `hd-runner run`'s name, usage and flags, apart from the command table: the runner's
 * bundle (scripts/bundle-runner.ts) takes this command alone, with its code.
 */
export const RUN_SPEC = {
  name: 'run',
  summary: 'run exactly one job (the container entrypoint)',
  usage: `hd-runner run --job-id ID
       hd-runner run --warm [--max-idle-ms MS]

Claims the queued job ID (or, under a scheduler, adopts the lease passed in
HD_LEASE_TOKEN), runs its handler with heartbeats, records the outcome and exits:

  0   completed                10  failed, permanently (error code recorded)
  11  failed, will be retried  12  lease lost or job cancelled (nothing recorded)
  13  interrupted; job handed back to the queue
  14  lost the database; nothing recorded (a scheduler hands the job back, attempt refunded)
  2   usage or configuration error, or the job is not runnable
  1   unexpected error

SIGTERM/SIGINT stop the handler and hand the job back.

--warm: a warm runner, started by a scheduler's process launcher before a job exists
(HD_WARM_RUNNERS): it loads its code, says "ready" on file descriptor 3, then reads its
one job (id, lease token, credentials) as a JSON line on stdin, says "assigned" and
runs it as above. Stdin closed, or no job within --max-idle-ms (default 300000): exit 0.`,
  options: {
    'job-id': { type: 'string' },
    warm: { type: 'boolean' },
    'max-idle-ms': { type: 'string' },
  },
} satisfies Omit<Command, 'load'>;
