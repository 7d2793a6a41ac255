import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HdError } from '../contract/errors.ts';
import {
  idleToolStarters,
  prestartToolStarters,
  stopToolStarters,
  TOOL_STARTER_SCRIPT,
} from '../runner/extract/tool-starters.ts';
import { runTool, ToolFailure, type ToolLimits } from '../runner/extract/tools.ts';

// Tool starters (issue 13): a warm runner forks small shells before its job, and runTool
// has one of them `exec` the tool instead of forking the runner. Real processes: `sh` as
// the tool, which prints its own pid ($$) so that a test sees which process ran it.

const limits = (over: Partial<ToolLimits> = {}): ToolLimits => ({
  timeoutMs: 20_000,
  maxMemoryMb: 512,
  signal: new AbortController().signal,
  what: 'the test tool',
  ...over,
});

/** Runs `sh -c script` through runTool; its first output line is the pid that ran it. */
async function runShell(
  script: string,
  over: Partial<ToolLimits> = {},
  env?: Record<string, string>,
) {
  const { stdout, stderr } = await runTool('sh', ['-c', `echo $$; ${script}`], limits(over), {
    ...(env ? { env } : {}),
  });
  const [pid, ...rest] = stdout.split('\n');
  return { pid: Number(pid), stdout: rest.join('\n'), stderr };
}

afterEach(async () => {
  await stopToolStarters();
});

describe('tool starters', () => {
  it('run the tool in the starter process, with its output and stderr as a spawn gives', async () => {
    const pids = prestartToolStarters(1);
    expect(idleToolStarters()).toBe(1);
    const run = await runShell('echo to-stdout; echo to-stderr >&2; pwd');
    expect(run.pid).toBe(pids[0]);
    expect(run.stdout).toBe(`to-stdout\n${process.cwd()}\n`);
    expect(run.stderr.trim()).toBe('to-stderr');
    expect(idleToolStarters()).toBe(0);
    // None left: the next tool is spawned as before.
    const next = await runShell('true');
    expect(pids).not.toContain(next.pid);
  });

  it('give the tool the environment a spawn gives it: PATH, nothing else', async () => {
    const spawned = await runTool('env', [], limits());
    expect(spawned.stdout).toBe(`PATH=${process.env.PATH}\n`);
    prestartToolStarters(1);
    expect(await runTool('env', [], limits())).toEqual(spawned);
    expect(idleToolStarters()).toBe(0);
  });

  it('pass arguments with blanks, backslashes and empty ones through unchanged', async () => {
    const [pid] = prestartToolStarters(1);
    const args = ['  two  blanks ', 'back\\slash\\n', '', '$HOME "quoted" *'];
    const { stdout } = await runTool(
      'sh',
      ['-c', 'echo $$; for a in "$@"; do printf "[%s]" "$a"; done', 'sh', ...args],
      limits(),
    );
    expect(stdout).toBe(`${pid}\n${args.map((a) => `[${a}]`).join('')}`);
  });

  it("stream stdout as it comes, and give the tool's exit status and stderr to its failure", async () => {
    const [pid] = prestartToolStarters(1);
    const chunks: string[] = [];
    // The tool goes on only once this side has its first lines: no timing involved.
    const seen = join(await mkdtemp(join(tmpdir(), 'hd-starter-')), 'seen');
    const failure = await runTool(
      'sh',
      [
        '-c',
        'echo $$; echo one; while [ ! -e "$1" ]; do sleep 0.05; done; echo two; echo broken >&2; exit 3',
        'sh',
        seen,
      ],
      limits(),
      {
        onStdout: (chunk) => {
          chunks.push(chunk.toString());
          if (chunks.join('').includes('one\n')) writeFileSync(seen, '');
        },
      },
    ).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(ToolFailure);
    expect((failure as ToolFailure).stderr).toBe('broken');
    expect(String((failure as ToolFailure).cause)).toContain('sh exit 3: broken');
    expect(chunks.join('')).toBe(`${pid}\none\ntwo\n`);
    expect(chunks.length).toBeGreaterThan(1); // passed on before the tool ended
  });

  it('kill the tool at its timeout and when the job is cancelled', async () => {
    const [first, second] = prestartToolStarters(2);
    const pids: number[] = [];
    const timedOut = await runTool(
      'sh',
      ['-c', 'echo $$; exec sleep 30'],
      limits({ timeoutMs: 3000 }), // room for the tool to print its pid on a busy machine
      {
        onStdout: (chunk) => pids.push(Number(chunk.toString())),
      },
    ).catch((error: unknown) => error);
    expect(timedOut).toBeInstanceOf(HdError);
    expect((timedOut as HdError).code).toBe('PROCESSING_TIMEOUT');
    expect(pids).toEqual([first]);
    expect(existsSync(`/proc/${first}`)).toBe(false);

    const cancel = new AbortController();
    const cancelled = runTool(
      'sh',
      ['-c', 'echo $$; exec sleep 30'],
      limits({ signal: cancel.signal }),
      {
        onStdout: (chunk) => (pids.push(Number(chunk.toString())), cancel.abort(new Error('gone'))),
      },
    );
    await expect(cancelled).rejects.toThrow('gone');
    expect(pids).toEqual([first, second]);
    expect(existsSync(`/proc/${second}`)).toBe(false);
  });

  it('are not used for another environment or an argument with a line end: those are spawned', async () => {
    const [pid] = prestartToolStarters(1);
    const withEnv = await runShell('echo $EXTRA', {}, { EXTRA: 'x' });
    expect(withEnv.pid).not.toBe(pid);
    expect(withEnv.stdout).toBe('x\n');
    const lines = await runShell('echo "two\nlines"');
    expect(lines.pid).not.toBe(pid);
    expect(lines.stdout).toBe('two\nlines\n');
    // A NUL is refused as a spawn refuses it, not dropped by the starter's `read`.
    await expect(runShell('echo a\0b')).rejects.toThrow(/null bytes/);
    expect(idleToolStarters()).toBe(1);
    expect((await runShell('true')).pid).toBe(pid);
  });

  it('exit quietly when their stdin closes without a command', async () => {
    const pids = prestartToolStarters(2);
    expect(pids.every((pid) => existsSync(`/proc/${pid}`))).toBe(true);
    expect(await stopToolStarters()).toEqual([0, 0]);
    expect(idleToolStarters()).toBe(0);
    // Nothing on stdout or stderr either.
    const alone = spawnSync('/bin/sh', ['-c', TOOL_STARTER_SCRIPT], {
      input: '',
      encoding: 'utf8',
    });
    expect(alone).toMatchObject({ status: 0, stdout: '', stderr: '' });
  });
});
