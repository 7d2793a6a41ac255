import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { execa } from 'execa';
import { HdError } from '../../contract/errors.ts';

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
 * Runs an external tool (poppler, tesseract, ffmpeg) with bounds: address space via
 * prlimit where it exists (these are native programs, for which RLIMIT_AS is a sound
 * limit), a wall-clock timeout, and the job's AbortSignal.
 */
export async function runTool(
  name: string,
  args: readonly string[],
  limits: ToolLimits,
  env: Record<string, string> = {},
): Promise<{ stdout: string; stderr: string }> {
  const tool = findTool(name);
  if (!tool) {
    throw new HdError(
      'INTERNAL_ERROR',
      `${name} is not installed on this runner (apt-get install ${TOOL_PACKAGES[name] ?? name}), needed for ${limits.what}`,
    );
  }
  const prlimit = findTool('prlimit');
  const [file, argv] = prlimit
    ? [prlimit, [`--as=${limits.maxMemoryMb * 1024 * 1024}`, '--', tool, ...args]]
    : [tool, [...args]];
  const result = await execa(file, argv, {
    cancelSignal: limits.signal,
    timeout: limits.timeoutMs,
    forceKillAfterDelay: 1000,
    extendEnv: false,
    env: { PATH: process.env.PATH ?? '', ...env },
    stdin: 'ignore',
    maxBuffer: 64 * 1024 * 1024,
    reject: false,
  });
  if (limits.signal.aborted) throw limits.signal.reason;
  if (result.timedOut) {
    throw new HdError(
      'PROCESSING_TIMEOUT',
      `${limits.what} took longer than its limit of ${formatMs(limits.timeoutMs)}`,
      { retryable: false, cause: new Error(`${name} ran past ${limits.timeoutMs} ms`) },
    );
  }
  if (result.exitCode !== 0) {
    const stderr = String(result.stderr).trim();
    const exit = result.signal ?? `exit ${result.exitCode}`;
    if (/bad_alloc|cannot allocate|out of memory/i.test(stderr)) {
      throw new HdError(
        'OOM_KILLED',
        `${limits.what} needed more than its limit of ${limits.maxMemoryMb} MiB of memory`,
        { retryable: false, cause: new Error(`${name} ${exit}: ${stderr.slice(-1000)}`) },
      );
    }
    throw new ToolFailure(`${limits.what} failed`, name, exit, stderr);
  }
  return { stdout: String(result.stdout), stderr: String(result.stderr) };
}

/** 1500 → "1.5 s", 120000 → "120 s", 1 → "1 ms". */
export function formatMs(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${Number((ms / 1000).toFixed(1))} s`;
}
