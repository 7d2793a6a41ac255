import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { languageForScript, readTsv } from '../runner/extract/ocr.ts';
import { findTool } from '../runner/extract/tools.ts';
import { ACCOUNT_A } from './helpers/runtime.ts';
import { GERMAN, noisyScan, requireTools, textPdf } from './fixtures/documents.ts';
import { extractHarness } from './fixtures/extract-harness.ts';
import { makePdf, wrap } from './fixtures/make-pdf.ts';
import { scriptScan } from './fixtures/script-scan.ts';

// OCR in the page's script (issue 13): a scanned page of Arabic OCRed with the job's
// languages (deu+eng) came back as Latin junk and was stored, the job completed. Scans
// made by tesseract's text2image (DejaVu Sans), read by the installed tesseract with its
// script detection (osd.traineddata) and Arabic data (tesseract-ocr-ara).
const h = extractHarness();
const { addDocument, extract, chunksOf, statsOf, expectFailure } = h;

const ARABIC = [
  'تبدأ معالجة المستندات بقراءة طبقة النص في كل صفحة من صفحات الملف.',
  'تقسم النتيجة إلى أجزاء وتحفظ في قاعدة البيانات لكل حساب على حدة.',
].join('\n');
// Words of ARABIC that OCR must give back as they are.
const ARABIC_WORDS = /معالجة المستندات بقراءة طبقة النص/;

const LATIN_WORD = /[\p{Script=Latin}]+/gu;

const TESSDATA = '/usr/share/tesseract-ocr/5/tessdata';

/** Text of one page of a document's chunks. */
async function pageText(doc: string, page: number): Promise<string> {
  const chunks = await chunksOf(doc);
  return chunks
    .filter((c) => c.page_start <= page && c.page_end >= page)
    .map((c) => c.content)
    .join('\n');
}

/**
 * A tesseract data folder with only German, English and script detection, as a runner
 * without tesseract-ocr-ara has: the runner's TESSDATA_PREFIX points its tesseract there.
 */
function withoutArabic(): string {
  const dir = join(h.work, 'tessdata-deu-eng');
  mkdirSync(dir, { recursive: true });
  for (const name of ['deu.traineddata', 'eng.traineddata', 'osd.traineddata', 'configs']) {
    symlinkSync(join(TESSDATA, name), join(dir, name));
  }
  return dir;
}

