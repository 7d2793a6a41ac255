import type { ClaimedJob } from '../../contract/jobs.ts';
import type { ControlPlaneDb } from '../../control-plane/db/transport.ts';
import type { Launcher, LaunchRequest, RunnerExit } from '../../scheduler/launcher.ts';

export interface HeldRunner {
  job: ClaimedJob;
  gpuIds: readonly string[];
  /** Completes the job and lets the runner exit 0. */
  finish: () => void;
}

/**
 * Stands in for a runner: each launched job is held, running, until the test calls its
 * `finish()`; then it is completed and the runner exits 0. No timing involved.
 */
export function heldLauncher(db: ControlPlaneDb): { launcher: Launcher; launched: HeldRunner[] } {
  const launched: HeldRunner[] = [];
  const launcher: Launcher = {
    async launch(request: LaunchRequest) {
      let finish!: () => void;
      const finished = new Promise<void>((resolve) => (finish = resolve));
      launched.push({ job: request.job, gpuIds: request.gpuIds ?? [], finish });
      const exit: Promise<RunnerExit> = finished.then(async () => {
        await db.completeJob(request.job.id, request.job.lease_token, {});
        const e = { exitCode: 0, signal: null, timedOut: false, stoppedFor: null };
        return { ...e, oomKilled: false, durationMs: 1, outputTail: [] };
      });
      return { id: request.job.id, wait: () => exit, stop: finish };
    },
  };
  return { launcher, launched };
}
