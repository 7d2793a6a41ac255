import { HdError } from '../../contract/errors.ts';
import type { PageStart } from './chunker.ts';
import { ocrPageDpi, ocrPdfPage, type ScriptSkip, scriptSkipError } from './ocr.ts';
import { judgePageText } from './page-quality.ts';
import { damagedPdf, isDamagedPdf, passwordProtected } from './pdf-errors.ts';
import {
  imagesOnPages,
  type PageCount,
  type PageImages,
  PdfPasswordError,
  pdfInfo,
  type PdfInfo,
  readPages,
} from './poppler.ts';
import { joinPages, normalizeText, visibleLength } from './text.ts';
import { isToolGiveUp, ToolFailure, type ToolLimits } from './tools.ts';

/** Where a page's text came from: its text layer, OCR, nowhere (blank), or it failed. */
export type PageLayer = 'text' | 'ocr' | 'blank' | 'failed';

export interface PdfSettings {
  /** The file's name, for messages. */
  name: string;
  maxPages: number;
  parseTimeoutMs: number;
  /** A page whose text layer takes longer is skipped and counted as failed. */
  textPageTimeoutMs: number;
  maxMemoryMb: number;
  /** `always` (extraction_method ocr): every page is OCRed, its OCR text preferred. */
  ocr: 'auto' | 'off' | 'always';
  ocrLanguages: string;
  ocrDpi: number;
  /** Pages with fewer visible characters that show an image are OCRed. */
  ocrMinChars: number;
  ocrPageTimeoutMs: number;
  /**
   * The job's CPUs: pages OCRed at once (tesseract runs one thread each), and parts of a
   * long file's text layer read at once (readPages).
   */
  cpus: number;
  signal: AbortSignal;
  /** Where rendered pages go (the job's scratch folder). */
  workDir: string;
  /** Pages of this file done so far, of its total. */
  onProgress(done: number, total: number): Promise<void>;
}

export interface PdfText {
  text: string;
  pages: PageStart[];
  pageCount: number;
  /** One entry per page. */
  layers: PageLayer[];
  /** Pages rendered and read by OCR, whatever came of it. */
  ocrTried: number;
  /** The resolution each of those pages was rendered at, in dpi. */
  ocrDpis: Map<number, number>;
  /** Why each failed page failed. */
  failures: Map<number, PageFailure>;
  /**
   * Pages read twice by OCR, in the job's languages and in their script's (readImage):
   * page → the languages of the reading kept.
   */
  ocrScriptLanguages: Map<number, string>;
  /** Peak RSS of the pdf-parse process where it ran, in KiB. */
  parserPeakRssKb: number;
}

/**
 * The text of a PDF, page by page. The text layer comes from poppler (`pdftotext`, a
 * long file's pages shared out over the job's CPUs: readPages), pdf-parse (pdf.js, in a bounded child process) reads the file when poppler
 * cannot and gives a second opinion on pages poppler found empty or garbled. A page
 * whose text fails the quality gate is OCRed; one with (almost) no text is OCRed only if
 * it shows an image, so blank pages and slide titles cost nothing. OCR runs pages in
 * parallel, each rendered at about the resolution of the images it shows (ocrPageDpi),
 * under a pixel cap for its size. A page that cannot be rendered or read is skipped and
 * counted; the file fails only when no page yields text.
 */
