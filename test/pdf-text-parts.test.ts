import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { findTool } from '../runner/extract/tools.ts';
import {
  MIN_PAGES_PER_PART,
  pageSpans,
  READ_WITHOUT_PDFINFO_BYTES,
  readPages,
} from '../runner/extract/poppler.ts';
import { GERMAN, textPdf } from './fixtures/documents.ts';
import { makePdf, nestedFormsPage, wrap } from './fixtures/make-pdf.ts';

// A long PDF's text layer read in parts at once, one pdftotext each, on the job's CPUs
// (issue 13). Real poppler; wrappers on PATH record each pdftotext's page range and, when
// asked, hold the first run until the second has started: the pages the first has not
// printed when pdfinfo has counted them are shared out, and a fast first run could
// otherwise print them all first (rightly read in one part then).
const work = mkdtempSync(join(tmpdir(), 'hd-text-parts-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const limits = () => ({
  timeoutMs: 120_000,
  maxMemoryMb: 1024,
  signal: new AbortController().signal,
  what: 'lang.pdf',
});
const pageWords = (num: number) => `Seite ${num} von vielen. ${GERMAN}`;

/**
 * readPages with pdftotext's page ranges, as `-f F -l L`, and pdfinfo's runs recorded by
 * wrappers; `hold`: the run from page 1 waits until another has started (at most 60 s: a
 * split that never comes then shows in the ranges, not as a hang). `countFirst`: pdfinfo
 * counts the pages beside the first run whatever the file (readPages' `withoutPdfinfo`
 * false), as for a big file; a split needs the count.
 */
async function readRecorded(
  path: string,
  parts: number,
  hold: boolean,
  {
    pageTimeoutMs = 60_000,
    countFirst = true,
    maxPages = 2000,
    bin = mkdtempSync(join(work, 'bin-')),
  } = {},
) {
  mkdirSync(bin, { recursive: true });
  const log = join(bin, 'ranges.log');
  const infoLog = join(bin, 'pdfinfo.log');
  const second = join(bin, 'second-started');
  writeFileSync(
    join(bin, 'pdfinfo'),
    ['#!/bin/sh', `echo "$*" >> '${infoLog}'`, `exec '${findTool('pdfinfo')}' "$@"`].join('\n'),
  );
  chmodSync(join(bin, 'pdfinfo'), 0o755);
  writeFileSync(
    join(bin, 'pdftotext'),
    [
      '#!/bin/sh',
      `echo "$4 $5 $6 $7" >> '${log}'`,
      `if [ "$5" != 1 ]; then touch '${second}'`,
      `elif [ ${hold ? 1 : 0} = 1 ]; then`,
      `  i=0; while [ ! -e '${second}' ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done`,
      'fi',
      `exec '${findTool('pdftotext')}' "$@"`,
    ].join('\n'),
  );
  chmodSync(join(bin, 'pdftotext'), 0o755);
  const path0 = process.env.PATH;
  process.env.PATH = `${bin}:${path0}`;
  try {
    const read = await readPages(
      path,
      maxPages,
      limits(),
      pageTimeoutMs,
      (pages) => {
        if (pages > maxPages) throw new Error(`${pages} pages, more than ${maxPages}`);
      },
      parts,
      !countFirst,
    );
    const ranges = readFileSync(log, 'utf8').trim().split('\n').sort();
    const infoRuns = existsSync(infoLog) ? readFileSync(infoLog, 'utf8').trim().split('\n') : [];
    return { read, ranges, infoRuns };
  } finally {
    process.env.PATH = path0;
  }
}

describe('the text layer of a long PDF in parts', () => {
  it("splits pages into the job's CPUs' spans, none shorter than the minimum", () => {
    expect(MIN_PAGES_PER_PART).toBe(100);
    expect(pageSpans(400, 2)).toEqual([
      [1, 200],
      [201, 400],
    ]);
    expect(pageSpans(401, 2)).toEqual([
      [1, 200],
      [201, 401],
    ]);
    expect(pageSpans(300, 4)).toEqual([
      [1, 100],
      [101, 200],
      [201, 300],
    ]);
    expect(pageSpans(199, 2)).toEqual([[1, 199]]);
    expect(pageSpans(1, 2)).toEqual([[1, 1]]);
    expect(pageSpans(1000, 1)).toEqual([[1, 1000]]);
    // The first run has printed 100 pages: it goes on in the first span, the rest shared out.
    expect(pageSpans(400, 2, 100)).toEqual([
      [1, 250],
      [251, 400],
    ]);
    // Too few pages left to be worth another run: a 200-page file whose first pages are out.
    expect(pageSpans(200, 2, 10)).toEqual([[1, 200]]);
    expect(pageSpans(200, 2, 500)).toEqual([[1, 200]]);
  });

  it('two pdftotexts, the first stopped at the end of its span, give the pages of one pass', async () => {
    const path = join(work, 'lang.pdf');
    writeFileSync(path, textPdf(Array.from({ length: 240 }, (_, i) => pageWords(i + 1))));
    const whole = await readRecorded(path, 1, false);
    const parts = await readRecorded(path, 2, true);
    expect(whole.ranges).toEqual(['-f 1 -l 2000']);
    // The first run starts before pdfinfo has counted the pages, the second after.
    expect(parts.ranges).toEqual(['-f 1 -l 2000', '-f 121 -l 240']);
    expect(parts.read.info.pages).toBe(240);
    expect(parts.read.texts).toHaveLength(240);
    expect(parts.read.texts).toEqual(whole.read.texts);
    parts.read.texts.forEach((text, i) => expect(text).toMatch(new RegExp(`^Seite ${i + 1} von`)));
    expect(parts.read.failed).toEqual([]);
  }, 60_000);

  it('a page that hangs poppler in the second part is skipped by its number; the rest is read', async () => {
    const pages = Array.from({ length: 200 }, (_, i) =>
      i === 159 ? nestedFormsPage(9) : { kind: 'text' as const, lines: wrap(pageWords(i + 1)) },
    );
    const path = join(work, 'haengt-hinten.pdf');
    writeFileSync(path, makePdf(pages));
    // Seconds: a page of text comes out of pdftotext in milliseconds, even on a loaded
    // machine; the hanging page costs one limit in the pass, one read alone.
    const { read } = await readRecorded(path, 2, true, { pageTimeoutMs: 3000 });
    expect(read.failed).toEqual([160]);
    expect(read.texts).toHaveLength(200);
    expect(read.texts[159]).toBe('');
    read.texts.forEach((text, i) => {
      if (i !== 159) expect(text).toMatch(new RegExp(`^Seite ${i + 1} von`));
    });
  }, 120_000);
});

