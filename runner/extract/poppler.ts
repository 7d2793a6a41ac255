import { runTool, ToolFailure, type ToolLimits } from './tools.ts';

/** What pdfinfo says about a PDF: its page count and the size of each page, in points. */
export interface PdfInfo {
  pages: number;
  sizes: Map<number, { width: number; height: number }>;
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
  return { pages, sizes } satisfies PdfInfo;
}

/**
 * The text layer of pages 1..pages in one pass (`pdftotext`, UTF-8, reading order as
 * poppler finds it, right-to-left scripts in logical order): one string per page, split
 * on the form feed poppler ends every page with. Form fields are read from their
 * appearance, so filled-in values are part of the text.
 */
export async function pdfToText(path: string, pages: number, limits: ToolLimits) {
  const { stdout } = await poppler(
    'pdftotext',
    // -q: a damaged file can make poppler write megabytes of warnings; pdfinfo ran first
    // and said what was wrong with it.
    ['-q', '-enc', 'UTF-8', '-f', '1', '-l', String(pages), path, '-'],
    limits,
  );
  const texts = stdout.split('\f');
  // After the last page's form feed comes nothing; a missing page stays empty.
  return Array.from({ length: pages }, (_, i) => texts[i] ?? '');
}

/** Smallest image that can carry text worth OCR, in pixels per side (logos, rules are less). */
const MIN_IMAGE_SIDE = 64;

/** The pages among `pages` that show at least one image big enough to hold text. */
export async function pagesWithImages(path: string, pages: readonly number[], limits: ToolLimits) {
  if (pages.length === 0) return new Set<number>();
  const first = Math.min(...pages);
  const last = Math.max(...pages);
  const { stdout } = await poppler(
    'pdfimages',
    ['-q', '-list', '-f', String(first), '-l', String(last), path],
    limits,
  );
  const found = new Set<number>();
  // page num type width height …, after two header lines.
  for (const line of stdout.split('\n').slice(2)) {
    const [page, , , width, height] = line.trim().split(/\s+/).map(Number);
    if (page && width! >= MIN_IMAGE_SIDE && height! >= MIN_IMAGE_SIDE) found.add(page);
  }
  return new Set(pages.filter((p) => found.has(p)));
}

async function poppler(tool: string, args: string[], limits: ToolLimits) {
  try {
    return await runTool(tool, args, limits);
  } catch (error) {
    if (error instanceof ToolFailure && /Incorrect password/i.test(error.stderr)) {
      throw new PdfPasswordError(error.stderr, { cause: error });
    }
    throw error;
  }
}
