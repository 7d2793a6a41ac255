import { describe, expect, it } from 'vitest';
import {
  chunkText,
  lastMatchEnd,
  LINE_END,
  pageAt,
  PARAGRAPH_END,
  SENTENCE_END,
  type TextChunk,
} from '../runner/extract/chunker.ts';
import { decodeText, joinPages, normalizeText } from '../runner/extract/text.ts';

/** Every chunk is the text between its offsets, and starts and ends at a word boundary. */
function expectWellFormed(text: string, chunks: TextChunk[], target: number) {
  for (const c of chunks) {
    expect(text.slice(c.char_start, c.char_end)).toBe(c.content);
    expect(c.content).toBe(c.content.trim());
    expect(c.char_start === 0 || /\s/.test(text[c.char_start - 1]!)).toBe(true);
    expect(c.char_end === text.length || /\s/.test(text[c.char_end]!)).toBe(true);
    expect(c.content.length).toBeLessThanOrEqual(target);
  }
  for (let i = 1; i < chunks.length; i += 1) {
    expect(chunks[i]!.char_start).toBeGreaterThan(chunks[i - 1]!.char_start);
    // No gap: every character of the text is in some chunk.
    expect(chunks[i]!.char_start).toBeLessThanOrEqual(chunks[i - 1]!.char_end + 2);
  }
}

const words = (n: number, seed = 1) => {
  let x = seed;
  const out: string[] = [];
  for (let i = 0; i < n; i += 1) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    out.push('abcdefghijklmnopqrstuvwxyzäöüß'.slice(x % 20, (x % 20) + 2 + (x % 9)));
  }
  return out;
};

