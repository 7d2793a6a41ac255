import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { configToEnv } from '../control-plane/config.ts';
import { writeFile } from 'node:fs/promises';
import { Chunker, chunkText } from '../runner/extract/chunker.ts';
import { htmlToText } from '../runner/extract/html.ts';
import { readTextPieces } from '../runner/extract/text-stream.ts';
import { decodeText, normalizeText } from '../runner/extract/text.ts';
import { extractHarness } from './fixtures/extract-harness.ts';
import { ACCOUNT_A, testConfig } from './helpers/runtime.ts';

// Bounds against payload amplification (issue 13): a big text file or a tiny chunk size
// must not turn into gigabytes of runner memory or hundreds of thousands of rows. The
// runner runs as its own process (`hd-runner run`) so that its peak RSS is its own.
const h = extractHarness();
const MiB = 1024 * 1024;

const PARAGRAPH =
  'Der Straßenbahnfahrer fährt über die Brücke, während die Möwen kreischen. Grüße aus München, Äpfel und Öl. ';

/** Writes a file of at least `mb` MiB made of `block` repeated, in pieces. */
async function writeBig(path: string, mb: number, block: string, head = '', tail = '') {
  const out = createWriteStream(path);
  const piece = Buffer.from(block.repeat(Math.ceil(MiB / Buffer.byteLength(block))));
  out.write(head);
  for (let written = 0; written < mb * MiB; written += piece.length) {
    if (!out.write(piece)) await new Promise<void>((resolve) => out.once('drain', () => resolve()));
  }
  await new Promise<void>((resolve, reject) =>
    out.end(tail, () => (out.errored ? reject(out.errored) : resolve())),
  );
}

/** A document of one big file, written straight into storage (no copy in memory). */
async function bigDocument(name: string, mb: number, block: string, head = '', tail = '') {
  const doc = await h.addDocument(ACCOUNT_A, [{ name, content: 'placeholder' }]);
  const { rows } = await h.db.sql.query(
    `update hd_document_files set size_bytes = null where document_id = $1 returning storage_path`,
    [doc],
  );
  await writeBig(join(h.root, 'hd_uploads_raw', rows[0].storage_path), mb, block, head, tail);
  return doc;
}

/** Runs `hd-runner run` for a new job in its own process: the job after it, its peak RSS. */
async function runChild(doc: string, debug: Record<string, unknown> = {}) {
  const job = await h.db.db.enqueueJob({
    accountId: ACCOUNT_A,
    jobType: 'extract_text',
    documentId: doc,
    debug,
  });
  const config = testConfig(h.db.url, h.root);
  const runner = await execa(
    process.execPath,
    ['--import', './bench/report-rss.mjs', 'cli/main.ts', 'run', '--job-id', job.id],
    {
      env: { PATH: process.env.PATH ?? '', ...configToEnv(config) },
      extendEnv: false,
      reject: false,
    },
  );
  const peak = /BENCH_MAX_RSS_KB=(\d+)/.exec(runner.stderr)?.[1];
  if (!peak) throw new Error(`runner exited ${runner.exitCode}: ${runner.stderr.slice(-2000)}`);
  return { job: (await h.db.db.getJob(job.id))!, peakMb: Number(peak) / 1024 };
}

const statsOf = (job: { debug: unknown }) => (job.debug as { stats: Record<string, number> }).stats;

