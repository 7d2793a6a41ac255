import { createHash, randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ACCOUNT_A } from './helpers/runtime.ts';
import { GERMAN, renderGray, renderPng, textPdf } from './fixtures/documents.ts';
import { extractHarness } from './fixtures/extract-harness.ts';
import { makePdf } from './fixtures/make-pdf.ts';

// Real PostgreSQL, fs storage, PDFs made by the suite; OCR by the installed tesseract.
const h = extractHarness();
const { addDocument, extract, chunksOf, statsOf, expectFailure } = h;

const LONG_PAGE = (n: number) =>
  Array.from({ length: 6 }, (_, i) => `Seite ${n}, Satz ${i + 1}: ${GERMAN}`).join(' ');

describe('extract_text: PDFs', () => {
  it('extracts the text layer page by page, with umlauts, page ranges and offsets', async () => {
    const pdf = textPdf([LONG_PAGE(1), LONG_PAGE(2), 'Kurze dritte Seite. Ende.']);
    const doc = await addDocument(ACCOUNT_A, [
      { name: 'bericht.pdf', content: pdf, mime: 'application/pdf' },
    ]);
    const stats = statsOf(await extract(doc));
    const chunks = await chunksOf(doc);
    expect(stats).toMatchObject({
      files: 1,
      pages: 3,
      ocr_pages: 0,
      chunks: chunks.length,
      bytes: pdf.length,
    });
    expect(stats.duration_ms).toEqual(expect.any(Number));
    expect(chunks.length).toBeGreaterThan(4);
    expect(chunks[0]).toMatchObject({
      account_id: ACCOUNT_A,
      chunk_index: 0,
      page_start: 1,
      char_start: 0,
    });
    expect(chunks[0]!.content).toMatch(
      /^Seite 1, Satz 1: Grüße aus München\. Äpfel, Öl und Übermut/,
    );
    expect(chunks.at(-1)).toMatchObject({ page_end: 3 });
    expect(chunks.at(-1)!.content).toMatch(/Kurze dritte Seite\. Ende\.$/);
    expect(chunks.some((c) => c.page_start === 1 && c.page_end === 2)).toBe(true);
    for (const [i, c] of chunks.entries()) {
      expect(c.content.length).toBeLessThanOrEqual(300);
      expect(c.char_end - c.char_start).toBe(c.content.length);
      if (i > 0) expect(c.char_start).toBeGreaterThan(chunks[i - 1]!.char_start);
    }
    expect(stats.characters).toBe(chunks.at(-1)!.char_end);
    // The hash a re-run compares: SHA-256 of the content's UTF-8 bytes, in hex.
    for (const c of chunks)
      expect(c.content_sha256).toBe(createHash('sha256').update(c.content, 'utf8').digest('hex'));
  });

  it('re-run leaves exactly the same chunks; fewer chunks leave no stale tail', async () => {
    const pdf = textPdf([LONG_PAGE(1), LONG_PAGE(2)]);
    const doc = await addDocument(ACCOUNT_A, [{ name: 'twice.pdf', content: pdf }]);
    statsOf(await extract(doc));
    const first = await chunksOf(doc);
    const again = statsOf(await extract(doc));
    expect(again).toMatchObject({
      chunks_inserted: 0,
      chunks_updated: 0,
      chunks_unchanged: first.length,
      chunks_deleted: 0,
    });
    expect(await chunksOf(doc)).toEqual(first);

    const coarse = statsOf(
      await extract(doc, { debug: { chunk_target_chars: 2000, chunk_overlap_chars: 0 } }),
    );
    const after = await chunksOf(doc);
    expect(after.length).toBe(coarse.chunks);
    expect(after.length).toBeLessThan(first.length);
    expect(coarse.chunks_deleted).toBe(first.length - after.length);
    expect(after.map((c) => c.chunk_index)).toEqual(after.map((_, i) => i));
  });

  it('OCRs pages without a text layer (deu+eng), keeping the page numbers', async () => {
    const scan = renderGray(textPdf([GERMAN]), h.work);
    const pdf = makePdf([
      { kind: 'text', lines: ['Erste Seite mit echtem Text, lang genug zum Lesen.'] },
      scan,
    ]);
    const doc = await addDocument(ACCOUNT_A, [{ name: 'scan.pdf', content: pdf }]);
    const stats = statsOf(await extract(doc));
    expect(stats).toMatchObject({ pages: 2, ocr_pages: 1 });
    const text = (await chunksOf(doc)).map((c) => c.content).join('\n');
    expect(text).toContain('Erste Seite mit echtem Text');
    expect(text).toMatch(/Grüße aus München/);
    expect(text).toMatch(/Straßenbahnfahrer fährt über die\s+Brücke/);
    const last = (await chunksOf(doc)).at(-1)!;
    expect(last.page_end).toBe(2);
  }, 60_000);

  it('fails clearly on an unknown OCR language', async () => {
    const pdf = makePdf([renderGray(textPdf([GERMAN]), h.work)]);
    const doc = await addDocument(ACCOUNT_A, [{ name: 'scan-fra.pdf', content: pdf }]);
    await expectFailure(
      await extract(doc, { debug: { ocr_languages: 'xyzq' } }),
      doc,
      'INVALID_INPUT',
      /OCR language "xyzq" is not installed/,
    );
  }, 60_000);
});

