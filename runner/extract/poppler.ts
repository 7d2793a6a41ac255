import { StringDecoder } from 'node:string_decoder';
import { HdError } from '../../contract/errors.ts';
import {
  findTool,
  formatMs,
  runTool,
  ToolFailure,
  type ToolLimits,
  type ToolRun,
} from './tools.ts';

/** What pdfinfo says about a PDF: its page count and the size of each page, in points. */
export interface PdfInfo {
  pages: number;
  sizes: Map<number, { width: number; height: number }>;
  /** The file holds an XFA form (its pages may be only a placeholder: pdf-xfa.ts). */
  xfa: boolean;
}

/** poppler refused the file for want of a password (the document itself is encrypted). */
export class PdfPasswordError extends Error {}

/**
 * Page count and page sizes (`pdfinfo -f 1 -l LAST`). A file encrypted with a user
 * password fails here; one whose only encrypted part is an attachment (encrypted
 * embedded files) opens like any other.
 */
export async function pdfInfo(path: string, lastPage: number, limits: ToolLimits) {
  const { stdout } = await poppler('pdfinfo', ['-f', '1', '-l', String(lastPage), path], limits);
  const pages = Number(/^Pages:\s+(\d+)/m.exec(stdout)?.[1] ?? NaN);
  if (!Number.isInteger(pages)) throw new Error(`pdfinfo printed no page count: ${stdout}`);
  const sizes = new Map<number, { width: number; height: number }>();
  for (const m of stdout.matchAll(/^Page\s+(\d+) size:\s+([\d.]+) x ([\d.]+) pts/gm)) {
    sizes.set(Number(m[1]), { width: Number(m[2]), height: Number(m[3]) });
  }
  return { pages, sizes, xfa: /^Form:\s+XFA\s*$/m.test(stdout) } satisfies PdfInfo;
}

/**
 * Fewest pages worth a pdftotext process of their own. Each one opens the file anew and
 * costs ~30 ms of CPU before its first page, as much as ~80 pages of text (bench/RESULTS.md,
 * 2026-12-01 late evening): a shorter range gains little wall time even with an idle CPU,
 * and where every CPU is busy the second run's start is spent for nothing.
 */
export const MIN_PAGES_PER_PROCESS = 150;

export interface ReadPagesOptions {
  /** A page whose text takes longer is skipped and counted as failed (pdfToText). */
  pageTimeoutMs: number;
  /** Refuses a page count (throws): the text runs are stopped. */
  check: (pages: number) => void;
  /** pdftotext runs at once at most: the job's CPUs. */
  processes?: number;
  /**
   * Each page's raw text as it comes, in no particular order across ranges (a page may
   * come that the result leaves out: past the last one, or read again alone after a stall).
   */
  onPage?: (num: number, text: string) => void;
}

/**
 * pdfinfo and the text layer at once: pdftotext starts on pages 1..maxPages while pdfinfo
 * counts them (one process start less to wait for, 10-40 ms a file, issue 13), and is
 * stopped when pdfinfo fails, finds no pages, or `check` refuses the count. A long PDF is
 * read by up to `processes` pdftotext runs at once (the job's CPUs: pdftotext uses one),
 * each over its own range of pages: once pdfinfo has counted them, the first run goes on
 * to its share of what it has not yet read and is stopped there, and the rest of the
 * pages are split among the others, at least MIN_PAGES_PER_PROCESS each. The pages come
 * back in order, the same text as one run's.
 */
export async function readPages(
  path: string,
  maxPages: number,
  limits: ToolLimits,
  { pageTimeoutMs, check, processes = 1, onPage }: ReadPagesOptions,
): Promise<{ info: PdfInfo } & TextLayer> {
  const started = performance.now();
  const stop = new AbortController();
  const signal = AbortSignal.any([limits.signal, stop.signal]);
  let last = maxPages; // until pdfinfo says
  let read = 0; // pages the first run has printed so far
  const first = pdfToText(path, () => last, { ...limits, signal }, pageTimeoutMs, {
    onPage: (num, text) => {
      read = Math.max(read, num);
      onPage?.(num, text);
    },
  });
  // Settled below, whichever comes first; never an unhandled rejection meanwhile.
  first.catch(() => undefined);
  let info: PdfInfo;
  try {
    info = await pdfInfo(path, maxPages, limits);
    check(info.pages);
  } catch (error) {
    stop.abort();
    await first.catch(() => undefined);
    throw error;
  }
  const pages = info.pages;
  if (pages === 0) {
    stop.abort();
    await first.catch(() => undefined);
    return { info, texts: [], failed: [] };
  }
  const ranges = splitPages(Math.min(read, pages), pages, processes);
  last = ranges[0]![1];
  const left = { ...limits, signal, timeoutMs: limits.timeoutMs - (performance.now() - started) };
  const runs = [
    first,
    ...ranges
      .slice(1)
      .map(([from, to]) => pdfToText(path, () => to, left, pageTimeoutMs, { first: from, onPage })),
  ];
  // The first failure stops the other runs and is the one reported.
  let failure: { error: unknown } | undefined;
  const layers = await Promise.all(
    runs.map((run) =>
      run.catch((error: unknown) => {
        failure ??= { error };
        stop.abort();
        return undefined;
      }),
    ),
  );
  if (failure) throw failure.error;
  return {
    info,
    // Each run's own range: the first may have ended before pdfinfo counted the pages.
    texts: layers.flatMap((layer, i) => layer!.texts.slice(0, ranges[i]![1] - ranges[i]![0] + 1)),
    failed: layers.flatMap((layer, i) =>
      layer!.failed.filter((p) => p >= ranges[i]![0] && p <= ranges[i]![1]),
    ),
  };
}

