import { z } from 'zod';

/**
 * What a scheduler hands a warm runner (`hd-runner run --warm`) on its stdin, one JSON
 * line: the one job it runs, and that job's own settings (its credentials), which the
 * runner lays over its environment. Nothing of it is in the runner's environment or
 * arguments before (docs/containers.md, "Warm runners").
 */
export const WarmAssignment = z.strictObject({
  job_id: z.guid(),
  lease_token: z.guid(),
  env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string()),
});
export type WarmAssignment = z.infer<typeof WarmAssignment>;

/** The file descriptor a warm runner tells its scheduler on, a line at a time: */
export const WARM_CONTROL_FD = 3;
/** its code is loaded and it waits for its job; */
export const WARM_READY = 'ready';
/**
 * it read its job, `assigned JOB_ID` (before doing anything with it: one that ended
 * without saying so did nothing); the id, so that the scheduler knows whose job it took
 * should anything but the scheduler ever reach its stdin.
 */
export const WARM_ASSIGNED = 'assigned';
