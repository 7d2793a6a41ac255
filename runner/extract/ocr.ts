import { randomUUID } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { HdError } from '../../contract/errors.ts';
import type { PageImages } from './poppler.ts';
import { normalizeText, visibleLength } from './text.ts';
import { formatMs, isToolGiveUp, runTool, ToolFailure } from './tools.ts';

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

/** A tesseract language this runner lacks (no `<language>.traineddata`). */
export class OcrLanguageMissing extends HdError {
  readonly language: string;
  constructor(language: string, languages: string, cause: unknown) {
    super(
      'INVALID_INPUT',
      `OCR language "${language}" is not installed on this runner (languages asked for: ${languages}; apt-get install ${languagePackage(language)})`,
      { cause },
    );
    this.language = language;
  }
}

/** The Debian package of a tesseract language: chi_sim → tesseract-ocr-chi-sim. */
export function languagePackage(language: string): string {
  return `tesseract-ocr-${language.toLowerCase().replaceAll('_', '-')}`;
}

/** Text of one image by Tesseract, with what tesseract thought of its words (readTsv). */
export interface OcrResult extends WordConfidence {
  text: string;
}

/**
 * Text of one image file by Tesseract, in `options.languages` (or `languages`), with the
 * mean confidence of its words (one run writes both, txt and tsv).
 */
export async function ocrImage(
  imagePath: string,
  what: string,
  options: OcrOptions,
  languages = options.languages,
): Promise<OcrResult> {
  const out = join(options.workDir, `ocr-${randomUUID()}`);
  try {
    await runTool(
      'tesseract',
      [imagePath, out, '-l', languages, 'txt', 'tsv'],
      { ...options, what },
      { env: tesseractEnv() },
    );
    const [text, tsv] = await Promise.all([
      readFile(`${out}.txt`, 'utf8'),
      readFile(`${out}.tsv`, 'utf8'),
    ]);
    return { text, ...readTsv(tsv) };
  } catch (error) {
    const missing =
      error instanceof ToolFailure && /Failed loading language '([^']+)'/.exec(error.stderr);
    if (missing) throw new OcrLanguageMissing(missing[1]!, languages, error);
    throw error;
  } finally {
    await Promise.all([rm(`${out}.txt`, { force: true }), rm(`${out}.tsv`, { force: true })]);
  }
}

/** What tesseract thought of the words it read. */
export interface WordConfidence {
  /** The mean of the words' confidences, 0–100; NaN where it read none. */
  confidence: number;
  /** Characters in the words read with a confidence of CONFIDENT_WORD or more. */
  confidentChars: number;
}

/**
 * Least confidence of a word that counts as read (confidentChars). Junk read in the
 * wrong script has few such words even where its mean confidence is close to a poor real
 * reading's: measured in bench/RESULTS.md (2026-12-02, "which reading is kept").
 */
export const CONFIDENT_WORD = 80;

/** Word confidences in tesseract's TSV output (level 5 rows with text). */
export function readTsv(tsv: string): WordConfidence {
  let sum = 0;
  let words = 0;
  let confidentChars = 0;
  for (const line of tsv.split('\n')) {
    const cells = line.split('\t');
    const confidence = Number(cells[10]);
    const word = cells[11]?.trim();
    if (cells[0] !== '5' || !(confidence >= 0) || !word) continue;
    sum += confidence;
    words += 1;
    if (confidence >= CONFIDENT_WORD) confidentChars += [...word].length;
  }
  return { confidence: words > 0 ? sum / words : Number.NaN, confidentChars };
}

/**
 * What tesseract runs with: one thread (pages run in parallel, one per CPU of the job),
 * and the runner's TESSDATA_PREFIX where it has one (language data installed elsewhere
 * than Debian's folder, e.g. tessdata_best).
 */
function tesseractEnv(): Record<string, string> {
  const prefix = process.env.TESSDATA_PREFIX;
  return { OMP_THREAD_LIMIT: '1', ...(prefix ? { TESSDATA_PREFIX: prefix } : {}) };
}

/**
 * Writing systems tesseract's script detection (OSD, osd.traineddata) names, the language
 * a page in it is OCRed with when the job's languages do not cover it, and the languages
 * that do cover it. Small on purpose: the scripts of languages commonly installed;
 * a language not listed here counts as Latin (deu, eng, fra, …). OSD's other scripts
 * (Bengali, Tamil, …) are left to the job's languages, as before.
 */
