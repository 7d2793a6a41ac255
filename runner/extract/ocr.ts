import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { HdError } from '../../contract/errors.ts';
import { runTool } from './tools.ts';

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
      // One thread: the scheduler gives a job one CPU, and results do not vary with load.
      { OMP_THREAD_LIMIT: '1' },
    );
    return stdout;
  } catch (error) {
    const missing = /Failed loading language '([^']+)'/.exec((error as Error).message);
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

/** Renders one PDF page to a grey-scale PNG (poppler) and reads it with Tesseract. */
export async function ocrPdfPage(
  pdfPath: string,
  page: number,
  name: string,
  options: OcrOptions,
): Promise<string> {
  const what = `OCR of ${name} page ${page}`;
  const base = join(options.workDir, `ocr-page-${page}`);
  const png = `${base}.png`;
  try {
    await runTool(
      'pdftoppm',
      [
        '-f',
        String(page),
        '-l',
        String(page),
        '-r',
        String(options.dpi),
        '-gray',
        '-png',
        '-singlefile',
        pdfPath,
        base,
      ],
      { ...options, what: `rendering ${name} page ${page}` },
    );
    return await ocrImage(png, what, options);
  } finally {
    await rm(png, { force: true });
  }
}
