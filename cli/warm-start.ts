import { closeSync, writeSync } from 'node:fs';
import { parseArgs } from 'node:util';
import {
  WARM_ASSIGNED,
  WARM_CONTROL_FD,
  WARM_READY,
  WarmAssignment,
} from '../contract/warm-assignment.ts';
import { jsonOrUndefined } from '../contract/json.ts';

// A warm runner (`hd-runner run --warm`): started by its scheduler before any job exists,
// it loads its code, then waits on stdin for the one job it is given (docs/containers.md,
// "Warm runners"). Until then it holds no job id, lease or credential: its environment
// and arguments have none, so another process of this user reading /proc learns nothing.

// The job's signed storage URLs are at most 100 KB (scheduler/runner-access.ts).
const MAX_ASSIGNMENT_BYTES = 1024 * 1024;
/** Exit code of a warm runner that ended without a job (idle limit, stdin closed). */
export const WARM_UNUSED_EXIT = 0;

export type WarmStart =
  { jobId: string; env: Record<string, string | undefined> } | { exitCode: number };

/**
 * For `run --warm [--max-idle-ms MS]`: runs `warmUp`, says ready on fd 3, waits for the
 * assignment and acknowledges it on fd 3 (before anything else is done with it, so a
 * runner that died unacknowledged did nothing with its job); resolves to the job to run
 * with its environment, or to an exit code when no job came (stdin closed: the scheduler
 * is gone or stopping; the idle limit passed) or the line was not an assignment.
 * Undefined for any other `run`.
 */
export async function warmStart(
  argv: readonly string[],
  env: Record<string, string | undefined>,
  warmUp: () => Promise<unknown>,
): Promise<WarmStart | undefined> {
  if (argv[0] !== 'run' || !argv.includes('--warm')) return undefined;
  let maxIdleMs: number;
  try {
    const { values } = parseArgs({
      args: argv.slice(1),
      options: { warm: { type: 'boolean' }, 'max-idle-ms': { type: 'string' } },
      strict: true,
    });
    maxIdleMs = Number(values['max-idle-ms'] ?? 300_000);
    if (!Number.isInteger(maxIdleMs) || maxIdleMs <= 0)
      throw new Error('--max-idle-ms must be a positive whole number of milliseconds');
  } catch (error) {
    console.error(`hd-runner run --warm: ${(error as Error).message}`);
    return { exitCode: 2 };
  }
  await warmUp();
  control(WARM_READY);
  const line = await firstLine(maxIdleMs);
  if (line === undefined) return { exitCode: WARM_UNUSED_EXIT };
  const parsed = WarmAssignment.safeParse(jsonOrUndefined(line));
  if (!parsed.success) {
    // Its content is not echoed: it may hold a credential.
    console.error('hd-runner run --warm: stdin did not carry a job assignment');
    return { exitCode: 2 };
  }
  const { job_id, lease_token, env: jobEnv } = parsed.data;
  control(`${WARM_ASSIGNED} ${job_id}`, true);
  return { jobId: job_id, env: { ...env, ...jobEnv, HD_LEASE_TOKEN: lease_token } };
}

/** A line to the scheduler on fd 3; without one (started by hand) there is no one to tell. */
function control(line: string, last = false) {
  try {
    writeSync(WARM_CONTROL_FD, `${line}\n`);
    if (last) closeSync(WARM_CONTROL_FD);
  } catch {
    // no control pipe
  }
}

/** stdin's first line; undefined at its end or when `maxIdleMs` passed first. */
function firstLine(maxIdleMs: number): Promise<string | undefined> {
  const stdin = process.stdin;
  return new Promise((resolve) => {
    let text = '';
    const done = (value: string | undefined) => {
      clearTimeout(timer);
      stdin.off('data', onData).off('end', onEnd).off('error', onEnd);
      stdin.destroy(); // nothing more is read: a second job has no way in
      resolve(value);
    };
    const onData = (chunk: Buffer) => {
      text += chunk.toString('utf8');
      const end = text.indexOf('\n');
      if (end >= 0) done(text.slice(0, end));
      else if (text.length > MAX_ASSIGNMENT_BYTES) done('');
    };
    const onEnd = () => done(undefined);
    const timer = setTimeout(onEnd, maxIdleMs);
    stdin.on('data', onData).once('end', onEnd).once('error', onEnd);
  });
}