describe('the text layer of a small PDF, without pdfinfo', () => {
  const pdfOf = (name: string, pages: number, extra = '') => {
    const path = join(work, name);
    const pdf = textPdf(Array.from({ length: pages }, (_, i) => pageWords(i + 1)));
    writeFileSync(path, Buffer.concat([pdf, Buffer.from(extra, 'latin1')]));
    return path;
  };

  it('counts the pages pdftotext printed: one run, no pdfinfo, the same pages as with it', async () => {
    const path = pdfOf('klein.pdf', 12);
    const alone = await readRecorded(path, 2, false, { countFirst: false });
    const counted = await readRecorded(path, 2, false);
    expect(alone.infoRuns).toEqual([]);
    expect(alone.ranges).toEqual(['-f 1 -l 2000']);
    expect(alone.read.info.pages).toBe(12);
    expect(alone.read.texts).toEqual(counted.read.texts);
    expect(counted.infoRuns).toHaveLength(1);
    expect(counted.read.info.pages).toBe(12);
  }, 60_000);

  it('on several CPUs, counts a file over 1 MiB first, to split it; on one, does not', async () => {
    // 40 pages of ~40 KB of numbers each (text that compresses little): over 1 MiB.
    const path = join(work, 'gross.pdf');
    const numbers = (page: number) =>
      Array.from({ length: 6000 }, (_, w) => ((page * 7919 + w * 104729) % 1000003).toString(36));
    writeFileSync(
      path,
      textPdf(Array.from({ length: 40 }, (_, i) => `${pageWords(i + 1)} ${numbers(i).join(' ')}`)),
    );
    expect(statSync(path).size).toBeGreaterThan(READ_WITHOUT_PDFINFO_BYTES);
    const two = await readRecorded(path, 2, false, { countFirst: false });
    const one = await readRecorded(path, 1, false, { countFirst: false });
    expect(two.infoRuns).toHaveLength(1);
    expect(one.infoRuns).toEqual([]);
    expect(one.read.info.pages).toBe(40);
    expect(one.read.texts).toEqual(two.read.texts);
  }, 60_000);

  it('asks pdfinfo where the bytes could hold an XFA form, or pdftotext stopped at the limit', async () => {
    // A comment naming /XFA after the end of the file: pdfinfo says whether it is a form.
    const named = await readRecorded(pdfOf('xfa-genannt.pdf', 3, '\n% /XFA\n'), 1, false, {
      countFirst: false,
    });
    expect(named.infoRuns).toHaveLength(1);
    expect(named.read.info).toMatchObject({ pages: 3, xfa: false });
    // The same name spelled with escapes, as a PDF may.
    const escaped = await readRecorded(pdfOf('xfa-maskiert.pdf', 3, '\n% /X#46A\n'), 1, false, {
      countFirst: false,
    });
    expect(escaped.infoRuns).toEqual([expect.stringMatching(/^-f 1 -l 2000 /)]);
    // Exactly the limit: pdftotext cannot tell whether more pages follow, pdfinfo can.
    const full = await readRecorded(pdfOf('voll.pdf', 5), 1, false, {
      countFirst: false,
      maxPages: 5,
    });
    expect(full.infoRuns).toHaveLength(1);
    expect(full.read.info.pages).toBe(5);
    expect(full.read.texts).toHaveLength(5);
    // More: its page tree says so (/Count 7), so pdfinfo counts at once, beside pdftotext
    // (-l 5: the page sizes pdfinfo reads when it counts first), and the file is refused.
    const bin = join(work, 'zu-lang-runs');
    await expect(
      readRecorded(pdfOf('zu-lang.pdf', 7), 1, false, { countFirst: false, maxPages: 5, bin }),
    ).rejects.toThrow('7 pages, more than 5');
    expect(readFileSync(join(bin, 'pdfinfo.log'), 'utf8')).toMatch(/^-f 1 -l 5 /);
  }, 60_000);

  it('a last page that hangs poppler is skipped; the count from pdfinfo ends the passes there', async () => {
    const pages = Array.from({ length: 6 }, (_, i) =>
      i === 5 ? nestedFormsPage(9) : { kind: 'text' as const, lines: wrap(pageWords(i + 1)) },
    );
    const path = join(work, 'haengt-am-ende.pdf');
    writeFileSync(path, makePdf(pages));
    const { read, infoRuns } = await readRecorded(path, 1, false, {
      pageTimeoutMs: 3000,
      countFirst: false,
    });
    expect(infoRuns).toHaveLength(1);
    expect(read.info.pages).toBe(6);
    expect(read.failed).toEqual([6]);
    expect(read.texts).toHaveLength(6);
    read.texts
      .slice(0, 5)
      .forEach((text, i) => expect(text).toMatch(new RegExp(`^Seite ${i + 1} von`)));
  }, 120_000);
});
