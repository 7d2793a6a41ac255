import { open } from 'node:fs/promises';
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
 * A part of a file's text layer read by a pdftotext of its own holds at least this many
 * pages: each run pays 20-30 ms of CPU to start and load the file before its first page,
 * which a part must earn back, and a 200-page file on 2 CPUs gained nothing in wall time
 * from a split (bench/RESULTS.md, issue 13): files of about 220 pages and more are split.
 */
export const MIN_PAGES_PER_PART = 100;

/**
 * Files up to this size whose bytes name no XFA form are read without pdfinfo beside
 * pdftotext on a job of several CPUs: both processes load poppler and the file at once,
 * which on a 2-CPU VM cost pdftotext 15-20 ms of a 200-page file's ~110 (bench/RESULTS.md,
 * issue 13), and such a file is seldom long enough for a split to pay. pdftotext's own
 * output counts the pages. Bigger ones are counted first, to be split.
 */
export const READ_WITHOUT_PDFINFO_BYTES = 1024 * 1024;
/** On one CPU nothing is split: up to this size (the bytes are read to be checked). */
export const READ_WITHOUT_PDFINFO_ONE_CPU_BYTES = 16 * 1024 * 1024;

/** The pages of a file, as readPages found them; `sizes` only where pdfinfo ran first. */
export type PageCount = Omit<PdfInfo, 'sizes'> & { sizes?: PdfInfo['sizes'] };

/**
 * The text layer of pages 1..maxPages, and their count. pdftotext starts at once. For a
 * file that cannot hold an XFA form (its bytes name none, and no object stream could hide
 * one), whose page tree counts fewer than maxPages pages and that is small enough
 * (READ_WITHOUT_PDFINFO_BYTES; on one CPU, where nothing is split, ..._ONE_CPU_BYTES:
 * plainSmallPdf), that is all: the pages are those it printed, and pdfinfo runs only where
 * pdftotext cannot say (it stopped at maxPages, printed none, failed, or stalled on a
 * page: pdfinfo then says what is wrong, or how many pages there are).
 *
 * Otherwise pdfinfo counts the pages while pdftotext runs (one process start less to wait
 * for, 10-40 ms a file, issue 13), and pdftotext is stopped when pdfinfo fails, finds no
 * pages, or `check` refuses the count. With `parts` > 1 (the job's CPUs), the pages that
 * first run has not printed by then are shared out: it goes on to the end of its share
 * and is stopped there, and a pdftotext of its own reads each other share, all at once.
 * Pages come out the same either way (poppler reads each page on its own);
 * `limits.timeoutMs` bounds them all together. `withoutPdfinfo: false` always counts first.
 */
