import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { OUTPUTS_BUCKET } from '../contract/storage-paths.ts';
import { createLogger } from '../control-plane/logger.ts';
import { FsStorage } from '../control-plane/storage/fs.ts';
import { runJob } from '../runner/run-job.ts';
import { ACCOUNT_A, testConfig } from './helpers/runtime.ts';
import { GERMAN, textPdf } from './fixtures/documents.ts';
import { extractHarness } from './fixtures/extract-harness.ts';

// extract_text's stored results (include_*) through runJob: real PostgreSQL, fs storage,
// a PDF made by the suite, pages rendered by the installed poppler. The archive is read
// back with the system's unzip, as a user would.
const h = extractHarness();

const artifactsOf = async (jobId: string) =>
  (
    await h.db.sql.query<{
      kind: string;
      name: string;
      storage_path: string;
      content_type: string;
      size_bytes: string;
      sha256: string;
    }>(
      `select kind, name, storage_path, content_type, size_bytes, sha256 from hd_artifacts
        where job_id = $1 order by kind, name`,
      [jobId],
    )
  ).rows;

const sha = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');
const stored = (key: string) => readFile(join(h.root, OUTPUTS_BUCKET, key));

/** PNG and JPEG sizes from their headers. */
function pixels(image: Buffer): { width: number; height: number } {
  if (image.subarray(1, 4).toString() === 'PNG')
    return { width: image.readUInt32BE(16), height: image.readUInt32BE(20) };
  for (let i = 2; i < image.length;) {
    const marker = image[i + 1]!;
    if (marker >= 0xc0 && marker <= 0xc3)
      return { width: image.readUInt16BE(i + 7), height: image.readUInt16BE(i + 5) };
    i += 2 + image.readUInt16BE(i + 2);
  }
  throw new Error('not a PNG or JPEG');
}