describe('chunkText', () => {
  it('keeps a short text as one chunk', () => {
    const chunks = chunkText('  Hallo Welt.  ', { targetChars: 100, overlapChars: 10 });
    expect(chunks).toEqual([
      { content: 'Hallo Welt.', char_start: 2, char_end: 13, page_start: null, page_end: null },
    ]);
    expect(chunkText('   \n\n  ', { targetChars: 100, overlapChars: 10 })).toEqual([]);
  });

  it('breaks at a paragraph end when one lies in the second half of the window', () => {
    const a = 'Erster Absatz mit einigen Wörtern darin. Noch ein Satz hier.';
    const b = 'Zweiter Absatz beginnt. Er ist auch nicht sehr lang, aber lang genug.';
    const text = `${a}\n\n${b}`;
    const chunks = chunkText(text, { targetChars: 80, overlapChars: 0 });
    expect(chunks.map((c) => c.content)).toEqual([a, b]);
    expectWellFormed(text, chunks, 80);
  });

  it('breaks at a sentence end before a line end or a space', () => {
    const text =
      'Der erste Satz ist hier. Der zweite Satz folgt sogleich und ist ein gutes Stück länger als der erste.';
    const chunks = chunkText(text, { targetChars: 60, overlapChars: 0 });
    expect(chunks[0]!.content).toBe('Der erste Satz ist hier.');
    expectWellFormed(text, chunks, 60);
  });

  it('never ends a chunk inside a word, whatever the target', () => {
    const text = words(3000).join(' ');
    for (const target of [7, 13, 50, 333, 1000]) {
      const chunks = chunkText(text, { targetChars: target, overlapChars: Math.floor(target / 3) });
      // A word longer than the target becomes a chunk of its own (the longest word is 10).
      expectWellFormed(text, chunks, Math.max(target, 10));
    }
  });

  it('overlaps by at most the overlap, starting at a sentence or word start', () => {
    const text = Array.from({ length: 200 }, (_, i) => `Satz Nummer ${i} endet hier.`).join(' ');
    const chunks = chunkText(text, { targetChars: 200, overlapChars: 60 });
    expectWellFormed(text, chunks, 200);
    for (let i = 1; i < chunks.length; i += 1) {
      const overlap = chunks[i - 1]!.char_end - chunks[i]!.char_start;
      expect(overlap).toBeGreaterThan(0);
      expect(overlap).toBeLessThanOrEqual(60);
      expect(chunks[i]!.content).toMatch(/^Satz Nummer \d+/);
    }
  });

  it('cuts a run longer than the target only where no space comes soon, and never a surrogate pair', () => {
    const blob = '😀'.repeat(150); // 300 UTF-16 code units, no space
    const text = `Anfang ${blob} Ende`;
    const chunks = chunkText(text, { targetChars: 100, overlapChars: 0 });
    expect(chunks.map((c) => c.content).join('')).toBe(text.replace(/ /g, ''));
    for (const c of chunks) expect(normalizeText(c.content)).toBe(c.content);
    const soon = chunkText(`${'x'.repeat(120)} y`, { targetChars: 100, overlapChars: 0 });
    expect(soon[0]!.content).toBe('x'.repeat(120));
  });

  it("finds each break where the pattern's match object puts it, on any text", () => {
    // lastMatchEnd runs the patterns by `test` and derives where a match starts.
    const byExec = (
      window: string,
      pattern: RegExp,
      from: number,
      to: number,
      atStart: boolean,
    ) => {
      let found: number | undefined;
      for (const m of window.matchAll(new RegExp(pattern.source, 'g'))) {
        const at = atStart ? m.index : m.index + m[0].length;
        if (at > to) break;
        if (at >= from && at > 0) found = at;
      }
      return found;
    };
    const pieces = [
      'ab',
      'c',
      '.',
      '!',
      '?',
      '"',
      ')',
      '…',
      '。',
      ' ',
      '\t',
      '\n',
      '\n\n',
      '\n \t\n',
      ' \n',
    ];
    let seed = 7;
    const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31);
    for (let n = 0; n < 3000; n += 1) {
      const window = Array.from({ length: next() % 30 }, () => pieces[next() % pieces.length]).join(
        '',
      );
      const from = next() % 20;
      const to = from + (next() % 40);
      for (const [pattern, atStart] of [
        [PARAGRAPH_END, true],
        [SENTENCE_END, false],
        [LINE_END, true],
      ] as const) {
        expect(lastMatchEnd(window, pattern, from, to, atStart), JSON.stringify(window)).toBe(
          byExec(window, pattern, from, to, atStart),
        );
      }
    }
  });

  it('is deterministic', () => {
    const text = words(5000, 7).join(' ');
    const options = { targetChars: 400, overlapChars: 80 };
    expect(chunkText(text, options)).toEqual(chunkText(text, options));
  });

  it('gives each chunk the pages it spans', () => {
    const joined = joinPages([
      { num: 1, text: 'Seite eins. '.repeat(10).trim() },
      { num: 2, text: '' },
      { num: 3, text: 'Seite drei. '.repeat(10).trim() },
    ]);
    expect(joined.pages).toEqual([
      { page: 1, start: 0 },
      { page: 3, start: 121 },
    ]);
    const chunks = chunkText(joined.text, { targetChars: 100, overlapChars: 0 }, joined.pages);
    expect(chunks.map((c) => [c.page_start, c.page_end])).toEqual([
      [1, 1],
      [1, 3],
      [3, 3],
    ]);
    expect(pageAt(joined.pages, 0)).toBe(1);
    expect(pageAt([], 5)).toBeNull();
  });
});

describe('text normalisation', () => {
  it('removes NUL and control characters, unifies line ends, keeps umlauts in NFC', () => {
    const raw = 'Gru\u0308\u00dfe\u0000 \r\nZeile\rzwei  \n\n\n\n\fEnde\u0007\ud800';
    expect(normalizeText(raw)).toBe('Grüße\nZeile\nzwei\n\nEnde\ufffd');
  });

  it('decodes UTF-8, UTF-16 with BOM and Windows-1252', () => {
    expect(decodeText(Buffer.from('Grüße', 'utf8'))).toBe('Grüße');
    expect(decodeText(Buffer.from('\ufeffGrüße', 'utf8'))).toBe('Grüße');
    expect(
      decodeText(Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('Öl', 'utf16le')])),
    ).toBe('Öl');
    expect(decodeText(Buffer.from([0x47, 0x72, 0xfc, 0xdf, 0x65, 0x80]))).toBe('Grüße€');
  });
});