export async function readPages(
  path: string,
  maxPages: number,
  limits: ToolLimits,
  pageTimeoutMs: number,
  check: (pages: number) => void,
  parts = 1,
  withoutPdfinfo = true,
): Promise<{ info: PageCount } & TextLayer> {
  const stop = new AbortController();
  const signal = AbortSignal.any([limits.signal, stop.signal]);
  const deadline = performance.now() + limits.timeoutMs;
  let last = maxPages; // until pdfinfo says
  let counted: Promise<PageCount> | undefined;
  /** pdfinfo's count, once; it bounds the passes from then on. No sizes: OCR reads them. */
  const count = () =>
    (counted ??= pdfInfo(path, 1, limits).then(({ pages, xfa }) => {
      check(pages);
      last = Math.min(last, pages);
      return { pages, xfa };
    }));
  const watch: TextWatch = { printed: 0 };
  let firstSettled = false;
  // Read while pdftotext starts.
  const plainCheck = withoutPdfinfo
    ? plainSmallPdf(
        path,
        maxPages,
        parts > 1 ? READ_WITHOUT_PDFINFO_BYTES : READ_WITHOUT_PDFINFO_ONE_CPU_BYTES,
      )
    : Promise.resolve(false);
  const first = pdfToText(path, () => last, { ...limits, signal }, pageTimeoutMs, {
    watch,
    deadline,
    // A stalled page may be the last: the passes after it must know where the file ends.
    beforeStallRead: async () => {
      if (await plainCheck) await count();
    },
  });
  // Settled below, whichever comes first; never an unhandled rejection meanwhile.
  first.then(
    () => (firstSettled = true),
    () => (firstSettled = true),
  );
  if (await plainCheck) {
    let layer: TextLayer & { pages: number };
    try {
      layer = await first;
    } catch (error) {
      // pdftotext is quiet (-q): pdfinfo's refusal says what is wrong (a password, damage).
      if (!(error instanceof ToolFailure)) throw error;
      const info = await count();
      if (info.pages === 0) return { info, texts: [], failed: [] };
      throw error;
    }
    // Stopped at the limit, or nothing printed: only pdfinfo knows how many pages there are.
    if (layer.pages >= maxPages || layer.pages === 0) {
      const info = await count();
      return { info, texts: pad(layer.texts, info.pages), failed: layer.failed };
    }
    check(layer.pages);
    return { info: { pages: layer.pages, xfa: false }, texts: layer.texts, failed: layer.failed };
  }
  let info: PdfInfo;
  try {
    info = await pdfInfo(path, maxPages, limits);
    check(info.pages);
    last = info.pages;
  } catch (error) {
    stop.abort();
    await first.catch(() => undefined);
    throw error;
  }
  if (info.pages === 0) {
    stop.abort();
    await first.catch(() => undefined);
    return { info, texts: [], failed: [] };
  }
  // A first run already ended (every page read, or failed) is not split.
  const [span, ...others] = pageSpans(info.pages, firstSettled ? 1 : parts, watch.printed);
  last = span![1];
  const reads = [
    // It may have ended before pdfinfo said where its share ends. A part that printed
    // fewer pages than its span keeps its place: the pages it lacks stay empty.
    first.then(({ texts, failed }) => ({
      texts: pad(texts, last),
      failed: failed.filter((page) => page <= last),
    })),
    ...others.map(([from, to]) =>
      pdfToText(path, () => to, { ...limits, signal }, pageTimeoutMs, {
        first: from,
        deadline,
      }).then(({ texts, failed }) => ({ texts: pad(texts, to - from + 1), failed })),
    ),
  ];
  try {
    const layers = await Promise.all(reads);
    return {
      info,
      texts: layers.flatMap((layer) => layer.texts),
      failed: layers.flatMap((layer) => layer.failed),
    };
  } catch (error) {
    // One part failed (a limit, a refusal): the others stop, the first failure stands.
    stop.abort();
    await Promise.allSettled(reads);
    throw error;
  }
}

/**
 * Pages 1..pages in up to `parts` spans, in order: the first run has printed pages
 * 1..printed and goes on in the first span; the pages after are shared out evenly, each
 * share at least MIN_PAGES_PER_PART of them.
 */
export function pageSpans(pages: number, parts: number, printed = 0): [number, number][] {
  const done = Math.min(printed, pages);
  const left = pages - done;
  const count = Math.max(1, Math.min(parts, Math.floor(left / MIN_PAGES_PER_PART)));
  return Array.from({ length: count }, (_, i) => [
    i === 0 ? 1 : done + Math.floor((left * i) / count) + 1,
    done + Math.floor((left * (i + 1)) / count),
  ]);
}

/** `texts` cut or filled with empty pages to `pages` of them. */
function pad(texts: readonly string[], pages: number): string[] {
  return Array.from({ length: pages }, (_, i) => texts[i] ?? '');
}

/**
 * Whether a PDF is small (`maxBytes`), cannot be an XFA form and says it
 * has fewer than `maxPages` pages: its bytes hold no object stream (`/ObjStm`: compressed
 * objects, where an AcroForm and its XFA key would not show), no name that reads `/XFA`
 * (spelled out or with `#xx` escapes), and a page tree `/Count` (the largest, its root's)
 * under the limit, so that a file of more pages is refused by pdfinfo's count at once, not
 * after pdftotext has read up to the limit. A file that cannot be read is not.
 */