describe('extract_text: bounds', () => {
  // A 50 MB file is 55,000 chunks of 1,500 characters; they are written in one
  // transaction, so they are in memory at once (about twice: the rows and their JSON).
  // Reading the file whole, decoding and normalising it in one string took 520 MB here
  // for plain text; the stream holds about one MiB of it at a time.
  it('a 50 MB text file is read as a stream: all of it in chunks, runner RSS bounded', async () => {
    const doc = await bigDocument('gross.txt', 50, `${PARAGRAPH.repeat(8)}\n\n`);
    const { job, peakMb } = await runChild(doc);
    expect(job.status).toBe('completed');
    const stats = statsOf(job);
    expect(stats.bytes).toBeGreaterThan(50 * MiB);
    // Every character but the paragraph breaks' trailing blanks lands in the text.
    expect(stats.characters).toBeGreaterThan(0.85 * stats.bytes!);
    expect(stats.chunks).toBeGreaterThan(stats.characters! / 1500);
    expect(peakMb).toBeLessThan(450);
  }, 120_000);

  it('a 50 MB HTML page is parsed as a stream too', async () => {
    const doc = await bigDocument(
      'gross.html',
      50,
      `<div><p>${PARAGRAPH.repeat(4)}</p><script>var x = "${'nicht sichtbar '.repeat(8)}";</script></div>\n`,
      '<!doctype html><html><head><title>Groß</title></head><body>',
      '</body></html>',
    );
    const { job, peakMb } = await runChild(doc);
    expect(job.status).toBe('completed');
    const [first] = await h.chunksOf(doc);
    expect(first.content).toMatch(/^Groß\n\nDer Straßenbahnfahrer/);
    expect(first.content).not.toContain('nicht sichtbar');
    expect(peakMb).toBeLessThan(450);
  }, 120_000);

  it('a tiny chunk_target_chars on a big file is refused at the chunk limit, early', async () => {
    const doc = await bigDocument('klein-geschnitten.txt', 50, `${PARAGRAPH}\n`);
    const { job, peakMb } = await runChild(doc, { chunk_target_chars: 100 });
    expect(job).toMatchObject({ status: 'failed', error_code: 'INVALID_INPUT' });
    expect(job.error).toMatch(
      /klein-geschnitten\.txt: the document makes more than 100000 chunks of 100 characters \(the limit per document\); use a larger chunk_target_chars/,
    );
    expect(await h.chunksOf(doc)).toEqual([]);
    // 100,000 chunks of 100 characters are about 10 MB of the 50: the rest is never held.
    expect(peakMb).toBeLessThan(300);
  }, 120_000);

  it('a text file over its type limit is refused, naming the limit', async () => {
    const doc = await bigDocument('riesig.md', 65, `${PARAGRAPH}\n`);
    await h.expectFailure(
      await h.extract(doc),
      doc,
      'INVALID_INPUT',
      /^riesig\.md: the file is 65\.\d MiB, more than the limit of 64\.0 MiB for text, Markdown and HTML files; split it/,
    );
  }, 120_000);

  it('payload numbers are bounded: chunk sizes out of range and overlap past half the target', async () => {
    const doc = await h.addDocument(ACCOUNT_A, [{ name: 'a.txt', content: PARAGRAPH }]);
    for (const [debug, message] of [
      [{ chunk_target_chars: 99 }, /chunk_target_chars: .*>=100/],
      [{ chunk_target_chars: 100_001 }, /chunk_target_chars: .*<=100000/],
      [{ chunk_overlap_chars: -1 }, /chunk_overlap_chars: .*>=0/],
      [
        { chunk_target_chars: 1000, chunk_overlap_chars: 501 },
        /chunk_overlap_chars: at most half of chunk_target_chars/,
      ],
      [{ chunk_target_chars: 1.5 }, /chunk_target_chars: .*expected int/],
    ] as const) {
      await h.expectFailure(
        await h.extract(doc, { debug }),
        doc,
        'INVALID_INPUT',
        new RegExp(`job payload \\(debug\\) is invalid: ${message.source}`),
      );
    }
  });
});

describe('Chunker: text in pieces', () => {
  it('cuts exactly the chunks of chunkText on the whole text, wherever the pieces end', () => {
    const text = [
      PARAGRAPH.repeat(3),
      'x'.repeat(700),
      `Ein Satz. ${'Wort '.repeat(90)}`,
      '   \n\n\n   ',
      PARAGRAPH.repeat(5),
    ].join('\n\n');
    const options = { targetChars: 200, overlapChars: 50 };
    const whole = chunkText(text, options);
    for (const size of [1, 7, 199, 401, 1000]) {
      const chunker = new Chunker(options);
      const chunks = [];
      for (let at = 0; at < text.length; at += size)
        chunks.push(...chunker.push(text.slice(at, at + size)));
      chunks.push(...chunker.end());
      expect(chunks).toEqual(whole);
    }
  });
});

describe('readTextPieces: a text file as a stream', () => {
  // Files of a few MiB, so that pieces (1 MiB) end inside CRLFs, paragraphs and characters.
  const cases: [string, Buffer, 'plain' | 'html'][] = [
    [
      'UTF-8 with CRLF line ends',
      Buffer.from(`${PARAGRAPH}\r\n${PARAGRAPH}\r\n\r\n`.repeat(14_000)),
      'plain',
    ],
    [
      'UTF-16LE with a BOM',
      Buffer.concat([
        Buffer.from([0xff, 0xfe]),
        Buffer.from(`${PARAGRAPH}\n\n`.repeat(12_000), 'utf16le'),
      ]),
      'plain',
    ],
    [
      'Windows-1252, the first byte that is not UTF-8 past the first MiB',
      Buffer.concat([
        Buffer.from('Abc def.\n\n'.repeat(250_000)),
        Buffer.from('Gr\xfc\xdfe \x80 5\n', 'latin1'),
      ]),
      'plain',
    ],
    ['one line of 3 MiB without a break', Buffer.from('wort '.repeat(600_000)), 'plain'],
    [
      'HTML',
      Buffer.from(
        `<html><body>${`<p>${PARAGRAPH}<br>zweite Zeile</p><script>x()</script>\n`.repeat(15_000)}</body></html>`,
      ),
      'html',
    ],
  ];
  it.each(cases)(
    '%s: the pieces joined are the whole text, normalised',
    async (_, bytes, format) => {
      const file = join(h.work, 'stream.txt');
      await writeFile(file, bytes);
      const pieces: string[] = [];
      for await (const piece of readTextPieces(file, format)) pieces.push(piece);
      const raw = decodeText(bytes);
      const whole = normalizeText(format === 'html' ? htmlToText(raw) : raw);
      expect(bytes.length).toBeGreaterThan(2 * MiB);
      expect(pieces.length).toBeGreaterThan(1);
      // A paragraph longer than a piece is the one place a break is added, between words.
      const joined = pieces.join('');
      if (_.startsWith('one line')) expect(joined.replace(/\s+/g, ' ')).toBe(whole);
      else expect(joined).toBe(whole);
    },
  );
});