describe('extract_text: text formats and images', () => {
  it('reads Markdown, HTML (through a parser) and Windows-1252 text, one chunk list across files', async () => {
    const html = `<!doctype html><html><head><title>Über uns</title><script>var hidden = "<p>geheim</p>";</script>
      <style>p { color: red }</style></head><body><h1>Willkommen &amp; Grüße</h1><p>Ein Absatz mit <b>fettem</b> Text.</p>
      <ul><li>eins</li><li>zwei</ul></body></html>`;
    const doc = await addDocument(ACCOUNT_A, [
      {
        name: 'a-notes.md',
        content: '# Titel\n\nEin *Markdown* Absatz über Öl.\n',
        mime: 'text/markdown',
      },
      { name: 'b-page.html', content: html, mime: 'text/html; charset=utf-8' },
      { name: 'c-legacy.txt', content: Buffer.from('Gr\xfc\xdfe aus K\xf6ln \x80 5.', 'latin1') },
    ]);
    const stats = statsOf(await extract(doc));
    expect(stats.file_types).toEqual({ text: 3 });
    const chunks = await chunksOf(doc);
    expect(chunks.map((c) => c.content)).toEqual([
      '# Titel\n\nEin *Markdown* Absatz über Öl.',
      'Über uns\n\nWillkommen & Grüße\n\nEin Absatz mit fettem Text.\n\neins\nzwei',
      'Grüße aus Köln € 5.',
    ]);
    expect(new Set(chunks.map((c) => c.file_id)).size).toBe(3);
    expect(chunks.every((c) => c.page_start === null)).toBe(true);
  });

  it('reads an image by OCR, and refuses one with no text', async () => {
    const png = renderPng(textPdf([GERMAN]), h.work, 'text-image');
    const doc = await addDocument(ACCOUNT_A, [
      { name: 'foto.png', content: png, mime: 'image/png' },
    ]);
    expect(statsOf(await extract(doc))).toMatchObject({ ocr_pages: 1, file_types: { image: 1 } });
    expect((await chunksOf(doc))[0]!.content).toMatch(/^Grüße aus München/);

    const blank = renderPng(makePdf([{ kind: 'text', lines: [] }]), h.work, 'blank-image');
    const empty = await addDocument(ACCOUNT_A, [{ name: 'leer.png', content: blank }]);
    await expectFailure(
      await extract(empty),
      empty,
      'INVALID_INPUT',
      /leer\.png: no text found in an image/,
    );
  }, 60_000);
});

describe('hd_replace_document_chunks (SQL)', () => {
  it('checks the lease, the indexes and that file ids belong to the document', async () => {
    const doc = await addDocument(ACCOUNT_A, [{ name: 'sql.txt', content: 'SQL.' }]);
    const other = await addDocument(ACCOUNT_A, [{ name: 'other.txt', content: 'Other.' }]);
    const { rows: files } = await h.db.sql.query(
      `select id from hd_document_files where document_id = $1`,
      [other],
    );
    const job = await h.db.db.enqueueJob({
      accountId: ACCOUNT_A,
      jobType: 'extract_text',
      documentId: doc,
      debug: {},
    });
    const [claimed] = await h.db.db.claimJobs({ workerId: 'w', jobId: job.id, leaseSeconds: 60 });
    const chunk = {
      chunk_index: 0,
      file_id: null,
      content: 'c',
      page_start: null,
      page_end: null,
      char_start: 0,
      char_end: 1,
      content_sha256: 'x',
    };
    await expect(
      h.db.db.replaceDocumentChunks(job.id, randomUUID(), [chunk]),
    ).rejects.toMatchObject({
      code: 'HDL01',
    });
    await expect(
      h.db.db.replaceDocumentChunks(job.id, claimed!.lease_token!, [{ ...chunk, chunk_index: 1 }]),
    ).rejects.toThrow(/chunk_index values must be 0\.\.0/);
    await expect(
      h.db.db.replaceDocumentChunks(job.id, claimed!.lease_token!, [
        { ...chunk, file_id: files[0].id },
      ]),
    ).rejects.toThrow(/not part of document/);
    await expect(
      h.db.db.replaceDocumentChunks(job.id, claimed!.lease_token!, [chunk]),
    ).resolves.toEqual({ inserted: 1, updated: 0, unchanged: 0, deleted: 0 });
  });
});