/**
 * [first, last] page ranges over pages 1..pages for up to `processes` pdftotext runs, the
 * first of which has read pages 1..read already: what is left is shared out evenly, each
 * run at least MIN_PAGES_PER_PROCESS pages, the first run's share starting after `read`.
 */
export function splitPages(read: number, pages: number, processes: number): [number, number][] {
  const left = pages - read;
  const runs = Math.max(1, Math.min(processes, Math.floor(left / MIN_PAGES_PER_PROCESS)));
  const ranges: [number, number][] = [];
  for (let i = 0, from = 1; i < runs; i += 1) {
    const to = read + Math.round((left * (i + 1)) / runs);
    ranges.push([from, to]);
    from = to + 1;
  }
  return ranges;
}

/** The text of each page, and the pages skipped because poppler ran past the page limit. */
export interface TextLayer {
  texts: string[];
  /** 1-based, increasing. */
  failed: number[];
}

/**
 * The text layer of pages first..lastPage() (`pdftotext`, UTF-8, reading order as poppler
 * finds it, right-to-left scripts in logical order), in one pass split on the form feed
 * poppler ends every page with. Form fields are read from their appearance, so filled-in
 * values are part of the text. `lastPage()` may drop while the pass runs: it is stopped
 * once it has printed that page.
 *
 * A page that makes poppler hang (nested forms drawn 10^9 times, say) is skipped: when no
 * page has come out for `pageTimeoutMs`, the pass is stopped, the page it was on is read
 * alone under that limit and counted as failed if it runs past it, and a new pass goes on
 * after it. pdftotext writes in 4 KiB blocks, so the first stall may not name the page
 * exactly; from then on its output is unbuffered, and a stall does. `limits.timeoutMs`
 * bounds all passes together.
 */
export async function pdfToText(
  path: string,
  lastPage: () => number,
  limits: ToolLimits,
  pageTimeoutMs: number,
  {
    first = 1,
    onPage,
  }: {
    first?: number;
    /** Each page's raw text as it comes (a page past lastPage() may come too). */
    onPage?: (num: number, text: string) => void;
  } = {},
): Promise<TextLayer> {
  const deadline = performance.now() + limits.timeoutMs;
  const texts: string[] = [];
  const failed: number[] = [];
  const pass = (from: number, last: () => number, exact: boolean) => {
    const left = deadline - performance.now();
    if (left <= 0) throw textTimeout(limits);
    const options = { ...limits, timeoutMs: left };
    return textPass(path, from, last, options, pageTimeoutMs, exact, onPage);
  };
  let next = first;
  let exact = false;
  try {
    while (next <= lastPage()) {
      const read = await pass(next, lastPage, exact);
      read.texts.forEach((text, i) => (texts[next - first + i] = text));
      next += read.texts.length;
      if (!read.stalled || next > lastPage()) break;
      // `next` is the page the pass was on or, its output buffered, one it had not reached.
      let hung = true;
      if (!exact) {
        const alone = await pass(next, () => next, true);
        hung = alone.stalled;
        if (!hung) texts[next - first] = alone.texts[0] ?? '';
        exact = findTool('stdbuf') !== undefined;
      }
      if (hung) failed.push(next);
      next += 1;
    }
  } catch (error) {
    // A pass is given what is left of the limit; the message names the whole limit.
    if (error instanceof HdError && error.code === 'PROCESSING_TIMEOUT') throw textTimeout(limits);
    throw error;
  }
  const count = Math.max(0, lastPage() - first + 1);
  return { texts: Array.from({ length: count }, (_, i) => texts[i] ?? ''), failed };
}

function textTimeout(limits: ToolLimits): HdError {
  return new HdError(
    'PROCESSING_TIMEOUT',
    `${limits.what} took longer than its limit of ${formatMs(limits.timeoutMs)}`,
    { retryable: false },
  );
}

/**
 * One pdftotext run over pages first..last() (last() as it is at the start, for its
 * arguments; stopped once it has printed last() if that drops); stops when no page comes
 * out for the page limit.
 */
