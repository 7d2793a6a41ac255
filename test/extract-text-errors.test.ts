import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ACCOUNT_A, ACCOUNT_B, putObject } from './helpers/runtime.ts';
import { bombPdf, encryptPdf, GERMAN, renderPng, textPdf } from './fixtures/documents.ts';
import { BUCKET, extractHarness } from './fixtures/extract-harness.ts';
import { makePdf } from './fixtures/make-pdf.ts';

// Each bad input must end the job at once with a clear code and leave no chunk behind.
const h = extractHarness();
const { addDocument, extract, chunksOf, statsOf, expectFailure } = h;

describe('extract_text: bad input fails with a clear code and writes nothing', () => {
  it('zero-byte file, even next to a good one', async () => {
    const doc = await addDocument(ACCOUNT_A, [
      { name: 'a-good.txt', content: 'Guter Text.' },
      { name: 'b-empty.pdf', content: '' },
    ]);
    await expectFailure(
      await extract(doc),
      doc,
      'INVALID_INPUT',
      /b-empty\.pdf: the file is empty \(0 bytes\)/,
    );
  });

  it('a damaged image is invalid input, said in one sentence', async () => {
    const png = renderPng(textPdf([GERMAN]), h.work, 'cut-image');
    const doc = await addDocument(ACCOUNT_A, [
      { name: 'foto.png', content: png.subarray(0, Math.floor(png.length / 3)) },
    ]);
    await expectFailure(
      await extract(doc),
      doc,
      'INVALID_INPUT',
      /^foto\.png: the image could not be read; it may be truncated or damaged$/,
    );
  });

  it('truncated and corrupt PDFs', async () => {
    const pdf = textPdf([GERMAN]);
    const truncated = await addDocument(ACCOUNT_A, [
      { name: 'cut.pdf', content: pdf.subarray(0, pdf.length - 200) },
    ]);
    await expectFailure(
      await extract(truncated),
      truncated,
      'INVALID_INPUT',
      /^cut\.pdf: the file is not a readable PDF; it may be truncated or damaged$/,
    );
    const garbage = Buffer.concat([Buffer.from('%PDF-1.7\n'), Buffer.alloc(2000, 0xa7)]);
    const corrupt = await addDocument(ACCOUNT_A, [{ name: 'kaputt.pdf', content: garbage }]);
    await expectFailure(await extract(corrupt), corrupt, 'INVALID_INPUT', /not a readable PDF/);
  });

  it('password-protected PDF', async () => {
    const doc = await addDocument(ACCOUNT_A, [
      { name: 'secret.pdf', content: encryptPdf(textPdf([GERMAN]), h.work) },
    ]);
    await expectFailure(
      await extract(doc),
      doc,
      'UNSUPPORTED_FILE',
      /secret\.pdf: the PDF is password-protected/,
    );
  });

  it('declared mime type that contradicts the content', async () => {
    const png = renderPng(textPdf(['x']), h.work, 'mislabelled');
    const doc = await addDocument(ACCOUNT_A, [
      { name: 'doc.pdf', content: png, mime: 'application/pdf' },
    ]);
    await expectFailure(
      await extract(doc),
      doc,
      'INVALID_INPUT',
      /declared as application\/pdf but its content is an image \(image\/png\)/,
    );
  });

  it('unsupported types', async () => {
    const zip = Buffer.concat([Buffer.from('PK\x03\x04', 'latin1'), Buffer.alloc(100, 1)]);
    const doc = await addDocument(ACCOUNT_A, [{ name: 'archive.docx', content: zip }]);
    await expectFailure(await extract(doc), doc, 'UNSUPPORTED_FILE', /a ZIP container/);
  });

  it('file over the size limit, too many pages', async () => {
    const doc = await addDocument(ACCOUNT_A, [
      { name: 'big.pdf', content: textPdf([GERMAN, GERMAN, GERMAN]) },
    ]);
    await expectFailure(
      await extract(doc, { env: { HD_EXTRACT_MAX_FILE_BYTES: '1000' } }),
      doc,
      'INVALID_INPUT',
      /big\.pdf: the file is \d+ bytes, more than the limit of 1000 bytes/,
    );
    await expectFailure(
      await extract(doc, { env: { HD_EXTRACT_MAX_PAGES: '2' } }),
      doc,
      'INVALID_INPUT',
      /the PDF has 3 pages, more than the limit of 2/,
    );
  });

  it('a PDF of 20,000 pages is refused at the default limit, before its pages are parsed', async () => {
    const pages = Array.from({ length: 20_000 }, () => ({ kind: 'text' as const, lines: ['x'] }));
    const doc = await addDocument(ACCOUNT_A, [{ name: 'huge.pdf', content: makePdf(pages) }]);
    const started = performance.now();
    await expectFailure(
      await extract(doc),
      doc,
      'INVALID_INPUT',
      /^huge\.pdf: the PDF has 20000 pages, more than the limit of 5000; split the document$/,
    );
    expect(performance.now() - started).toBeLessThan(10_000);
  });

  it('decompression bomb: read within its memory bound (poppler streams it), not retried', async () => {
    // 400 MiB of blanks in one content stream, read with 200 MiB of address space at most.
    const doc = await addDocument(ACCOUNT_A, [{ name: 'bomb.pdf', content: bombPdf(400) }]);
    await expectFailure(
      await extract(doc, { env: { HD_EXTRACT_MAX_MEMORY_MB: '200' } }),
      doc,
      'INVALID_INPUT',
      /^bomb\.pdf: no text found: its one page has neither a text layer nor images$/,
    );
  }, 60_000);

  it('parser time limit', async () => {
    const doc = await addDocument(ACCOUNT_A, [{ name: 'slow.pdf', content: textPdf([GERMAN]) }]);
    await expectFailure(
      await extract(doc, { env: { HD_EXTRACT_PARSE_TIMEOUT_MS: '1' } }),
      doc,
      'PROCESSING_TIMEOUT',
      /^slow\.pdf: reading the text took longer than its limit of 1 ms$/,
    );
  });

  it('a path outside the tenant prefix is refused before anything is read', async () => {
    await putObject(h.root, BUCKET, `accounts/${ACCOUNT_B}/private.txt`, 'Geheimnis von B.');
    const doc = await addDocument(ACCOUNT_A, [
      { name: 'x.txt', content: 'x', key: `accounts/${ACCOUNT_B}/private.txt` },
    ]);
    await expectFailure(
      await extract(doc),
      doc,
      'PATH_OUTSIDE_TENANT',
      /not inside accounts\/aaaaaaaa/,
    );
  });

  it("another account's file rows are never listed, and its chunks are left alone", async () => {
    const doc = randomUUID();
    await addDocument(ACCOUNT_B, [{ name: 'b.txt', content: 'Text von Konto B.' }], doc);
    statsOf(await extract(doc, { account: ACCOUNT_B }));
    await expectFailure(await extract(doc), null, 'INVALID_INPUT', /has no files of this account/);
    const rows = await chunksOf(doc);
    expect(rows.map((r) => [r.account_id, r.content])).toEqual([[ACCOUNT_B, 'Text von Konto B.']]);
  });

  it('a job without a document', async () => {
    await expectFailure(await extract(null), null, 'INVALID_INPUT', /no document_id/);
  });
});
