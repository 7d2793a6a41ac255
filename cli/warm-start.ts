import { closeSync, writeSync } from 'node:fs';
import { parseArgs } from 'node:util';
import {
  WARM_ASSIGNED,
  WARM_CONTROL_FD,
  WARM_READY,
  WarmAssignment,
  WarmCredentials,
} from '../contract/warm-assignment.ts';
import { jsonOrUndefined } from '../contract/json.ts';

// A warm runner (`hd-runner run --warm`): started by its scheduler before any job exists,
// it loads its code, then waits on stdin for the one job it is given (docs/containers.md,
// "Warm runners"). Until then it holds no job id or lease: its environment and arguments
// have none, so another process of this user reading /proc learns nothing. Its scheduler
// may send a database login first (WarmCredentials), with which it connects while it
// waits; a warm role reaches no job until the scheduler binds it to the one it hands over.

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
 * A credentials line before the assignment is laid over the environment and handed to
 * `connect` at once (the job's database connection, opened while it waits).
 * Undefined for any other `run`.
 */
export async function warmStart(
  argv: readonly string[],
  env: Record<string, string | undefined>,
  warmUp: () => Promise<unknown>,
  connect: (env: Record<string, string | undefined>) => void = () => {},
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
  const lines = stdinLines(maxIdleMs);
  let line = await lines.next();
  let credentials: Record<string, string> = {};
  const login = line === undefined ? undefined : WarmCredentials.safeParse(jsonOrUndefined(line));
  if (login?.success) {
    credentials = login.data.credentials;
    connect({ ...env, ...credentials });
    line = await lines.next();
  }
  lines.close(); // nothing more is read: a second job has no way in
  if (line === undefined) return { exitCode: WARM_UNUSED_EXIT };
  const parsed = WarmAssignment.safeParse(jsonOrUndefined(line));
  if (!parsed.success) {
    // Its content is not echoed: it may hold a credential.
    console.error('hd-runner run --warm: stdin did not carry a job assignment');
    return { exitCode: 2 };
  }
  const { job_id, lease_token, env: jobEnv } = parsed.data;
  control(`${WARM_ASSIGNED} ${job_id}`, true);
  return {
    jobId: job_id,
    env: { ...env, ...credentials, ...jobEnv, HD_LEASE_TOKEN: lease_token },
  };
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

/**
 * stdin's lines, one at a time: `next` resolves to the next one, or undefined at its end
 * or once `maxIdleMs` passed since the first call (the idle limit counts from the wait's
 * start, credentials line or not).
 */
function stdinLines(maxIdleMs: number) {
  const stdin = process.stdin;
  let text = '';
  let ended = false;
  let wake: (() => void) | undefined;
  const onData = (chunk: Buffer) => {
    text += chunk.toString('utf8');
    wake?.();
  };
  const onEnd = () => {
    ended = true;
    wake?.();
  };
  const timer = setTimeout(onEnd, maxIdleMs);
  stdin.on('data', onData).once('end', onEnd).once('error', onEnd);
  return {
    async next(): Promise<string | undefined> {
      for (;;) {
        const end = text.indexOf('\n');
        if (end >= 0) {
          const line = text.slice(0, end);
          text = text.slice(end + 1);
          return line;
        }
        if (text.length > MAX_ASSIGNMENT_BYTES) return '';
        if (ended) return undefined;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    },
    close() {
      clearTimeout(timer);
      stdin.off('data', onData).off('end', onEnd).off('error', onEnd);
      stdin.destroy();
    },
  };
}