async function textPass(
  path: string,
  first: number,
  last: () => number,
  limits: ToolLimits,
  pageTimeoutMs: number,
  exact: boolean,
  onPage?: (num: number, text: string) => void,
): Promise<{ texts: string[]; stalled: boolean }> {
  const stall = new AbortController();
  const enough = new AbortController();
  const timer = setTimeout(() => stall.abort(), pageTimeoutMs);
  const decoder = new StringDecoder('utf8');
  const texts: string[] = [];
  let page: string[] = [];
  const wanted = () => last() - first + 1;
  const onStdout = (chunk: Buffer) => {
    if (enough.signal.aborted) return;
    const piece = decoder.write(chunk);
    let from = 0;
    for (let at = piece.indexOf('\f'); at !== -1; at = piece.indexOf('\f', from)) {
      page.push(piece.slice(from, at));
      const text = page.join('');
      texts.push(text);
      onPage?.(first + texts.length - 1, text);
      page = [];
      from = at + 1;
    }
    if (from < piece.length) page.push(piece.slice(from));
    if (from > 0) {
      timer.refresh();
      if (texts.length >= wanted()) enough.abort();
    }
  };
  // -q: a damaged file can make poppler write megabytes of warnings; pdfinfo ran first
  // and said what was wrong with it.
  const args = ['-q', '-enc', 'UTF-8', '-f', String(first), '-l', String(last()), path, '-'];
  try {
    const signal = AbortSignal.any([limits.signal, stall.signal, enough.signal]);
    await poppler('pdftotext', args, { ...limits, signal }, { onStdout, unbuffered: exact });
  } catch (error) {
    if (limits.signal.aborted) throw error;
    if (!enough.signal.aborted) {
      if (!stall.signal.aborted) throw error;
      return { texts, stalled: true };
    }
  } finally {
    clearTimeout(timer);
  }
  // After the last page's form feed comes nothing; a missing page stays empty.
  return {
    texts: Array.from({ length: Math.max(0, wanted()) }, (_, i) => texts[i] ?? ''),
    stalled: false,
  };
}

/** Smallest image that can carry text worth OCR, in pixels per side (logos, rules are less). */
const MIN_IMAGE_SIDE = 64;

/** The images a page shows that are big enough to hold text. */
export interface PageImages {
  /** The highest resolution among them, in pixels per inch as drawn (x or y). */
  ppi: number;
  /** The page area they cover together, in square inches (overlaps counted twice). */
  squareInches: number;
}

/**
 * The pages among `pages` that show at least one image big enough to hold text, with
 * those images' resolution and area. One `pdfimages -list` over their span, split around
 * the `skip` pages (those poppler hung on).
 */
export async function imagesOnPages(
  path: string,
  pages: readonly number[],
  limits: ToolLimits,
  skip: ReadonlySet<number> = new Set(),
): Promise<Map<number, PageImages>> {
  const found = new Map<number, PageImages>();
  for (const [first, last] of spansAround(
    [...pages].sort((a, b) => a - b),
    skip,
  )) {
    const { stdout } = await poppler(
      'pdfimages',
      ['-q', '-list', '-f', String(first), '-l', String(last), path],
      limits,
    );
    // A header line (page num type width height … x-ppi y-ppi size ratio), a rule, rows.
    const [header = '', , ...rows] = stdout.split('\n');
    const column = (name: string) => header.trim().split(/\s+/).indexOf(name);
    const [xPpiAt, yPpiAt] = [column('x-ppi'), column('y-ppi')];
    for (const row of rows) {
      const cells = row.trim().split(/\s+/);
      const [page, width, height, xPpi, yPpi] = [0, 3, 4, xPpiAt, yPpiAt].map((at) =>
        Number(cells[at]),
      );
      // A soft mask or mask is listed besides the image it belongs to: counted once.
      if (!page || cells[2] === 'smask' || cells[2] === 'mask') continue;
      if (!(width! >= MIN_IMAGE_SIDE && height! >= MIN_IMAGE_SIDE)) continue;
      const seen = found.get(page) ?? { ppi: 0, squareInches: 0 };
      if (xPpi! > 0 && yPpi! > 0) {
        seen.ppi = Math.max(seen.ppi, xPpi!, yPpi!);
        seen.squareInches += (width! / xPpi!) * (height! / yPpi!);
      }
      found.set(page, seen);
    }
  }
  const wanted = new Set(pages);
  return new Map([...found].filter(([page]) => wanted.has(page)));
}

/** [first, last] spans covering the sorted `pages`, none of which holds a page of `skip`. */
function spansAround(pages: readonly number[], skip: ReadonlySet<number>): [number, number][] {
  const spans: [number, number][] = [];
  for (const page of pages) {
    const span = spans.at(-1);
    let clear = span !== undefined;
    for (let p = (span?.[1] ?? page) + 1; clear && p < page; p += 1) clear = !skip.has(p);
    if (span && clear) span[1] = page;
    else spans.push([page, page]);
  }
  return spans;
}

async function poppler(tool: string, args: string[], limits: ToolLimits, options?: ToolRun) {
  try {
    return await runTool(tool, args, limits, options);
  } catch (error) {
    if (error instanceof ToolFailure && /Incorrect password/i.test(error.stderr)) {
      throw new PdfPasswordError(error.stderr, { cause: error });
    }
    throw error;
  }
}
