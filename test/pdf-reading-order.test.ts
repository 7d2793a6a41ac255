import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { extractPdfText } from '../runner/extract/pdf-text.ts';
import { requireTools } from './fixtures/documents.ts';
import { makePdf } from './fixtures/make-pdf.ts';
import { rightToLeftPage } from './fixtures/rtl-pdf.ts';
import { tempDir } from './helpers/runtime.ts';

// Right-to-left text read by pdf-parse (pdf.js in its child process), the reader of files
// poppler refuses and of pages poppler finds empty or garbled: Arabic came back with the
// words of every line reversed (issue 13's red team; pdf.js's ArabicCIDTrueType.pdf). A
// real PDF drawn as word processors draw it, read by the real parser, compared with what
// the words are and with what poppler (`pdftotext`) reads.
const LINES = ['أنواع الخطوط العربية', 'تقرير المبيعات لعام 2024 من شركة ACME', 'שלום עולם יפה'];
// pdftotext marks embedded directions (U+202A-U+202E); they are not text.
const plain = (text: string) =>
  text
    .replace(/[\u202a-\u202e\u2066-\u2069]/g, '')
    .split('\n')
    .map((line) => line.replace(/\s+/g, ' ').trim())
    .filter(Boolean);

describe('reading order of right-to-left text', () => {
  it('pdf-parse gives Arabic and Hebrew lines in reading order, as pdftotext does', async () => {
    requireTools('pdftotext');
    const file = join(await tempDir('hd-rtl-'), 'arabisch.pdf');
    await writeFile(file, makePdf([rightToLeftPage(LINES)]));

    const pages: string[] = [];
    await extractPdfText(file, {
      name: 'arabisch.pdf',
      maxPages: 10,
      timeoutMs: 60_000,
      maxMemoryMb: 1024,
      signal: new AbortController().signal,
      onPage: (page) => {
        pages.push(page.text);
      },
    });
    expect(plain(pages.join('\n'))).toEqual(LINES);

    // The fixture is what poppler reads too (it drops a space next to the number).
    const { stdout } = await execa('pdftotext', ['-enc', 'UTF-8', file, '-']);
    const poppler = plain(stdout);
    expect(poppler[0]).toBe(LINES[0]);
    expect(poppler[2]).toBe(LINES[2]);
    expect(poppler[1]!.split(' ').slice(0, 3)).toEqual(LINES[1]!.split(' ').slice(0, 3));
  }, 60_000);
});