async function plainSmallPdf(path: string, maxPages: number, maxBytes: number): Promise<boolean> {
  const file = await open(path, 'r').catch(() => undefined);
  if (!file) return false;
  try {
    if ((await file.stat()).size > maxBytes) return false;
    const bytes = await file.readFile();
    if (bytes.includes('/ObjStm') || bytes.includes('/XFA') || hasEscapedXfaName(bytes))
      return false;
    const pages = largestCount(bytes);
    return pages !== undefined && pages < maxPages;
  } catch {
    return false;
  } finally {
    await file.close().catch(() => undefined);
  }
}

/** Whether a name written with `#xx` escapes reads `/XFA` (`/X#46A`, `/#58#46#41`). */
function hasEscapedXfaName(bytes: Buffer): boolean {
  for (let at = bytes.indexOf('#'); at !== -1; at = bytes.indexOf('#', at + 1)) {
    // The longest spelling, `/#58#46#41`, starts 9 bytes before its last '#'.
    const from = bytes.lastIndexOf('/', at);
    if (from === -1 || at - from > 9) continue;
    const token = /^\/[^\s/[\]<>(){}%]*/.exec(bytes.toString('latin1', from, from + 12))?.[0];
    if (
      token?.replace(/#([0-9a-f]{2})/gi, (_, hex: string) =>
        String.fromCharCode(parseInt(hex, 16)),
      ) === '/XFA'
    )
      return true;
  }
  return false;
}

/** The largest `/Count n` in the bytes (a page tree's root holds its pages' count). */
function largestCount(bytes: Buffer): number | undefined {
  let largest: number | undefined;
  for (let at = bytes.indexOf('/Count'); at !== -1; at = bytes.indexOf('/Count', at + 1)) {
    const count = /^\/Count\s*(\d+)/.exec(bytes.toString('latin1', at, at + 24))?.[1];
    if (count !== undefined) largest = Math.max(largest ?? 0, Number(count));
  }
  return largest;
}

/** A running text layer's progress, shared with its caller (readPages). */
export interface TextWatch {
  /** The last page printed so far. */
  printed: number;
}

/** The text of each page, and the pages skipped because poppler ran past the page limit. */
export interface TextLayer {
  texts: string[];
  /** 1-based, increasing. */
  failed: number[];
}

/**
 * The text layer of pages first..lastPage() (`pdftotext`, UTF-8, reading order as poppler finds
 * it, right-to-left scripts in logical order), in one pass split on the form feed poppler
 * ends every page with. Form fields are read from their appearance, so filled-in values
 * are part of the text.
 *
 * A page that makes poppler hang (nested forms drawn 10^9 times, say) is skipped: when no
 * page has come out for `pageTimeoutMs`, the pass is stopped, the page it was on is read
 * alone under that limit and counted as failed if it runs past it, and a new pass goes on
 * after it. pdftotext writes in 4 KiB blocks, so the first stall may not name the page
 * exactly; from then on its output is unbuffered, and a stall does. `limits.timeoutMs`
 * bounds all passes together. `lastPage()` may fall while the first pass runs (readPages):
 * the pass stops once it has printed that page.
 */