export async function extractPdf(path: string, settings: PdfSettings): Promise<PdfText> {
  const { name } = settings;
  const limits = (what: string): ToolLimits => ({
    timeoutMs: settings.parseTimeoutMs,
    maxMemoryMb: settings.maxMemoryMb,
    signal: settings.signal,
    what,
  });
  const layer = await readTextLayer(path, settings, limits(`${name}: reading the text`));
  const { total, raw } = layer;
  let parserPeakRssKb = layer.parserPeakRssKb;
  if (total === 0) throw new HdError('INVALID_INPUT', `${name}: the PDF has no pages`);
  // Pages poppler hung on: pdf.js, rendering and OCR would hang on them as well.
  const hung = new Set(layer.failed);

  let judged = raw.map(judgePageText);
  let secondOpinionFailed: unknown;
  const doubtful = pagesWhere(judged, (j) => !j.usable).filter((num) => !hung.has(num));
  if (layer.source === 'poppler' && doubtful.length > 0) {
    // pdf.js decodes some fonts poppler does not, and the other way round.
    const second = await readWithPdfParse(path, settings, doubtful).catch((error: unknown) => {
      if (settings.signal.aborted) throw error;
      secondOpinionFailed = error;
      return undefined; // poppler's reading stands
    });
    if (second) {
      parserPeakRssKb = Math.max(parserPeakRssKb, second.peakRssKb);
      for (const [num, text] of second.texts) {
        const better = judgePageText(text);
        if (better.usable) {
          raw[num - 1] = text;
          judged[num - 1] = better;
        }
      }
      judged = raw.map(judgePageText);
    }
  }

  const texts = raw.map((text, i) => (judged[i]!.usable ? normalizeText(text) : ''));
  const layers: PageLayer[] = texts.map((text, i) =>
    hung.has(i + 1) ? 'failed' : text === '' ? 'blank' : 'text',
  );
  const failures = new Map<number, PageFailure>([...hung].map((num) => [num, FAILURES.hung]));
  const garbled = pagesWhere(judged, (j) => !j.usable && j.why === 'garbled');
  const short = pagesWhere(
    judged,
    (j) => j.usable === false || j.visible < settings.ocrMinChars,
  ).filter((num) => !garbled.includes(num) && !hung.has(num));
  let toOcr: number[] = [];
  let images = new Map<number, PageImages>();
  // An XFA form's pages are not the file's: poppler would render the placeholder.
  const renderable = layer.source !== 'xfa';
  if (renderable && settings.ocr !== 'off') {
    const always = settings.ocr === 'always';
    const all = texts.map((_, i) => i + 1).filter((num) => !hung.has(num));
    const listed = await imagesOnPages(
      path,
      always ? all : [...garbled, ...short],
      limits(`${name}: listing the images`),
      hung,
    ).catch((error: unknown) => {
      if (settings.signal.aborted) throw error;
      return undefined; // unknown: OCR at the configured resolution
    });
    images = listed ?? images;
    // Unknown: try OCR on the pages without text; those that cannot be rendered count as failed.
    const showsImage = (num: number) => (listed ? listed.has(num) : texts[num - 1] === '');
    toOcr = always ? all : [...garbled, ...short.filter(showsImage)].sort((a, b) => a - b);
  } else {
    for (const num of garbled) {
      layers[num - 1] = 'failed';
      failures.set(num, settings.ocr === 'off' ? FAILURES.junkOcrOff : FAILURES.junkXfa);
    }
  }

  let done = total - toOcr.length;
  const ocrDpis = new Map<number, number>();
  const ocrScriptLanguages = new Map<number, string>();
  await settings.onProgress(done, total);
  const sizes =
    toOcr.length > 0
      ? await pageSizes(path, layer.info, toOcr, limits(`${name}: reading the page sizes`))
      : undefined;
  await forEachLimit(toOcr, settings.cpus, settings.signal, async (num) => {
    const dpi = ocrPageDpi(sizes?.get(num), images.get(num), settings.ocrDpi);
    ocrDpis.set(num, dpi);
    try {
      const read = await ocrPdfPage(path, num, name, {
        languages: settings.ocrLanguages,
        dpi,
        timeoutMs: settings.ocrPageTimeoutMs,
        maxMemoryMb: settings.maxMemoryMb,
        signal: settings.signal,
        workDir: settings.workDir,
      });
      const { text } = read;
      if (read.skipped !== undefined && texts[num - 1] === '') {
        layers[num - 1] = 'failed';
        failures.set(num, read.skipped);
      }
      const longer = visibleLength(text) > visibleLength(texts[num - 1]!);
      if (longer || (settings.ocr === 'always' && visibleLength(text) > 0)) {
        texts[num - 1] = text;
        layers[num - 1] = 'ocr';
        if (read.language) ocrScriptLanguages.set(num, read.language);
      }
    } catch (error) {
      if (!isToolGiveUp(error) || settings.signal.aborted) throw error;
      if (texts[num - 1] === '') {
        layers[num - 1] = 'failed';
        failures.set(num, FAILURES.unrenderable);
      }
    }
    done += 1;
    await settings.onProgress(done, total);
  });

  const joined = joinPages(texts.map((text, i) => ({ num: i + 1, text })));
  if (joined.text === '') {
    // poppler found pages but no text on them, and pdf.js could not read the file at all.
    if (isDamagedPdf(secondOpinionFailed)) throw damagedPdf(name, secondOpinionFailed);
    throw noText(name, total, layers, failures, toOcr.length, settings);
  }
  return {
    ...joined,
    pageCount: total,
    layers,
    ocrTried: toOcr.length,
    ocrDpis,
    failures,
    ocrScriptLanguages,
    parserPeakRssKb,
  };
}