describe('extract_text: OCR in the script of the page', () => {
  it('a second reading past its memory limit skips the page with why, and the job says so; the Latin junk is not kept', async () => {
    requireTools('text2image');
    const scan = scriptScan(ARABIC, h.work, 'arabisch-oom');
    // A tesseract that runs out of memory reading Arabic only (as a slower model past the
    // runner's bound would); the first reading and the script check are the real ones.
    const bin = join(h.work, 'oom-bin');
    mkdirSync(bin, { recursive: true });
    writeFileSync(
      join(bin, 'tesseract'),
      `#!/bin/sh\ncase " $* " in *" -l ara "*) echo "std::bad_alloc" >&2; exit 1;; esac\nexec ${findTool('tesseract')} "$@"\n`,
      { mode: 0o755 },
    );
    vi.stubEnv('PATH', `${bin}:${process.env.PATH}`);
    try {
      const why =
        'script detected: Arabic, which the OCR languages deu+eng do not read; reading it in ara needed more than its limit of 1024 MiB of memory';
      const pdf = makePdf([{ kind: 'text', lines: wrap(GERMAN) }, scan.page]);
      const doc = await addDocument(ACCOUNT_A, [{ name: 'oom.pdf', content: pdf }]);
      const stats = statsOf(await extract(doc));
      expect(stats).toMatchObject({ pages: 2, ocr_pages: 0, ocr_pages_tried: 1, pages_failed: 1 });
      expect((stats.page_layers as Record<string, unknown>[])[0]).toMatchObject({
        text: '1',
        failed: '2',
        failed_why: { [why]: '2' },
        ocr_language: {},
      });
      expect((await chunksOf(doc)).every((c) => c.page_end === 1)).toBe(true);

      // No page gives text: the job's message names this cause, not a missing language.
      const only = await addDocument(ACCOUNT_A, [
        { name: 'nur-oom.pdf', content: makePdf([scan.page]) },
      ]);
      await expectFailure(
        await extract(only),
        only,
        'UNSUPPORTED_FILE',
        new RegExp(
          `^nur-oom\\.pdf: no text read: its one page is in a script whose OCR failed on this runner; ${escape(why)}$`,
        ),
      );
      const image = await addDocument(ACCOUNT_A, [{ name: 'oom.tif', content: scan.tiff }]);
      await expectFailure(
        await extract(image),
        image,
        'UNSUPPORTED_FILE',
        new RegExp(
          `^oom\\.tif: no text read: the image is in a script whose OCR failed on this runner; ${escape(why)}$`,
        ),
      );
    } finally {
      vi.unstubAllEnvs();
    }
  }, 120_000);

  it('a poor Latin scan that OSD takes for Arabic keeps its own reading, not the Arabic junk read with more mean confidence', async () => {
    // German prose scanned at 55 ppi with 10 % of its pixels noise: deu+eng reads it poorly
    // (mean word confidence 28, "die" the one confident word), OSD says Arabic (2.4), and
    // ara reads junk with a higher mean (30) but fewer confident characters (bench/RESULTS.md).
    const scan = noisyScan(textPdf([`${GERMAN} ${GERMAN}`]), h.work, {
      dpi: 55,
      noise: 0.1,
      seed: 3,
    });
    const doc = await addDocument(ACCOUNT_A, [{ name: 'fax.pdf', content: makePdf([scan]) }]);
    const stats = statsOf(await extract(doc));
    expect(stats).toMatchObject({ pages: 1, ocr_pages: 1, pages_failed: 0 });
    // Read twice; the job's languages' reading kept, and the stats say so.
    expect((stats.page_layers as Record<string, unknown>[])[0]).toMatchObject({
      ocr: '1',
      ocr_language: { 'deu+eng': '1' },
      failed_why: {},
    });
    const text = await pageText(doc, 1);
    expect(text).toMatch(/\bdie\b/);
    expect(text).not.toMatch(/\p{Script=Arabic}/u);
  }, 120_000);

  it('a scanned page of Arabic is read in Arabic, not stored as Latin junk', async () => {
    requireTools('text2image');
    const scan = scriptScan(ARABIC, h.work, 'arabisch');
    const pdf = makePdf([{ kind: 'text', lines: wrap(GERMAN) }, scan.page]);
    const doc = await addDocument(ACCOUNT_A, [{ name: 'zweisprachig.pdf', content: pdf }]);
    const stats = statsOf(await extract(doc));
    expect(stats).toMatchObject({ pages: 2, ocr_pages: 1, pages_failed: 0 });
    expect((stats.page_layers as Record<string, unknown>[])[0]).toMatchObject({
      text: '1',
      ocr: '2',
      failed: '',
      ocr_language: { ara: '2' },
      failed_why: {},
    });
    // Page 1's German and page 2's Arabic; no Latin word that is not page 1's.
    const text = (await chunksOf(doc)).map((c) => c.content).join('\n');
    expect(text).toMatch(/^Grüße aus München/);
    expect(text).toMatch(ARABIC_WORDS);
    const german = new Set(GERMAN.match(LATIN_WORD));
    expect(text.match(LATIN_WORD)!.filter((word) => !german.has(word))).toEqual([]);

    // An image file of the same page: the same reading.
    const image = await addDocument(ACCOUNT_A, [{ name: 'arabisch.tif', content: scan.tiff }]);
    statsOf(await extract(image));
    expect(await pageText(image, 1)).toMatch(ARABIC_WORDS);
  }, 120_000);

  it('without Arabic OCR data the page is skipped and counted, named with its script and package; never stored as junk', async () => {
    requireTools('text2image');
    vi.stubEnv('TESSDATA_PREFIX', withoutArabic());
    try {
      const scan = scriptScan(ARABIC, h.work, 'arabisch-ohne');
      const pdf = makePdf([{ kind: 'text', lines: wrap(GERMAN) }, scan.page]);
      const doc = await addDocument(ACCOUNT_A, [{ name: 'ohne-ara.pdf', content: pdf }]);
      const stats = statsOf(await extract(doc));
      const why =
        'script detected: Arabic, which the OCR languages deu+eng do not read, and ara is not installed (apt-get install tesseract-ocr-ara)';
      expect(stats).toMatchObject({ pages: 2, ocr_pages: 0, ocr_pages_tried: 1, pages_failed: 1 });
      expect((stats.page_layers as Record<string, unknown>[])[0]).toMatchObject({
        text: '1',
        ocr: '',
        failed: '2',
        failed_why: { [why]: '2' },
        ocr_language: {},
      });
      const chunks = await chunksOf(doc);
      expect(chunks.every((c) => c.page_end === 1)).toBe(true);
      expect(chunks.map((c) => c.content).join('\n')).toMatch(/^Grüße aus München.*kreischen\.$/s);

      // No page gives text: the job fails, saying which script and what to install.
      const only = await addDocument(ACCOUNT_A, [
        { name: 'nur-arabisch.pdf', content: makePdf([scan.page]) },
      ]);
      await expectFailure(
        await extract(only),
        only,
        'UNSUPPORTED_FILE',
        new RegExp(
          `^nur-arabisch\\.pdf: no text read: its one page is in a script OCR on this runner cannot read; ${escape(why)}$`,
        ),
      );
      const image = await addDocument(ACCOUNT_A, [{ name: 'scan.tif', content: scan.tiff }]);
      await expectFailure(
        await extract(image),
        image,
        'UNSUPPORTED_FILE',
        new RegExp(
          `^scan\\.tif: no text read: the image is in a script OCR on this runner cannot read; ${escape(why)}$`,
        ),
      );
    } finally {
      vi.unstubAllEnvs();
    }
  }, 120_000);

  it('a page in capital Latin letters, which OSD takes for Cyrillic, is stored as read: OSD alone does not decide', async () => {
    requireTools('text2image');
    const scan = scriptScan('TABLE OF CONTENTS', h.work, 'versalien');
    const doc = await addDocument(ACCOUNT_A, [{ name: 'toc.pdf', content: makePdf([scan.page]) }]);
    const stats = statsOf(await extract(doc));
    expect(stats).toMatchObject({ ocr_pages: 1, pages_failed: 0 });
    expect(await pageText(doc, 1)).toBe('TABLE OF CONTENTS');
  }, 120_000);

  it('a job whose languages read the script OCRs the page once, in them', async () => {
    requireTools('text2image');
    const scan = scriptScan(ARABIC, h.work, 'arabisch-ara');
    const doc = await addDocument(ACCOUNT_A, [{ name: 'ara.pdf', content: makePdf([scan.page]) }]);
    const stats = statsOf(await extract(doc, { debug: { ocr_languages: 'ara' } }));
    expect((stats.page_layers as Record<string, unknown>[])[0]).toMatchObject({
      ocr: '1',
      ocr_language: {},
    });
    expect(await pageText(doc, 1)).toMatch(ARABIC_WORDS);
  }, 120_000);
});

