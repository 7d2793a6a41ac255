import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { HdError } from '../../contract/errors.ts';
import { startWithStarter } from './tool-starters.ts';

/** The Debian package that brings each external tool, for messages that say what to do. */
export const TOOL_PACKAGES: Record<string, string> = {
  pdfinfo: 'poppler-utils',
  pdfimages: 'poppler-utils',
  pdftoppm: 'poppler-utils',
  pdftotext: 'poppler-utils',
  tesseract: 'tesseract-ocr',
  ffmpeg: 'ffmpeg',
  ffprobe: 'ffmpeg',
  prlimit: 'util-linux',
  stdbuf: 'coreutils',
};

/** The absolute path of a program on PATH, or undefined. */
export function findTool(name: string, path = process.env.PATH ?? ''): string | undefined {
  for (const dir of path.split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

export interface ToolLimits {
  timeoutMs: number;
  maxMemoryMb: number;
  signal: AbortSignal;
  /** Says what was being done, in messages ("OCR of scan.pdf page 3"). */
  what: string;
}

/**
 * A tool that exited with an error. The message is one sentence for the job's user; the
 * tool's own words (stderr, exit status) are in `stderr` and the cause, for the log.
 */
export class ToolFailure extends HdError {
  readonly stderr: string;
  constructor(message: string, tool: string, exit: string, stderr: string) {
    super('UNSUPPORTED_FILE', message, {
      retryable: false,
      cause: new Error(`${tool} ${exit}: ${stderr.slice(-1000)}`),
    });
    this.stderr = stderr;
  }
}

/**
 * A tool run that failed, or ran past its time or memory limit (runTool): one page's or
 * one reading's failure, as opposed to one that ends the job. The job's own end
 * (cancelled, its time limit) throws the same codes: callers check their signal too.
 */
export function isToolGiveUp(error: unknown): boolean {
  return (
    error instanceof ToolFailure ||
    (error instanceof HdError && ['PROCESSING_TIMEOUT', 'OOM_KILLED'].includes(error.code))
  );
}

export interface ToolRun {
  env?: Record<string, string>;
  /** Output passed on as it comes (then `stdout` comes back empty). */
  onStdout?: (chunk: Buffer) => void;
  /**
   * The tool writes its output unbuffered (`stdbuf -o0`, where coreutils has it), so that
   * what it has done shows at once rather than in 4 KiB blocks.
   */
  unbuffered?: boolean;
}

/** Most output kept or passed on from one run; past it the tool is stopped and fails. */
const MAX_STDOUT_BYTES = 64 * 1024 * 1024;
const MAX_STDERR_CHARS = 64 * 1024;
/** Time a tool gets to end after SIGTERM before SIGKILL. */
const KILL_GRACE_MS = 1000;

/**
 * Runs an external tool (poppler, tesseract, ffmpeg) with bounds: address space via
 * prlimit where it exists (these are native programs, for which RLIMIT_AS is a sound
 * limit), a wall-clock timeout, and the job's AbortSignal.
 */
export async function runTool(
  name: string,
  args: readonly string[],
  limits: ToolLimits,
  options: ToolRun = {},
): Promise<{ stdout: string; stderr: string }> {
  const tool = findTool(name);
  if (!tool) {
    throw new HdError(
      'INTERNAL_ERROR',
      `${name} is not installed on this runner (apt-get install ${TOOL_PACKAGES[name] ?? name}), needed for ${limits.what}`,
    );
  }
  if (limits.signal.aborted) throw limits.signal.reason;
  const stdbuf = options.unbuffered ? findTool('stdbuf') : undefined;
  const command = stdbuf ? [stdbuf, '-o0', tool, ...args] : [tool, ...args];
  const prlimit = findTool('prlimit');
  if (prlimit) command.unshift(prlimit, `--as=${limits.maxMemoryMb * 1024 * 1024}`, '--');
  const result = await spawnBounded(command, limits, options);
  if (limits.signal.aborted) throw limits.signal.reason;
  if (result.timedOut) {
    throw new HdError(
      'PROCESSING_TIMEOUT',
      `${limits.what} took longer than its limit of ${formatMs(limits.timeoutMs)}`,
      { retryable: false, cause: new Error(`${name} ran past ${limits.timeoutMs} ms`) },
    );
  }
  const stderr = result.stderr.trim();
  const exit = result.signal ?? `exit ${result.exitCode}`;
  if (result.overflow) {
    throw new ToolFailure(
      `${limits.what} failed`,
      name,
      exit,
      `more than ${MAX_STDOUT_BYTES} bytes of output`,
    );
  }
  if (result.exitCode !== 0) {
    if (/bad_alloc|cannot allocate|out of memory/i.test(stderr)) {
      throw new HdError(
        'OOM_KILLED',
        `${limits.what} needed more than its limit of ${limits.maxMemoryMb} MiB of memory`,
        { retryable: false, cause: new Error(`${name} ${exit}: ${stderr.slice(-1000)}`) },
      );
    }
    throw new ToolFailure(`${limits.what} failed`, name, exit, stderr);
  }
  return { stdout: result.stdout, stderr: result.stderr };
}

interface BoundedRun {
  stdout: string;
  stderr: string;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  overflow: boolean;
}

/**
 * One run of a program to its end: stopped (SIGTERM, then SIGKILL) at its timeout, when
 * the signal aborts, or past the output limit. node:child_process rather than execa,
 * which alone took ~55 ms of CPU to load in every runner that reads a PDF (issue 13); in
 * a warm runner by a tool starter where one waits (tool-starters.ts), without a fork of
 * the runner.
 */
function spawnBounded(
  [file, ...argv]: string[],
  limits: ToolLimits,
  { env = {}, onStdout }: ToolRun,
): Promise<BoundedRun> {
  return new Promise((resolve, reject) => {
    const childEnv = { PATH: process.env.PATH ?? '', ...env };
    const child =
      startWithStarter(file!, argv, childEnv) ??
      spawn(file!, argv, { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    const stdout: Buffer[] = [];
    let bytes = 0;
    let stderr = '';
    let timedOut = false;
    let overflow = false;
    let killer: NodeJS.Timeout | undefined;
    const stop = () => {
      if (killer) return;
      child.kill('SIGTERM');
      killer = setTimeout(() => child.kill('SIGKILL'), KILL_GRACE_MS);
    };
    const timer = setTimeout(() => {
      timedOut = true;
      stop();
    }, limits.timeoutMs);
    limits.signal.addEventListener('abort', stop, { once: true });
    const settle = () => {
      clearTimeout(timer);
      clearTimeout(killer);
      limits.signal.removeEventListener('abort', stop);
    };
    child.stdout.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      if (overflow) return;
      if (bytes > MAX_STDOUT_BYTES) {
        overflow = true;
        stop();
      } else if (onStdout) onStdout(chunk);
      else stdout.push(chunk);
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (text: string) => {
      stderr = (stderr + text).slice(-MAX_STDERR_CHARS);
    });
    // `on`: a failed kill is an 'error' too, after the spawn's; the first one settles.
    child.on('error', (error) => {
      settle();
      reject(error);
    });
    child.once('close', (exitCode, signal) => {
      settle();
      const out = Buffer.concat(stdout).toString('utf8');
      resolve({ stdout: out, stderr, exitCode, signal, timedOut, overflow });
    });
  });
}

/** 1500 → "1.5 s", 120000 → "120 s", 1 → "1 ms". */
export function formatMs(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${Number((ms / 1000).toFixed(1))} s`;
}
