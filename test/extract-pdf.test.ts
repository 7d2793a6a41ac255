import { writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { configToEnv } from '../control-plane/config.ts';
import { OCR_MAX_PIXELS, ocrDpi, ocrPageDpi } from '../runner/extract/ocr.ts';
import {
  judgePageText,
  MAX_JUNK_SHARE,
  MIN_LETTER_SHARE,
  notLetterOrDigit,
  withoutLeaders,
} from '../runner/extract/page-quality.ts';
import { pdfToText } from '../runner/extract/poppler.ts';
import { ACCOUNT_A, testConfig } from './helpers/runtime.ts';
import { GERMAN, renderGray, textPdf } from './fixtures/documents.ts';
import { attachmentOnlyEncryptedPdf } from './fixtures/encrypted-attachment.ts';
import { extractHarness } from './fixtures/extract-harness.ts';
import { makePdf, nestedFormsPage, wrap } from './fixtures/make-pdf.ts';
import { XFA_PLACEHOLDER, xfaFormPdf } from './fixtures/xfa-pdf.ts';
import { childrenOf, pngSize, withInputsOf } from './fixtures/processes.ts';

// Real-world PDF behaviour (issue 13): the text layer from poppler, a quality gate per
// page, OCR only where a page shows an image or its text is junk, failed pages skipped.
// PDFs made by the suite, read by the installed poppler, pdf.js and tesseract.
const h = extractHarness();
const { addDocument, extract, chunksOf, statsOf, expectFailure } = h;

const textOf = async (doc: string) => (await chunksOf(doc)).map((c) => c.content).join('\n');
const layersOf = (stats: Record<string, unknown>) =>
  (stats.page_layers as Record<string, string>[]).map(
    ({ file: _, ocr_dpi: __, failed_why: ___, ocr_language: ____, ...layers }) => layers,
  );

describe('extract_text: PDF text layer and OCR per page', () => {
  it('reads the values of filled-in form fields (pdf.js alone skips them)', async () => {
    const pdf = makePdf([
      { kind: 'form', label: 'Antrag auf Urlaub, Name:', field: 'name', value: 'Erika Mustermann' },
    ]);
    const doc = await addDocument(ACCOUNT_A, [{ name: 'antrag.pdf', content: pdf }]);
    const stats = statsOf(await extract(doc));
    expect(await textOf(doc)).toMatch(/Antrag auf Urlaub, Name:\s+Erika Mustermann/);
    expect(stats).toMatchObject({ pages: 1, ocr_pages: 0 });
  });

  it('reads a dynamic XFA form from its layout, filled-in values included, not its placeholder page', async () => {
    // pdf.js's xfa_filled_imm1344e.pdf (a government form, 7 pages of fields) came back as
    // "Please wait... your PDF viewer may not be able to display this type of document".
    const pdf = xfaFormPdf('Antrag auf Urlaub', [
      { name: 'Name', caption: 'Name der Antragstellerin:', value: 'Erika Mustermann' },
      { name: 'Ort', caption: 'Wohnort:', value: 'München' },
    ]);
    const doc = await addDocument(ACCOUNT_A, [{ name: 'xfa-antrag.pdf', content: pdf }]);
    const stats = statsOf(await extract(doc));
    expect(stats).toMatchObject({ pages: 1, ocr_pages_tried: 0 });
    const text = await textOf(doc);
    expect(text).toMatch(
      /^Antrag auf Urlaub\s+Name der Antragstellerin:\s+Erika Mustermann\s+Wohnort:\s+München/,
    );
    expect(text).not.toContain(XFA_PLACEHOLDER.slice(0, 30));

    // A form pdf.js cannot lay out (pdf.js's xfa_issue14315.pdf): its placeholder is no
    // text of the document, and the user is told what to do.
    const empty = await addDocument(ACCOUNT_A, [{ name: 'leer.pdf', content: xfaFormPdf('', []) }]);
    await expectFailure(
      await extract(empty),
      empty,
      'UNSUPPORTED_FILE',
      /^leer\.pdf: the PDF is a dynamic XFA form whose pages could not be laid out, and its PDF pages are only a placeholder; save it as an ordinary PDF \(print to PDF\) and upload that$/,
    );
  }, 60_000);

  it('a PDF whose only encrypted part is an attachment is read, not refused as password-protected', async () => {
    // pdf.js alone refuses this file (PasswordException); qpdf confirms the password.
    const pdf = attachmentOnlyEncryptedPdf(`Sichtbarer Text. ${GERMAN}`);
    const doc = await addDocument(ACCOUNT_A, [{ name: 'mit-anhang.pdf', content: pdf }]);
    expect(statsOf(await extract(doc))).toMatchObject({ pages: 1, ocr_pages: 0 });
    expect(await textOf(doc)).toMatch(/^Sichtbarer Text\. Grüße aus München/);
    expect(await textOf(doc)).not.toContain('Geheimer Anhang');
  });

  it('a page whose text layer is junk (control characters) is OCRed, the junk never stored', async () => {
    const pdf = makePdf([
      { kind: 'text', lines: ['Erste Seite mit echtem Text, lang genug zum Lesen.'] },
      { kind: 'text', lines: wrap(GERMAN), garbled: true },
    ]);
    const doc = await addDocument(ACCOUNT_A, [{ name: 'kaputte-schrift.pdf', content: pdf }]);
    const stats = statsOf(await extract(doc));
    expect(stats).toMatchObject({ pages: 2, ocr_pages: 1, pages_failed: 0 });
    expect(layersOf(stats)).toEqual([{ text: '1', ocr: '2', blank: '', failed: '' }]);
    const chunks = await chunksOf(doc);
    const second = chunks
      .filter((c) => c.page_end === 2)
      .map((c) => c.content)
      .join('\n');
    expect(second).toMatch(/Straßenbahnfahrer fährt über die\s+Brücke/);
    // eslint-disable-next-line no-control-regex
    expect(chunks.map((c) => c.content).join('')).not.toMatch(/[\u0000-\u0008\u000e-\u001f]/);

    // OCR off: the junk page counts as failed, the rest is stored.
    const off = statsOf(await extract(doc, { debug: { ocr: 'off' } }));
    expect(layersOf(off)).toEqual([{ text: '1', ocr: '', blank: '', failed: '2' }]);
    expect((off.page_layers as Record<string, unknown>[])[0]!.failed_why).toEqual({
      'its text layer is junk, and OCR is off for this job': '2',
    });
    expect(await textOf(doc)).not.toMatch(/Straßenbahnfahrer/);

    // Only junk, OCR off: the job says so, not that the file may be damaged.
    const junk = await addDocument(ACCOUNT_A, [
      {
        name: 'nur-kaputt.pdf',
        content: makePdf([{ kind: 'text', lines: wrap(GERMAN), garbled: true }]),
      },
    ]);
    await expectFailure(
      await extract(junk, { debug: { ocr: 'off' } }),
      junk,
      'INVALID_INPUT',
      /^nur-kaputt\.pdf: no text found: its one page has no usable text layer, and OCR is off for this job$/,
    );
  }, 60_000);

  it('a PDF whose header line is lost is read, as poppler reads it', async () => {
    // pdf.js's bug1606566.pdf: refused as "declared as application/pdf but its content is text".
    const whole = textPdf([`Ohne Kopfzeile. ${GERMAN}`]);
    const headerless = whole.subarray(whole.indexOf('\n') + 1);
    expect(headerless.subarray(0, 12).toString('latin1')).not.toContain('%PDF');
    const doc = await addDocument(ACCOUNT_A, [
      { name: 'ohne-kopf.pdf', content: headerless, mime: 'application/pdf' },
    ]);
    expect(statsOf(await extract(doc))).toMatchObject({ pages: 1, ocr_pages_tried: 0 });
    expect(await textOf(doc)).toMatch(/^Ohne Kopfzeile\. Grüße aus München/);
  }, 60_000);

  it('a table of contents is text: dot leaders are no junk, nothing is OCRed', async () => {
    // Seen in pdf.js's test corpus (basicapi.pdf): the dots made the page "garbled", and
    // OCR read them as "oo. ccc nn".
    const leaders = (entry: string, page: number) =>
      `${entry} ${'.'.repeat(70 - entry.length)} ${page}`;
    const pdf = makePdf([
      {
        kind: 'text',
        lines: [
          'Inhalt',
          leaders('Kapitel 1', 2),
          leaders('Abschnitt 1.1', 3),
          leaders('Kapitel 2', 5),
        ],
      },
    ]);
    const doc = await addDocument(ACCOUNT_A, [{ name: 'inhalt.pdf', content: pdf }]);
    const stats = statsOf(await extract(doc));
    expect(stats).toMatchObject({ pages: 1, ocr_pages_tried: 0 });
    expect(layersOf(stats)).toEqual([{ text: '1', ocr: '', blank: '', failed: '' }]);
    expect(await textOf(doc)).toMatch(/^Inhalt\s+Kapitel 1 \.{61} 2\s+Abschnitt 1\.1 \.{57} 3/);
  }, 60_000);

  it('OCRs only pages without usable text that show an image: blank pages and titles stay as they are', async () => {
    const scan = renderGray(textPdf([GERMAN]), h.work);
    const pdf = makePdf([
      { kind: 'text', lines: wrap(`Einleitung. ${GERMAN}`) },
      { kind: 'text', lines: [] },
      { kind: 'text', lines: ['Seite 3'] },
      scan,
      { kind: 'text', lines: [] },
    ]);
    const doc = await addDocument(ACCOUNT_A, [{ name: 'gemischt.pdf', content: pdf }]);
    const stats = statsOf(await extract(doc));
    // Only the scan is rendered: the blank pages and the title are not.
    expect(stats).toMatchObject({
      pages: 5,
      ocr_pages: 1,
      ocr_pages_tried: 1,
      blank_pages: 2,
      pages_failed: 0,
    });
    expect(layersOf(stats)).toEqual([{ text: '1,3', ocr: '4', blank: '2,5', failed: '' }]);
    const chunks = await chunksOf(doc);
    expect(chunks.find((c) => c.content.includes('Seite 3'))).toBeDefined();
    expect(chunks.at(-1)).toMatchObject({ page_end: 4 });
    expect(await textOf(doc)).toMatch(/Grüße aus München/);
  }, 60_000);

  it("renders a scanned page for OCR at its images' resolution: a big page with a 72 ppi picture at 150 dpi, a 300 ppi scan at 300", async () => {
    // pdf.js's issue5567.pdf: a 1500 × 1125 pt page holding a 72 ppi picture was rendered
    // to 25 MP by its size alone and took 53 s of tesseract.
    const text = textPdf([GERMAN]);
    const picture = renderGray(text, h.work, 1, 150); // 1241 × 1754 px
    // One pixel per point: 72 ppi on a 17 × 24 inch page (by size alone: 243 dpi, 25 MP).
    const big = { ...picture, pageWidth: picture.width, pageHeight: picture.height };
    const scan = renderGray(text, h.work, 1, 300); // A4 at 300 ppi
    const doc = await addDocument(ACCOUNT_A, [
      { name: 'plakat-und-scan.pdf', content: makePdf([big, scan]) },
    ]);
    const { result: stats, inputs } = await withInputsOf('tesseract', h.work, async () =>
      statsOf(await extract(doc)),
    );
    expect(stats).toMatchObject({ pages: 2, ocr_pages: 2 });
    expect((stats.page_layers as Record<string, unknown>[])[0]).toMatchObject({
      ocr: '1-2',
      ocr_dpi: { '150': '1', '300': '2' },
    });
    // What tesseract got, in dots per inch of each page.
    const dpiOf = (name: string, widthPt: number) =>
      Math.round((pngSize(inputs.get(name)!).width * 72) / widthPt);
    expect([...inputs.keys()].sort()).toEqual(['ocr-page-1.png', 'ocr-page-2.png']);
    expect(dpiOf('ocr-page-1.png', big.pageWidth)).toBe(150);
    expect(dpiOf('ocr-page-2.png', 595)).toBe(300);
    const chunks = await chunksOf(doc);
    for (const page of [1, 2]) {
      const read = chunks.filter((c) => c.page_start <= page && c.page_end >= page);
      expect(read.map((c) => c.content).join('\n')).toMatch(/Grüße aus München/);
    }
  }, 120_000);

  it("OCRs pages in parallel, up to the job's CPUs (one tesseract thread each)", async () => {
    const scan = renderGray(textPdf([GERMAN]), h.work);
    const doc = await addDocument(ACCOUNT_A, [
      { name: 'stapel.pdf', content: makePdf(Array.from({ length: 6 }, () => scan)) },
    ]);
    const job = await h.db.db.enqueueJob({
      accountId: ACCOUNT_A,
      jobType: 'extract_text',
      documentId: doc,
      debug: {},
    });
    const runner = execa(process.execPath, ['cli/main.ts', 'run', '--job-id', job.id], {
      env: { PATH: process.env.PATH ?? '', ...configToEnv(testConfig(h.db.url, h.root)) },
      extendEnv: false,
      reject: false,
    });
    // The most OCR tools seen running at once, sampled until the runner exits.
    let most = 0;
    let exited = false;
    void runner.finally(() => (exited = true));
    while (!exited) {
      const tools = (await childrenOf(runner.pid!)).filter(
        (c) => ['pdftoppm', 'tesseract'].includes(c.name) && c.state !== 'Z',
      );
      most = Math.max(most, tools.length);
    }
    expect((await runner).exitCode).toBe(0);
    const done = await h.db.db.getJob(job.id);
    expect(done?.debug.stats).toMatchObject({ ocr_pages: 6, ocr_pages_tried: 6 });
    // extract_text asks for 2 CPUs; a machine with one gets one page at a time.
    expect(most).toBe(Math.min(2, availableParallelism()));
  }, 120_000);

  it('a page that cannot be rendered in its time is skipped and counted; the job fails only when no page yields text', async () => {
    const scan = renderGray(textPdf([GERMAN]), h.work);
    const pdf = makePdf([{ kind: 'text', lines: wrap(GERMAN) }, scan, scan]);
    const doc = await addDocument(ACCOUNT_A, [{ name: 'teils.pdf', content: pdf }]);
    // 1 ms per page: every render runs out of time.
    const env = { HD_OCR_PAGE_TIMEOUT_MS: '1' };
    const stats = statsOf(await extract(doc, { env }));
    expect(stats).toMatchObject({ pages: 3, ocr_pages: 0, pages_failed: 2 });
    expect(layersOf(stats)).toEqual([{ text: '1', ocr: '', blank: '', failed: '2-3' }]);
    expect(await textOf(doc)).toMatch(/^Grüße aus München/);

    const scans = await addDocument(ACCOUNT_A, [
      { name: 'nur-scans.pdf', content: makePdf([scan, scan]) },
    ]);
    await expectFailure(
      await extract(scans, { env }),
      scans,
      'INVALID_INPUT',
      /^nur-scans\.pdf: its 2 pages could not be read or rendered; the file may be damaged$/,
    );
  }, 60_000);

  it('a page whose text layer hangs poppler is skipped and counted; the rest is read, in one job', async () => {
    // A real hang, not a simulated one: page 2 draws nested forms 10^9 times, which
    // pdftotext (and pdf.js, pdftoppm, pdfimages) would work on for hours.
    const pdf = makePdf([
      { kind: 'text', lines: wrap(GERMAN) },
      nestedFormsPage(9),
      { kind: 'text', lines: ['Dritte Seite.'] },
      { kind: 'text', lines: wrap(`Vierte Seite. ${GERMAN}`) },
    ]);
    const doc = await addDocument(ACCOUNT_A, [{ name: 'haengt.pdf', content: pdf }]);
    // Seconds: a whole page of text comes out of pdftotext in milliseconds, even on a
    // loaded machine; the hanging page costs one limit in the pass, one read alone.
    const env = { HD_EXTRACT_PAGE_TIMEOUT_MS: '3000' };
    const stats = statsOf(await extract(doc, { env }));
    expect(stats).toMatchObject({ pages: 4, pages_failed: 1, ocr_pages: 0 });
    expect(layersOf(stats)).toEqual([{ text: '1,3-4', ocr: '', blank: '', failed: '2' }]);
    const text = await textOf(doc);
    expect(text).toMatch(/^Grüße aus München/);
    expect(text).toMatch(/Dritte Seite\.\s+Vierte Seite\. Grüße aus München/);

    const only = await addDocument(ACCOUNT_A, [
      { name: 'nur-haengt.pdf', content: makePdf([nestedFormsPage(9)]) },
    ]);
    await expectFailure(
      await extract(only, { env }),
      only,
      'INVALID_INPUT',
      /^nur-haengt\.pdf: its one page could not be read or rendered; the file may be damaged$/,
    );
  }, 120_000);

  it('a stall of buffered output is no hung page: pages slow to print are read, none skipped', async () => {
    // pdftotext prints in 4 KiB blocks: 20 pages that each take ~0.3 s and print only
    // their form feed stay in its buffer past a 2 s limit. The first stall is checked by
    // reading that page alone (fast), then the output is unbuffered: nothing is skipped.
    const pages = [
      ...Array.from({ length: 20 }, () => nestedFormsPage(4)),
      { kind: 'text' as const, lines: ['Letzte Seite.'] },
    ];
    const path = join(h.work, 'langsam.pdf');
    writeFileSync(path, makePdf(pages));
    const limits = {
      timeoutMs: 120_000,
      maxMemoryMb: 1024,
      signal: new AbortController().signal,
      what: 'langsam.pdf',
    };
    const layer = await pdfToText(path, () => 21, limits, 2000);
    expect(layer.failed).toEqual([]);
    expect(layer.texts).toHaveLength(21);
    expect(layer.texts[20]).toMatch(/^Letzte Seite\./);
  }, 120_000);

  it('says in one sentence why a PDF gave no text', async () => {
    const cases: [string, Buffer, RegExp][] = [
      ['leer.pdf', makePdf([]), /^leer\.pdf: the PDF has no pages$/],
      [
        'weiss.pdf',
        makePdf([
          { kind: 'text', lines: [] },
          { kind: 'text', lines: [] },
        ]),
        /^weiss\.pdf: no text found: its 2 pages have neither a text layer nor images$/,
      ],
      [
        'rauschen.pdf',
        makePdf([
          { kind: 'image', width: 300, height: 300, gray: new Uint8Array(90_000).fill(255) },
        ]),
        /^rauschen\.pdf: no text found in its one page, neither in the text layer nor by OCR \(languages deu\+eng\)$/,
      ],
    ];
    for (const [name, content, message] of cases) {
      const doc = await addDocument(ACCOUNT_A, [{ name, content }]);
      await expectFailure(await extract(doc), doc, 'INVALID_INPUT', message);
    }
  }, 60_000);
});

describe('page quality gate and OCR resolution', () => {
  it('counts letters and dot leaders, and judges a page, as the Unicode regular expressions do, on any text', () => {
    // The gate's fast paths (ASCII by table) against the plain regular expressions, on
    // made-up text of every kind: ASCII, Latin-1, Arabic, CJK, emoji and other astral
    // symbols, lone surrogates, controls, runs of equal punctuation and symbols.
    const LEADER = /((?!\ufffd)[\p{P}\p{S}])\1{2,}/gu;
    const NOT_LETTER_OR_DIGIT = /[^\p{L}\p{N}]/gu;
    const pieces = [
      'a',
      'Z',
      '7',
      ' ',
      '.',
      '...',
      '-',
      '----',
      '_',
      '=',
      '*',
      'ü',
      'ß',
      'É',
      '½',
      '²',
      'ع',
      'ب',
      '٣',
      '中',
      '文',
      '。',
      '\u00a0',
      '\u0007',
      '\ufffd',
      '\ufffd\ufffd\ufffd',
      '\ue000',
      '😀',
      '😀😀😀',
      '𝐀',
      '\ud83d',
      '\ude00',
      '\udbff',
      '€€€',
      '·',
      '…',
      '\t',
    ];
    // White space of every kind, and what only looks like it (U+0085, U+200B, soft hyphen).
    pieces.push('\r\n', '\f', '\u000b', '\u2028', '\u3000', '\ufeff', '\u0085', '\u200b');
    pieces.push('\u00ad', '\u0300', '\ufdd0', '\ufffe', '\u009f', '\u001f', '. . .', '- - -');
    // The whole gate, as it was written with the plain regular expressions.
    // eslint-disable-next-line no-control-regex
    const CONTROL = /[\u0000-\u0008\u000b\u000e-\u001f\u007f-\u009f]/gu;
    const UNMAPPED = /[\ufffd\ue000-\uf8ff\ufdd0-\ufdef\ufffe\uffff\u{f0000}-\u{10ffff}]/gu;
    const judgedByPatterns = (raw: string) => {
      const visible = raw.replace(/\s+/gu, '').replace(LEADER, '$1');
      const length = visible.length;
      if (length === 0) return { usable: false, visible: 0, why: 'empty' };
      const count = (pattern: RegExp) => visible.match(pattern)?.length ?? 0;
      const junk = count(CONTROL) + count(UNMAPPED);
      const letters = length - count(NOT_LETTER_OR_DIGIT);
      if (junk / length > MAX_JUNK_SHARE || (length >= 8 && letters / length < MIN_LETTER_SHARE))
        return { usable: false, visible: length, why: 'garbled' };
      return { usable: true, visible: length };
    };
    const bmp = pieces.filter((piece) => !/[\ud800-\udfff]/.test(piece));
    let seed = 13;
    const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31);
    for (let n = 0; n < 6000; n += 1) {
      // Every other text without surrogates: the gate's one pass counts those.
      const from = n % 2 === 0 ? bmp : pieces;
      const text = Array.from({ length: next() % 40 }, () => from[next() % from.length]).join('');
      expect(withoutLeaders(text), JSON.stringify(text)).toBe(text.replace(LEADER, '$1'));
      expect(notLetterOrDigit(text), JSON.stringify(text)).toBe(
        text.match(NOT_LETTER_OR_DIGIT)?.length ?? 0,
      );
      expect(judgePageText(text), JSON.stringify(text)).toEqual(judgedByPatterns(text));
    }
  });

  it('judges text layers: real text passes in any script, junk and unmapped glyphs fail', () => {
    expect(judgePageText(GERMAN)).toMatchObject({ usable: true });
    expect(judgePageText('مرحبا بالعالم، هذا نص عربي')).toMatchObject({ usable: true });
    expect(judgePageText('東京は日本の首都です。')).toMatchObject({ usable: true });
    expect(judgePageText('Summe: 1.234,56 € | 7 %')).toMatchObject({ usable: true });
    expect(judgePageText('Kapitel 1 ................................ 2')).toMatchObject({
      usable: true,
    });
    expect(judgePageText('Name: ______________________ Datum: ________')).toMatchObject({
      usable: true,
    });
    expect(judgePageText('3')).toMatchObject({ usable: true, visible: 1 });
    expect(judgePageText(' \n\f ')).toMatchObject({ usable: false, why: 'empty' });
    expect(judgePageText('\u0015\u0003\b\u0001 \u0004\u0018ab')).toMatchObject({
      usable: false,
      why: 'garbled',
    });
    expect(judgePageText('\ufffd\ufffd\ufffd\ufffd Text \ufffd\ufffd')).toMatchObject({
      usable: false,
    });
    expect(judgePageText('\ue001\ue002\ue003\ue004\ue005\ue006')).toMatchObject({ usable: false });
    expect(judgePageText('\uffff\uffff\uffff\uffff')).toMatchObject({ usable: false });
    expect(judgePageText('!!!"§$%&/()=?*+#-.,;:_<>')).toMatchObject({ usable: false });
  });

  it('renders a page mostly covered by images at about their resolution, within [150, configured], under the cap', () => {
    const a4 = { width: 595, height: 842 }; // 8.3 × 11.7 in, 96.6 square inches
    const scanAt = (ppi: number) => ({ ppi, squareInches: 96.6 });
    expect(ocrPageDpi(a4, scanAt(72), 300)).toBe(150);
    expect(ocrPageDpi(a4, scanAt(200), 300)).toBe(200);
    expect(ocrPageDpi(a4, scanAt(199.5), 300)).toBe(200);
    expect(ocrPageDpi(a4, scanAt(600), 300)).toBe(300);
    expect(ocrPageDpi(a4, scanAt(72), 100)).toBe(100); // never above the configured
    // No images, their resolution unknown, or a small picture on a page that may carry
    // drawn text: the configured resolution.
    expect(ocrPageDpi(a4, undefined, 300)).toBe(300);
    expect(ocrPageDpi(a4, { ppi: 0, squareInches: 0 }, 300)).toBe(300);
    expect(ocrPageDpi(a4, { ppi: 72, squareInches: 20 }, 300)).toBe(300);
    expect(ocrPageDpi(undefined, scanAt(72), 300)).toBe(300);
    // A 36 × 48 inch plan scanned at 150 ppi: the pixel cap still holds.
    const plan = { width: 36 * 72, height: 48 * 72 };
    const dpi = ocrPageDpi(plan, { ppi: 150, squareInches: 36 * 48 }, 300);
    expect(dpi).toBe(ocrDpi(plan.width, plan.height, 300));
    expect(36 * dpi * 48 * dpi).toBeLessThanOrEqual(OCR_MAX_PIXELS);
  });

  it('renders a big page at a lower resolution, never above the pixel cap', () => {
    expect(ocrDpi(595, 842, 300)).toBe(300);
    const plan = { width: 36 * 72, height: 48 * 72 };
    const dpi = ocrDpi(plan.width, plan.height, 300);
    expect(dpi).toBeLessThan(300);
    expect(36 * dpi * 48 * dpi).toBeLessThanOrEqual(OCR_MAX_PIXELS);
    expect(36 * (dpi + 1) * 48 * (dpi + 1)).toBeGreaterThan(OCR_MAX_PIXELS);
  });
});