describe('extract_text: artifacts on request', () => {
  it('stores nothing unless asked (today’s behaviour and cost)', async () => {
    const doc = await h.addDocument(ACCOUNT_A, [
      { name: 'plain.pdf', content: textPdf(['Eins.']) },
    ]);
    const outcome = await h.extract(doc);
    expect(outcome.outcome).toBe('completed');
    if (outcome.outcome !== 'completed') return;
    expect(await artifactsOf(outcome.job.id)).toEqual([]);
    expect(h.statsOf(outcome)).not.toHaveProperty('artifacts');
    expect(await readdir(h.root)).not.toContain(OUTPUTS_BUCKET);
  });

  it('page texts, page images, previews and a zip of them, each recorded with its checksum', async () => {
    const pages = [`Erste Seite. ${GERMAN}`, 'Zweite Seite, kurz.'];
    const doc = await h.addDocument(ACCOUNT_A, [
      { name: 'Bericht (Q1).pdf', content: textPdf(pages) },
    ]);
    const outcome = await h.extract(doc, {
      debug: { include_texts: true, include_images: true, include_previews: true, image_dpi: 72 },
    });
    const stats = h.statsOf(outcome);
    if (outcome.outcome !== 'completed') return;
    const rows = await artifactsOf(outcome.job.id);
    const names = rows.map((r) => `${r.kind}/${r.name}`);
    expect(names).toEqual([
      'archive/artifacts.zip',
      'page_image/Bericht (Q1).pdf/p0001.png',
      'page_image/Bericht (Q1).pdf/p0002.png',
      'page_text/Bericht (Q1).pdf/p0001.md',
      'page_text/Bericht (Q1).pdf/p0002.md',
      'preview/Bericht (Q1).pdf/p0001.jpg',
      'preview/Bericht (Q1).pdf/p0002.jpg',
    ]);
    expect(stats).toMatchObject({ artifacts: 7 });
    for (const row of rows) {
      const bytes = await stored(row.storage_path);
      expect(row.storage_path).toBe(
        `accounts/${ACCOUNT_A}/jobs/${outcome.job.id}/${row.kind}/${row.name}`,
      );
      expect([Number(row.size_bytes), row.sha256]).toEqual([bytes.length, sha(bytes)]);
    }
    const text = (name: string) => stored(rows.find((r) => r.name === name)!.storage_path);
    expect(String(await text('Bericht (Q1).pdf/p0002.md'))).toBe(
      '# Bericht (Q1).pdf, page 2\n\nZweite Seite, kurz.\n',
    );
    const first = String(await text('Bericht (Q1).pdf/p0001.md'));
    expect(first).toMatch(/^# Bericht \(Q1\)\.pdf, page 1\n\nErste Seite\. Grüße aus München/);
    expect(first).not.toContain('Zweite Seite');
    // A4 (595 × 842 pt) at 72 dpi; previews at most 256 px on their longest side.
    expect(pixels(await text('Bericht (Q1).pdf/p0001.png'))).toEqual({ width: 595, height: 842 });
    const preview = pixels(await text('Bericht (Q1).pdf/p0001.jpg'));
    expect(Math.max(preview.width, preview.height)).toBe(256);

    const zip = join(h.work, `${outcome.job.id}.zip`);
    await writeFile(zip, await stored(rows[0]!.storage_path));
    const listed = execFileSync('unzip', ['-Z1', zip], { encoding: 'utf8' }).trim().split('\n');
    expect(listed.sort()).toEqual(names.slice(1).sort());
    const inZip = execFileSync('unzip', ['-p', zip, 'page_text/Bericht (Q1).pdf/p0002.md']);
    expect(inZip).toEqual(await text('Bericht (Q1).pdf/p0002.md'));
    execFileSync('unzip', ['-tq', zip]); // CRCs check out
  });

  it('a file without pages (Markdown) gives its whole text once, overlaps not repeated', async () => {
    const paragraphs = Array.from({ length: 12 }, (_, i) => `Absatz ${i + 1}. ${GERMAN}`);
    const content = `# Notiz\n\n${paragraphs.join('\n\n')}\n`;
    const doc = await h.addDocument(ACCOUNT_A, [{ name: 'notiz.md', content }]);
    const outcome = await h.extract(doc, { debug: { include_texts: true } });
    if (outcome.outcome !== 'completed') throw new Error(outcome.outcome);
    expect((await h.chunksOf(doc)).length).toBeGreaterThan(5); // overlapping chunks
    const [text] = (await artifactsOf(outcome.job.id)).filter((r) => r.kind === 'page_text');
    expect(text!.name).toBe('notiz.md/p0001.md');
    const flat = (t: string) => t.replace(/\s+/g, ' ').trim();
    expect(flat(String(await stored(text!.storage_path)))).toBe(
      flat(`# notiz.md, page 1\n\n${content}`),
    );
  });

  it('a re-run of the job replaces its artifacts: same rows, same archive bytes', async () => {
    const doc = await h.addDocument(ACCOUNT_A, [
      { name: 'twice.pdf', content: textPdf(['A.', 'B.']) },
    ]);
    const first = await h.extract(doc, { debug: { include_texts: true } });
    if (first.outcome !== 'completed') throw new Error(first.outcome);
    const before = await artifactsOf(first.job.id);
    expect(before.map((r) => r.name)).toEqual([
      'artifacts.zip',
      'twice.pdf/p0001.md',
      'twice.pdf/p0002.md',
    ]);
    await h.db.db.requeueJob(first.job.id);
    const again = await runJob({
      db: h.db.db,
      storage: new FsStorage(h.root),
      config: testConfig(h.db.url, h.root),
      log: createLogger({ level: 'silent' }),
      jobId: first.job.id,
    });
    expect(again.outcome).toBe('completed');
    expect(await artifactsOf(first.job.id)).toEqual(before);
  });

  it('extraction_method: ocr reads every page by OCR, native never runs it', async () => {
    const pages = [`Erste Seite. ${GERMAN}`, `Zweite Seite. ${GERMAN}`];
    const doc = await h.addDocument(ACCOUNT_A, [{ name: 'm.pdf', content: textPdf(pages) }]);
    const ocr = h.statsOf(await h.extract(doc, { debug: { extraction_method: 'ocr' } }));
    expect(ocr).toMatchObject({ ocr_pages_tried: 2, ocr_pages: 2 });
    const native = h.statsOf(await h.extract(doc, { debug: { extraction_method: 'native' } }));
    expect(native).toMatchObject({ ocr_pages_tried: 0, ocr_pages: 0 });
    expect((await h.chunksOf(doc))[0]!.content).toMatch(/^Erste Seite\. Grüße aus München/);
  });

  it('refuses what the payload cannot mean, before any work', async () => {
    const doc = await h.addDocument(ACCOUNT_A, [{ name: 'x.pdf', content: textPdf(['X.']) }]);
    await h.expectFailure(
      await h.extract(doc, { debug: { ocr: 'off', extraction_method: 'ocr' } }),
      doc,
      'INVALID_INPUT',
      /extraction_method: asks for OCR, which ocr: off turns off/,
    );
    await h.expectFailure(
      await h.extract(doc, { debug: { include_images: true, image_dpi: 1200 } }),
      doc,
      'INVALID_INPUT',
      /image_dpi/,
    );
  });

  it('stops at the job output limit with OUTPUT_LIMIT_EXCEEDED and writes no chunks', async () => {
    const doc = await h.addDocument(ACCOUNT_A, [
      { name: 'big.pdf', content: textPdf(['Eins.', 'Zwei.']) },
    ]);
    await h.expectFailure(
      await h.extract(doc, { debug: { include_images: true, max_output_bytes: 2000 } }),
      doc,
      'OUTPUT_LIMIT_EXCEEDED',
      /past its output limit of 2000 bytes/,
    );
  });
});
