import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { HdError } from '../../contract/errors.ts';
import type { PageImages } from './poppler.ts';
import { runTool, ToolFailure } from './tools.ts';

export interface OcrOptions {
  /** Tesseract languages, `+`-separated (deu+eng). */
  languages: string;
  dpi: number;
  timeoutMs: number;
  maxMemoryMb: number;
  signal: AbortSignal;
  /** Where rendered pages go (the job's scratch folder). */
  workDir: string;
}

/**
 * Most pixels a page is rendered to for OCR: A4 at 300 dpi is 8.7 million; a 36 × 48 inch
 * plan at 300 dpi would be 156 million (and as much memory in tesseract), so it is
 * rendered at the resolution that gives this many.
 */
export const OCR_MAX_PIXELS = 25_000_000;

/** Resolution for a page of this size in points: the configured one, lower for big pages. */
export function ocrDpi(widthPt: number, heightPt: number, dpi: number): number {
  const squareInches = (widthPt / 72) * (heightPt / 72);
  if (!(squareInches > 0)) return dpi;
  const capped = Math.floor(Math.sqrt(OCR_MAX_PIXELS / squareInches));
  return Math.max(10, Math.min(dpi, capped));
}

/**
 * Lowest resolution a page is rendered at for its images' sake: a 72 ppi picture's small
 * print, rendered 1:1, is too small for tesseract; at 150 it reads.
 */
export const OCR_MIN_IMAGE_DPI = 150;

/** Share of the page its images must cover for their resolution to set the render's. */
const IMAGE_COVERAGE = 0.5;

/**
 * Resolution to render a page at for OCR. A page mostly covered by images (a scan, a
 * photo) is rendered at about their resolution, at least OCR_MIN_IMAGE_DPI: more pixels
 * than the images have add no detail, only tesseract time (a 1500 × 1125 pt page holding a
 * 72 ppi picture took 53 s at 25 MP). Other pages may carry drawn text, which gains from
 * every pixel: the configured resolution. Either way under the pixel cap (ocrDpi).
 */
export function ocrPageDpi(
  size: { width: number; height: number } | undefined,
  images: PageImages | undefined,
  dpi: number,
): number {
  if (!size) return dpi;
  const pageSquareInches = (size.width / 72) * (size.height / 72);
  const scanned =
    images && images.ppi > 0 && images.squareInches >= IMAGE_COVERAGE * pageSquareInches;
  const wanted = scanned ? Math.min(dpi, Math.max(OCR_MIN_IMAGE_DPI, Math.ceil(images.ppi))) : dpi;
  return ocrDpi(size.width, size.height, wanted);
}

/** Text of one image file by Tesseract. */
export async function ocrImage(
  imagePath: string,
  what: string,
  options: OcrOptions,
): Promise<string> {
  try {
    const { stdout } = await runTool(
      'tesseract',
      [imagePath, 'stdout', '-l', options.languages],
      { ...options, what },
      // One thread each: pages run in parallel, one per CPU of the job.
      { env: { OMP_THREAD_LIMIT: '1' } },
    );
    return stdout;
  } catch (error) {
    const missing =
      error instanceof ToolFailure && /Failed loading language '([^']+)'/.exec(error.stderr);
    if (missing) {
      throw new HdError(
        'INVALID_INPUT',
        `OCR language "${missing[1]}" is not installed on this runner (languages asked for: ${options.languages}; apt-get install tesseract-ocr-${missing[1]})`,
        { cause: error },
      );
    }
    throw error;
  }
}

/**
 * Renders one PDF page to a grey-scale PNG (poppler) at `options.dpi` and reads it with
 * Tesseract.
 */
export async function ocrPdfPage(
  pdfPath: string,
  page: number,
  name: string,
  options: OcrOptions,
): Promise<string> {
  const base = join(options.workDir, `ocr-page-${page}`);
  const png = `${base}.png`;
  try {
    // prettier-ignore
    await runTool(
      'pdftoppm',
      ['-f', String(page), '-l', String(page), '-r', String(options.dpi), '-gray', '-png',
        '-singlefile', pdfPath, base],
      { ...options, what: `rendering page ${page} of ${name}` },
    );
    return await ocrImage(png, `OCR of page ${page} of ${name}`, options);
  } finally {
    await rm(png, { force: true });
  }
}