export const OCR_SCRIPTS: Readonly<Record<string, { language: string; coveredBy: string[] }>> = {
  Arabic: { language: 'ara', coveredBy: ['ara', 'fas', 'urd', 'pus', 'snd', 'uig'] },
  Hebrew: { language: 'heb', coveredBy: ['heb', 'yid'] },
  Cyrillic: {
    language: 'rus',
    coveredBy: ['rus', 'ukr', 'bel', 'bul', 'mkd', 'srp', 'kaz', 'kir', 'mon', 'tgk', 'tat'],
  },
  Greek: { language: 'ell', coveredBy: ['ell', 'grc'] },
  Han: { language: 'chi_sim', coveredBy: ['chi_sim', 'chi_tra', 'jpn'] },
  Japanese: { language: 'jpn', coveredBy: ['jpn'] },
  Korean: { language: 'kor', coveredBy: ['kor'] },
  Thai: { language: 'tha', coveredBy: ['tha'] },
  Devanagari: { language: 'hin', coveredBy: ['hin', 'mar', 'nep', 'san'] },
};

/** OSD's names for Latin-script pages (blackletter is Fraktur). */
const LATIN_SCRIPTS = ['Latin', 'Fraktur'];
/** A Latin page where the job's languages are all of other scripts is read in English. */
const LATIN_LANGUAGE = 'eng';

/**
 * Least OSD script confidence acted on: its margin of the best script over the next.
 * Generated pages of a few lines gave 2–43, a Russian scan 7.2 and 0.95 (pdf.js's
 * issue7229.pdf at 200 dpi); OSD's guesses on pictures were mostly 0.00–0.67 ("Katakana",
 * "Cyrillic" on the capitals of a drawing's labels), once 1.43 ("Han" on a photo of
 * balloons, whose deu+eng reading was junk too: skipped rather than stored).
 */
export const OSD_MIN_CONFIDENCE = 0.5;

/**
 * Fewest characters OSD judges a page on (tesseract's default is 50): two lines of Arabic
 * are fewer, its letters join into few shapes. Short lines mislead OSD more, which the
 * confidence gate before it (OCR_DOUBT_CONFIDENCE) makes up for.
 */
const OSD_MIN_CHARACTERS = 20;

/** The script's language as a job's language list names it: chi_sim_vert → chi_sim. */
function coversLanguage(covered: readonly string[], language: string): boolean {
  return covered.some((c) => language === c || language.startsWith(`${c}_`));
}

/**
 * The language a page in `script` is to be OCRed with instead of `languages`, or
 * undefined where `languages` cover it or the script is not one OCR_SCRIPTS knows.
 */
export function languageForScript(script: string, languages: string): string | undefined {
  const list = languages.split('+');
  const entries = Object.values(OCR_SCRIPTS);
  if (LATIN_SCRIPTS.includes(script)) {
    const latin = list.some((l) => !entries.some((e) => coversLanguage(e.coveredBy, l)));
    return latin ? undefined : LATIN_LANGUAGE;
  }
  const entry = OCR_SCRIPTS[script];
  if (!entry || list.some((l) => coversLanguage(entry.coveredBy, l))) return undefined;
  return entry.language;
}

/** The script tesseract's OSD sees on an image, or undefined where it cannot tell. */
export async function detectScript(
  imagePath: string,
  what: string,
  options: OcrOptions,
): Promise<{ script: string; confidence: number } | undefined> {
  try {
    const { stdout } = await runTool(
      'tesseract',
      [imagePath, 'stdout', '--psm', '0', '-c', `min_characters_to_try=${OSD_MIN_CHARACTERS}`],
      { ...options, what },
      { env: tesseractEnv() },
    );
    const script = /^Script: (\S+)/m.exec(stdout)?.[1];
    const confidence = Number(/^Script confidence: ([\d.]+)/m.exec(stdout)?.[1]);
    return script && Number.isFinite(confidence) ? { script, confidence } : undefined;
  } catch (error) {
    // Too few characters to tell (tesseract's minimum is 50), no osd.traineddata, or past
    // its time or memory limit: the reading there stands, as before the check.
    if (isToolGiveUp(error) && !options.signal.aborted) return undefined;
    throw error;
  }
}

/**
 * Why OCR gave a page in a script the job's languages do not read no text: that script's
 * language is not installed, or reading the page in it failed (past its time or memory
 * limit, say). Either way the first reading, junk in the wrong script, is not kept.
 */
export interface ScriptSkip {
  kind: 'script-not-installed' | 'script-read-failed';
  /** One sentence for the page's stats (page_layers[].failed_why): script, language, remedy. */
  why: string;
}

/** One page (or image) read by OCR: its text, or why it was skipped. */
export interface PageReading {
  text: string;
  /**
   * Where the page was read twice (the job's languages doubted, OSD named a script they
   * do not read): the languages of the reading kept, the job's or the script's.
   */
  language?: string;
  skipped?: ScriptSkip;
}