describe('OCR script table', () => {
  it("names the language for a script the job's languages do not cover", () => {
    expect(languageForScript('Arabic', 'deu+eng')).toBe('ara');
    expect(languageForScript('Arabic', 'eng+fas')).toBeUndefined();
    expect(languageForScript('Hebrew', 'deu+eng')).toBe('heb');
    expect(languageForScript('Cyrillic', 'deu+eng')).toBe('rus');
    expect(languageForScript('Cyrillic', 'ukr')).toBeUndefined();
    expect(languageForScript('Han', 'chi_tra_vert')).toBeUndefined();
    expect(languageForScript('Han', 'eng')).toBe('chi_sim');
    // Latin: any language not of another script covers it; a job of Arabic only reads it in English.
    expect(languageForScript('Latin', 'deu+eng')).toBeUndefined();
    expect(languageForScript('Latin', 'ara+fra')).toBeUndefined();
    expect(languageForScript('Latin', 'ara')).toBe('eng');
    expect(languageForScript('Fraktur', 'deu')).toBeUndefined();
    // Scripts outside the table stay with the job's languages.
    expect(languageForScript('Bengali', 'eng')).toBeUndefined();
  });

  it("reads the words' mean confidence and confident characters from tesseract's TSV", () => {
    const tsv = [
      'level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext',
      '1\t1\t0\t0\t0\t0\t0\t0\t100\t100\t-1\t',
      '5\t1\t1\t1\t1\t1\t0\t0\t10\t10\t90\tHallo',
      '5\t1\t1\t1\t1\t2\t0\t0\t10\t10\t40.5\tWelt',
      '5\t1\t1\t1\t1\t3\t0\t0\t10\t10\t95\t ',
      '5\t1\t1\t1\t1\t4\t0\t0\t10\t10\t80\tمعالجة',
    ].join('\n');
    // Characters, not UTF-16 units or bytes: "Hallo" and the six Arabic letters.
    expect(readTsv(tsv)).toEqual({ confidence: expect.closeTo(70.17, 2), confidentChars: 11 });
    expect(readTsv(tsv.split('\n')[0]!)).toEqual({ confidence: NaN, confidentChars: 0 });
  });
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