export async function pdfToText(
  path: string,
  lastPage: () => number,
  limits: ToolLimits,
  pageTimeoutMs: number,
  options: {
    /** The first page to read (default 1). */
    first?: number;
    watch?: TextWatch;
    /** When `limits.timeoutMs` runs out (default: that long from now), shared by parts. */
    deadline?: number;
    /** Called when a pass stalls, before the page is read alone (readPages counts then). */
    beforeStallRead?: () => Promise<void>;
  } = {},
): Promise<TextLayer & { pages: number }> {
  const { first = 1, watch } = options;
  const deadline = options.deadline ?? performance.now() + limits.timeoutMs;
  const texts: string[] = [];
  const failed: number[] = [];
  const pass = (from: number, last: () => number, exact: boolean) => {
    const left = deadline - performance.now();
    if (left <= 0) throw textTimeout(limits);
    const passLimits = { ...limits, timeoutMs: left };
    return textPass(path, from, last, passLimits, pageTimeoutMs, exact, watch);
  };
  let next = first;
  let exact = false;
  /** The file's last page, where a pass ended before lastPage(). */
  let end: number | undefined;
  try {
    while (next <= lastPage()) {
      const read = await pass(next, lastPage, exact);
      read.texts.forEach((text, i) => (texts[next - first + i] = text));
      next += read.texts.length;
      if (read.ended) end = next - 1;
      // Stalled past its last page (which fell while it ran): nothing more of this span.
      if (!read.stalled || next > lastPage()) break;
      await options.beforeStallRead?.();
      if (next > lastPage()) break;
      // `next` is the page the pass was on or, its output buffered, one it had not reached.
      let hung = true;
      if (!exact) {
        const page = next;
        const alone = await pass(page, () => page, true);
        hung = alone.stalled;
        if (!hung) texts[page - first] = alone.texts[0] ?? '';
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
  const pages = Math.min(end ?? lastPage(), lastPage());
  return {
    texts: pad(texts, Math.max(0, pages - first + 1)),
    failed,
    pages,
  };
}

function textTimeout(limits: ToolLimits): HdError {
  return new HdError(
    'PROCESSING_TIMEOUT',
    `${limits.what} took longer than its limit of ${formatMs(limits.timeoutMs)}`,
    { retryable: false },
  );
}

/**
 * One pdftotext run over pages first..last(); stops when no page comes out for the page
 * limit, or once page last() is out (last() may fall while it runs).
 */
async function textPass(
  path: string,
  first: number,
  last: () => number,
  limits: ToolLimits,
  pageTimeoutMs: number,
  exact: boolean,
  watch?: TextWatch,
): Promise<{ texts: string[]; stalled: boolean; ended?: boolean }> {
  const stall = new AbortController();
  const enough = new AbortController();
  const wanted = () => last() - first + 1;

  const timer = setTimeout(() => stall.abort(), pageTimeoutMs);
  const decoder = new StringDecoder('utf8');
  const texts: string[] = [];
  let page: string[] = [];
  const onStdout = (chunk: Buffer) => {
    const piece = decoder.write(chunk);
    let from = 0;
    for (let at = piece.indexOf('\f'); at !== -1; at = piece.indexOf('\f', from)) {
      page.push(piece.slice(from, at));
      texts.push(page.join(''));
      page = [];
      from = at + 1;
    }
    if (from < piece.length) page.push(piece.slice(from));
    if (from > 0) {
      timer.refresh();
      if (watch) watch.printed = first - 1 + texts.length;
    }
    // lastPage() fell while it ran (readPages): stopped once that page is out.
    if (texts.length >= wanted()) enough.abort();
  };
  // -q: a damaged file can make poppler write megabytes of warnings; pdfinfo says what
  // is wrong with a file pdftotext fails on (readPages).
  const args = ['-q', '-enc', 'UTF-8', '-f', String(first), '-l', String(last()), path, '-'];
  try {
    const signal = AbortSignal.any([limits.signal, stall.signal, enough.signal]);
    await poppler('pdftotext', args, { ...limits, signal }, { onStdout, unbuffered: exact });
  } catch (error) {
    if (limits.signal.aborted || !(stall.signal.aborted || enough.signal.aborted)) throw error;
    if (!enough.signal.aborted) return { texts, stalled: true };
  } finally {
    clearTimeout(timer);
  }
  // Ended on its own before page last(): the file has no more pages (every page ends with
  // a form feed).
  if (!enough.signal.aborted && texts.length < wanted())
    return { texts, stalled: false, ended: true };
  return { texts: texts.slice(0, wanted()), stalled: false };
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