/**
 * Mean word confidence below which a reading in the job's languages is doubted and the
 * page's script checked. Clean pages in a script the languages read gave 95–97; Arabic
 * read with deu+eng 32–42, Hebrew 43–46, Cyrillic 49–60 (its letters look Latin); a poor
 * real scan of Latin text about 50, so such scans are checked too (and stay as read).
 */
export const OCR_DOUBT_CONFIDENCE = 75;

/**
 * Reads an image by OCR in the job's languages. Where that found text but doubts it
 * (OCR_DOUBT_CONFIDENCE), tesseract's script detection (OSD) looks at the page: one in a
 * script the languages do not cover (Arabic read with deu+eng comes back as Latin junk,
 * and its confidence alone does not tell it from a poor scan) is read again in its
 * script's language (OCR_SCRIPTS). The second reading is kept only where it has more
 * characters in confidently read words (confidentChars) than the first: OSD guesses on
 * pictures and poor scans (a noisy Latin scan "Arabic", 2.4–5.6), and junk read there in
 * the wrong script can have a mean word confidence above the real but poor reading's
 * (ara 29.7 against deu+eng 28.2), never more confident words (1 character against 3,
 * bench/RESULTS.md). Where the script's language is not installed, or reading in it
 * fails, there is nothing to compare with: the page is skipped with why, never stored as
 * junk. OSD, one more tesseract run, is off the path of pages read with confidence (most)
 * and of pages where OCR found nothing.
 */
export async function readImage(
  imagePath: string,
  what: string,
  options: OcrOptions,
): Promise<PageReading> {
  const first = await ocrImage(imagePath, what, options);
  const text = normalizeText(first.text);
  if (visibleLength(text) === 0 || !(first.confidence < OCR_DOUBT_CONFIDENCE)) return { text };
  const seen = await detectScript(imagePath, `script detection for ${what}`, options);
  if (!seen || seen.confidence < OSD_MIN_CONFIDENCE) return { text };
  const language = languageForScript(seen.script, options.languages);
  if (!language) return { text };
  const detected = `script detected: ${seen.script}, which the OCR languages ${options.languages} do not read`;
  let again: OcrResult;
  try {
    again = await ocrImage(imagePath, what, options, language);
  } catch (error) {
    if (error instanceof OcrLanguageMissing) {
      const why = `${detected}, and ${language} is not installed (apt-get install ${languagePackage(language)})`;
      return { text: '', skipped: { kind: 'script-not-installed', why } };
    }
    // Past its time or memory limit (a slower model, chi_sim), or tesseract failed: one
    // page must not end the job.
    if (!isToolGiveUp(error) || options.signal.aborted) throw error;
    const why = `${detected}; reading it in ${language} ${howItFailed(error, options)}`;
    return { text: '', skipped: { kind: 'script-read-failed', why } };
  }
  // A tie (none confident in either, say) keeps the job's languages.
  return again.confidentChars > first.confidentChars
    ? { text: normalizeText(again.text), language }
    : { text, language: options.languages };
}

/** What became of a tool run that gave up (isToolGiveUp), in words for the page's stats. */
function howItFailed(error: unknown, options: OcrOptions): string {
  const code = error instanceof HdError ? error.code : undefined;
  if (code === 'PROCESSING_TIMEOUT')
    return `took longer than its limit of ${formatMs(options.timeoutMs)}`;
  if (code === 'OOM_KILLED')
    return `needed more than its limit of ${options.maxMemoryMb} MiB of memory`;
  return 'failed';
}

/**
 * The file's failure where OCR skipped every page that shows text for its script
 * (ScriptSkip): one sentence per kind, `subject` saying which pages ("its one page is").
 */
export function scriptSkipError(
  name: string,
  subject: string,
  skip: ScriptSkip,
  details?: Record<string, unknown>,
): HdError {
  const cause =
    skip.kind === 'script-not-installed'
      ? 'in a script OCR on this runner cannot read'
      : 'in a script whose OCR failed on this runner';
  return new HdError(
    'UNSUPPORTED_FILE',
    `${name}: no text read: ${subject} ${cause}; ${skip.why}`,
    {
      ...(details ? { details } : {}),
    },
  );
}

/**
 * Renders one PDF page to a grey-scale PNG (poppler) at `options.dpi` and reads it
 * (readImage).
 */
export async function ocrPdfPage(
  pdfPath: string,
  page: number,
  name: string,
  options: OcrOptions,
): Promise<PageReading> {
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
    return await readImage(png, `OCR of page ${page} of ${name}`, options);
  } finally {
    await rm(png, { force: true });
  }
}
