import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { extname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { HdError } from '../../contract/errors.ts';
import { damagedPdf, passwordProtected } from './pdf-errors.ts';
import type { PdfChildMessage } from './pdf-child.ts';
import { formatMs } from './tools.ts';

export interface PdfTextOptions {
  /** Shown in messages (the file's name). */
  name: string;
  maxPages: number;
  timeoutMs: number;
  maxMemoryMb: number;
  signal: AbortSignal;
  /** Only these pages (1-based, increasing); default all. */
  pages?: readonly number[];
  /** The pages of a pure XFA form's layout instead (none where the file is no such form). */
  xfa?: boolean;
  /** Called once the page count is known, then for each page in order. */
  onPages?: (total: number) => void;
  onPage?: (page: { num: number; text: string }, total: number) => void | Promise<void>;
}

export interface PdfTextResult {
  total: number;
  /** Peak resident memory of the parser process, in KiB. */
  peakRssKb: number;
}

// Next to this module's code, with its extension: pdf-child.ts from source, .js once built,
// pdf-child.mjs beside the runner's bundle (dist/cli/runner.mjs, scripts/bundle-runner.ts).
const CHILD = fileURLToPath(
  new URL(`./pdf-child${extname(fileURLToPath(import.meta.url))}`, import.meta.url),
);
const WATCH_INTERVAL_MS = 50;
const COMPILE_CACHE = join(tmpdir(), 'hd-runner-compile-cache');

/**
 * The text layer of a PDF, page by page, from pdf-parse running in a child process:
 * a hostile file (a decompression bomb, a parser loop) costs that process, never the
 * runner. Bounds: V8 heap (--max-old-space-size), resident memory (a watchdog reading
 * /proc, because pdf.js keeps decoded streams outside the heap), wall-clock time.
 */
export async function extractPdfText(
  path: string,
  options: PdfTextOptions,
): Promise<PdfTextResult> {
  const { name, maxMemoryMb } = options;
  const child = execa(
    process.execPath,
    [
      `--max-old-space-size=${maxMemoryMb}`,
      CHILD,
      ...(options.xfa ? ['--xfa'] : []),
      path,
      String(options.maxPages),
      ...(options.pages ? [options.pages.join(',')] : []),
    ],
    {
      cancelSignal: options.signal,
      timeout: options.timeoutMs,
      forceKillAfterDelay: 1000,
      extendEnv: false,
      // The compile cache halves the child's start-up (pdf.js is megabytes of JS).
      env: { PATH: process.env.PATH ?? '', NODE_COMPILE_CACHE: COMPILE_CACHE },
      stdin: 'ignore',
      buffer: { stdout: false, stderr: true },
      maxBuffer: { stderr: 64 * 1024 },
      reject: false,
    },
  );
  let peakRssKb = 0;
  let overMemory = false;
  const watchdog = setInterval(() => {
    void readRssKb(child.pid).then((kb) => {
      peakRssKb = Math.max(peakRssKb, kb);
      if (kb > maxMemoryMb * 1024 && !overMemory) {
        overMemory = true;
        child.kill('SIGKILL');
      }
    });
  }, WATCH_INTERVAL_MS);

  let total = -1;
  let seen = 0;
  let failure: Extract<PdfChildMessage, { type: 'error' }> | undefined;
  let done: Extract<PdfChildMessage, { type: 'done' }> | undefined;
  let loopError: unknown;
  try {
    for await (const line of createInterface({ input: child.stdout! })) {
      const message = JSON.parse(line) as PdfChildMessage;
      if (message.type === 'pages') {
        total = message.total;
        options.onPages?.(total);
      } else if (message.type === 'page') {
        seen += 1;
        await options.onPage?.({ num: message.num, text: message.text }, total);
      } else if (message.type === 'error') failure = message;
      else done = message;
    }
  } catch (error) {
    loopError = error;
    child.kill('SIGKILL');
  }
  const result = await child;
  clearInterval(watchdog);
  if (options.signal.aborted) throw options.signal.reason;
  if (overMemory) {
    throw new HdError(
      'OOM_KILLED',
      `${name}: reading the PDF needed more than its limit of ${maxMemoryMb} MiB of memory; the file may be a decompression bomb`,
      { retryable: false },
    );
  }
  if (result.timedOut) {
    throw new HdError(
      'PROCESSING_TIMEOUT',
      `${name}: reading the PDF took longer than its limit of ${formatMs(options.timeoutMs)}`,
      { retryable: false },
    );
  }
  if (loopError !== undefined) throw loopError;
  if (failure) throw childFailure(name, failure, options.maxPages);
  if (/heap out of memory/i.test(String(result.stderr))) {
    throw new HdError(
      'OOM_KILLED',
      `${name}: reading the PDF needed more than its limit of ${maxMemoryMb} MiB of memory`,
      { retryable: false },
    );
  }
  const expected = options.pages ? options.pages.filter((n) => n <= total).length : total;
  if (result.exitCode !== 0 || !done || seen !== expected) {
    throw new HdError(
      'CRASHED',
      `${name}: the PDF parser stopped after ${seen} of ${total} pages`,
      {
        cause: new Error(
          `pdf-parse ${result.signal ?? `exit ${result.exitCode}`}: ${String(result.stderr).slice(-1000)}`,
        ),
      },
    );
  }
  return { total, peakRssKb: Math.max(peakRssKb, done.max_rss_kb) };
}

function childFailure(
  name: string,
  failure: Extract<PdfChildMessage, { type: 'error' }>,
  maxPages: number,
): HdError {
  // pdf.js's own words go to the log (the cause), one sentence to the user.
  const cause = new Error(`pdf-parse: ${failure.reason}: ${failure.message}`);
  switch (failure.reason) {
    case 'password':
      return passwordProtected(name, cause);
    case 'too_many_pages':
      return new HdError('INVALID_INPUT', `${name}: ${failure.message}; split the document`, {
        cause,
        details: { max_pages: maxPages },
      });
    case 'invalid':
    case 'other':
      return damagedPdf(name, cause);
  }
}

/** Resident memory of a process in KiB (Linux); 0 where /proc is not there. */
async function readRssKb(pid: number | undefined): Promise<number> {
  if (pid === undefined) return 0;
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  } catch {
    return 0;
  }
}
