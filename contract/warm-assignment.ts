import { z } from 'zod';

/** Settings laid over the runner's environment. */
const Env = z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/), z.string());

/**
 * What a scheduler hands a warm runner (`hd-runner run --warm`) on its stdin, one JSON
 * line: the one job it runs, and that job's own settings (its credentials), which the
 * runner lays over its environment. Nothing of it is in the runner's environment or
 * arguments before (docs/containers.md, "Warm runners").
 */
export const WarmAssignment = z.strictObject({
  job_id: z.guid(),
  lease_token: z.guid(),
  env: Env,
});
export type WarmAssignment = z.infer<typeof WarmAssignment>;

/**
 * An optional line before the assignment: the database login the runner opens its
 * connection with while it waits (a warm role that reaches no job until its scheduler
 * binds it to the one it hands over: migration 00032), so that its job does not wait for
 * a log-in. Laid over its environment as the assignment's `env` is.
 */
export const WarmCredentials = z.strictObject({ credentials: Env });
export type WarmCredentials = z.infer<typeof WarmCredentials>;

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
