import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';

// A spawn from the runner forks the whole runner process (~80 MB mapped): ~10 ms of CPU
// per tool on the job's path, even for /bin/true, and a 200-page PDF job runs two tools
// (pdfinfo, pdftotext: 28 ms of its ~280 ms in a CPU profile, issue 13). A warm runner
// forks small shells for them before its job instead: each waits for a command on its
// stdin, one argument a line, and when stdin closes `exec`s it: the same pid, stdout and
// stderr pipes, so kill, timeouts, exit codes and output behave as those of a spawn. Its
// stdin becomes /dev/null as a spawn's 'ignore' gives; `unset PWD`: dash would export it,
// and the tool gets only the environment a spawn would give (PATH). A starter whose
// stdin closes without a command (`exec` without one) exits 0 and says nothing.
export const TOOL_STARTER_SCRIPT =
  'unset PWD; while IFS= read -r arg; do set -- "$@" "$arg"; done; exec "$@" </dev/null';

interface Starter {
  child: ChildProcessWithoutNullStreams;
  /** The environment and folder it was started with: a command gets them unchanged. */
  path: string;
  cwd: string;
}

/** Starters waiting for a command, in this process (a warm runner fills it before its job). */
const idle: Starter[] = [];

/**
 * Starts `count` tool starters with the environment runTool gives a tool that asks for
 * nothing more (PATH); their pids. Unreferenced: they do not keep the process alive.
 */
export function prestartToolStarters(count: number): number[] {
  const pids: number[] = [];
  for (let i = 0; i < count; i += 1) {
    const path = process.env.PATH ?? '';
    const child = spawn('/bin/sh', ['-c', TOOL_STARTER_SCRIPT], {
      env: { PATH: path },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const starter = { child, path, cwd: process.cwd() };
    // No /bin/sh, or it died while waiting: dropped, a later tool is spawned as usual.
    const drop = () => {
      const at = idle.indexOf(starter);
      if (at !== -1) idle.splice(at, 1);
    };
    child.on('error', drop);
    child.on('exit', drop);
    // A starter that died before its command: the write fails, its exit says the rest.
    child.stdin.on('error', () => undefined);
    setReferenced(child, false);
    idle.push(starter);
    if (child.pid !== undefined) pids.push(child.pid);
  }
  return pids;
}

/**
 * A waiting starter given `file argv` to run, or undefined where none can run it as a
 * spawn with `env` would: none left, another environment or folder, or an argument a line
 * cannot carry (a line end). The child is then that of the command, as spawn returns it.
 */
export function startWithStarter(
  file: string,
  argv: readonly string[],
  env: Readonly<Record<string, string>>,
): ChildProcessWithoutNullStreams | undefined {
  const keys = Object.keys(env);
  if (keys.length !== 1 || keys[0] !== 'PATH') return undefined;
  const args = [file, ...argv];
  // A line end splits an argument; a NUL, which spawn refuses, `read` would drop.
  if (args.some((arg) => arg.includes('\n') || arg.includes('\0'))) return undefined;
  const cwd = process.cwd();
  const at = idle.findIndex((s) => s.path === env.PATH && s.cwd === cwd && isWaiting(s.child));
  if (at === -1) return undefined;
  const [{ child }] = idle.splice(at, 1) as [Starter];
  setReferenced(child, true);
  child.stdin.end(args.map((arg) => `${arg}\n`).join(''));
  return child;
}

/** Ends the starters still waiting; resolves to their exit codes (0: each ended quietly). */
export function stopToolStarters(): Promise<(number | null)[]> {
  return Promise.all(
    idle.splice(0).map(({ child }) => {
      const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
      child.stdin.end();
      return exited;
    }),
  );
}

/** How many starters wait for a command. */
export function idleToolStarters(): number {
  return idle.filter((s) => isWaiting(s.child)).length;
}

function isWaiting(child: ChildProcessWithoutNullStreams): boolean {
  return child.pid !== undefined && child.exitCode === null && child.signalCode === null;
}

/** Whether the starter and its pipes keep this process's event loop alive. */
function setReferenced(child: ChildProcessWithoutNullStreams, referenced: boolean): void {
  // The pipes are sockets (ref, unref), though typed as plain streams.
  for (const handle of [child, child.stdin, child.stdout, child.stderr]) {
    const ref = handle as unknown as { ref(): void; unref(): void };
    if (referenced) ref.ref();
    else ref.unref();
  }
}