/**
 * The sizes of the pages to OCR (they choose each page's resolution): pdfinfo's, read now
 * where readPages did without it; undefined where unknown (pdf-parse read the file, or
 * pdfinfo failed: OCR at the configured resolution).
 */
async function pageSizes(
  path: string,
  info: PageCount | undefined,
  pages: readonly number[],
  limits: ToolLimits,
): Promise<PdfInfo['sizes'] | undefined> {
  if (!info || info.sizes) return info?.sizes;
  return pdfInfo(path, Math.max(...pages), limits).then(
    (read) => read.sizes,
    (error: unknown) => {
      if (limits.signal.aborted) throw error;
      return undefined;
    },
  );
}

/** The raw text layer of every page: poppler, or pdf-parse where poppler fails on the file. */
async function readTextLayer(path: string, settings: PdfSettings, limits: ToolLimits) {
  const { name, maxPages } = settings;
  try {
    const {
      info,
      texts: raw,
      failed,
    } = await readPages(
      path,
      maxPages,
      limits,
      settings.textPageTimeoutMs,
      (pages) => assertPageCount(name, pages, maxPages),
      settings.cpus,
    );
    if (info.xfa) {
      const form = await readXfaForm(path, settings);
      if (form) return form;
    }
    return { source: 'poppler' as const, info, total: info.pages, raw, failed, parserPeakRssKb: 0 };
  } catch (error) {
    if (error instanceof PdfPasswordError) throw passwordProtected(name, error);
    // Timeouts, memory, too many pages, an abort: final. A refusal: pdf.js may read it.
    if (!(error instanceof ToolFailure)) throw error;
    try {
      const read = await readWithPdfParse(path, settings);
      const raw = Array.from({ length: read.total }, (_, i) => read.texts.get(i + 1) ?? '');
      return {
        source: 'pdf-parse' as const,
        info: undefined,
        total: read.total,
        raw,
        failed: [],
        parserPeakRssKb: read.peakRssKb,
      };
    } catch (second) {
      // Both readers refused: say it once, keep both reasons for the log.
      if (isDamagedPdf(second)) {
        throw damagedPdf(name, new AggregateError([error, second], 'poppler and pdf-parse'));
      }
      throw second;
    }
  }
}

/**
 * The pages of a pure XFA form, read from its layout (pdf-xfa.ts); undefined where the
 * file is no such form or pdf.js fails on it: poppler's reading stands. A pure XFA form
 * whose layout holds no text is refused: its PDF pages are only the placeholder for
 * viewers without XFA ("requires Adobe Reader 8 or higher"), no text of the document.
 */
async function readXfaForm(path: string, settings: PdfSettings) {
  const read = await readWithPdfParse(path, settings, undefined, true).catch((error: unknown) => {
    if (settings.signal.aborted) throw error;
    return undefined;
  });
  if (!read || read.total === 0) return undefined;
  assertPageCount(settings.name, read.total, settings.maxPages);
  const raw = Array.from({ length: read.total }, (_, i) => read.texts.get(i + 1) ?? '');
  if (!raw.some((text) => judgePageText(text).usable)) {
    throw new HdError(
      'UNSUPPORTED_FILE',
      `${settings.name}: the PDF is a dynamic XFA form whose pages could not be laid out, and its PDF pages are only a placeholder; save it as an ordinary PDF (print to PDF) and upload that`,
      { details: { pdf: 'xfa' } },
    );
  }
  return {
    source: 'xfa' as const,
    info: undefined,
    total: read.total,
    raw,
    failed: [],
    parserPeakRssKb: read.peakRssKb,
  };
}

async function readWithPdfParse(
  path: string,
  settings: PdfSettings,
  pages?: readonly number[],
  xfa = false,
) {
  // Loaded only when poppler is not enough: most files never need it.
  const { extractPdfText } = await import('./pdf-text.ts');
  const texts = new Map<number, string>();
  const result = await extractPdfText(path, {
    name: settings.name,
    maxPages: settings.maxPages,
    timeoutMs: settings.parseTimeoutMs,
    maxMemoryMb: settings.maxMemoryMb,
    signal: settings.signal,
    ...(pages ? { pages } : {}),
    xfa,
    onPage: (page) => {
      texts.set(page.num, page.text);
    },
  });
  return { total: result.total, texts, peakRssKb: result.peakRssKb };
}

function assertPageCount(name: string, pages: number, maxPages: number): void {
  if (pages > maxPages) {
    throw new HdError(
      'INVALID_INPUT',
      `${name}: the PDF has ${pages} pages, more than the limit of ${maxPages}; split the document`,
      { details: { pages, max_pages: maxPages } },
    );
  }
}

/**
 * Why a page gave no text although it may hold some: the kind chooses the sentence of the
 * file's failure (noText), `why` is the page's in stats (page_layers[].failed_why).
 */
export interface PageFailure {
  kind: 'text-layer-hung' | 'junk-not-ocred' | 'unrenderable' | ScriptSkip['kind'];
  why: string;
}

/** The page failures found here; OCR's in a script (readImage) bring their own why. */
const FAILURES = {
  hung: { kind: 'text-layer-hung', why: 'reading its text layer took longer than its limit' },
  junkOcrOff: {
    kind: 'junk-not-ocred',
    why: 'its text layer is junk, and OCR is off for this job',
  },
  junkXfa: {
    kind: 'junk-not-ocred',
    why: "its text is junk, and an XFA form's pages cannot be rendered for OCR",
  },
  unrenderable: {
    kind: 'unrenderable',
    why: 'it could not be rendered or read by OCR in its time and memory',
  },
} as const satisfies Record<string, PageFailure>;

function noText(
  name: string,
  total: number,
  layers: readonly PageLayer[],
  failures: ReadonlyMap<number, PageFailure>,
  ocrTried: number,
  settings: PdfSettings,
): HdError {
  const failed = layers.filter((l) => l === 'failed').length;
  const details = { pages: total, pages_failed: failed, ocr_pages_tried: ocrTried };
  const ofKind = (...kinds: PageFailure['kind'][]) =>
    [...failures.values()].filter((f) => kinds.includes(f.kind));
  // Pages OCR found in a script it cannot read here: the runner's lack, said first.
  for (const kind of ['script-not-installed', 'script-read-failed'] as const) {
    const skipped = ofKind(kind);
    if (skipped.length === 0) continue;
    const some =
      total === 1
        ? 'its one page is'
        : skipped.length === total
          ? `its ${total} pages are`
          : `${skipped.length === 1 ? 'one' : skipped.length} of its ${total} pages ${skipped.length === 1 ? 'is' : 'are'}`;
    return scriptSkipError(name, some, { kind, why: skipped[0]!.why }, details);
  }
  const [pages, have] = total === 1 ? ['its one page', 'has'] : [`its ${total} pages`, 'have'];
  const why =
    ofKind('text-layer-hung', 'unrenderable').length === total
      ? `${pages} could not be read or rendered; the file may be damaged`
      : settings.ocr === 'off'
        ? `no text found: ${pages} ${have} no usable text layer, and OCR is off for this job`
        : ocrTried > 0
          ? `no text found in ${pages}, neither in the text layer nor by OCR (languages ${settings.ocrLanguages})`
          : `no text found: ${pages} ${have} neither a text layer nor images`;
  return new HdError('INVALID_INPUT', `${name}: ${why}`, { details });
}

function pagesWhere<T>(items: readonly T[], test: (item: T) => boolean): number[] {
  const pages: number[] = [];
  items.forEach((item, i) => {
    if (test(item)) pages.push(i + 1);
  });
  return pages;
}

/** Runs `task` for every item, at most `limit` at once; the first error stops the rest. */
async function forEachLimit<T>(
  items: readonly T[],
  limit: number,
  signal: AbortSignal,
  task: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (failure === undefined && !signal.aborted && next < items.length) {
      const item = items[next++]!;
      try {
        await task(item);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failure) throw failure.error;
  if (signal.aborted) throw signal.reason;
}
