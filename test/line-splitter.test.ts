import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { LineSplitter, type Line } from '../runner/line-splitter.ts';

/** Feeds `input` to a splitter in the given chunk sizes (cycled) and collects every line. */
function split(input: Buffer | string, maxLineBytes = 1024, chunkSizes: number[] = [1 << 20]) {
  const bytes = typeof input === 'string' ? Buffer.from(input) : input;
  const splitter = new LineSplitter(maxLineBytes);
  const lines: Line[] = [];
  const onLine = (line: Line) => lines.push(line);
  let offset = 0;
  for (let i = 0; offset < bytes.length; i++) {
    const size = chunkSizes[i % chunkSizes.length]!;
    // A copy, so the splitter cannot lean on the caller keeping the buffer.
    splitter.push(Buffer.from(bytes.subarray(offset, offset + size)), onLine);
    offset += size;
  }
  splitter.end(onLine);
  return lines;
}

/** Feeds `input` in two chunks split at `at`. */
function splitAt(input: Buffer, at: number, maxLineBytes = 1024) {
  const splitter = new LineSplitter(maxLineBytes);
  const lines: Line[] = [];
  const onLine = (line: Line) => lines.push(line);
  splitter.push(Buffer.from(input.subarray(0, at)), onLine);
  splitter.push(Buffer.from(input.subarray(at)), onLine);
  splitter.end(onLine);
  return lines;
}

// A way to force a full collection without restarting vitest with --expose-gc.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const texts = (lines: Line[]) => lines.map((l) => l.text);
const BOM = '\ufeff';

describe('LineSplitter', () => {
  it('splits LF and CRLF lines and numbers them from 1', () => {
    const lines = split('one\ntwo\r\nthree\n');
    expect(lines).toEqual([
      { number: 1, text: 'one', bytesEnd: 4 },
      { number: 2, text: 'two', bytesEnd: 9 },
      { number: 3, text: 'three', bytesEnd: 15 },
    ]);
  });

  it('keeps a lone CR inside a line and strips only the CR before LF', () => {
    expect(texts(split('a\rb\r\nc\r\r\n'))).toEqual(['a\rb', 'c\r']);
  });

  it('emits the last line when the input does not end with a newline', () => {
    const lines = split('one\ntwo');
    expect(lines).toEqual([
      { number: 1, text: 'one', bytesEnd: 4 },
      { number: 2, text: 'two', bytesEnd: 7 },
    ]);
  });

  it('emits nothing for empty input, and no phantom line after a final newline', () => {
    expect(split('')).toEqual([]);
    expect(texts(split('x\n'))).toEqual(['x']);
    expect(texts(split('x\r\n'))).toEqual(['x']);
  });

  it('reports blank lines as empty text, keeping the numbering', () => {
    const lines = split('\n\r\na\n\n');
    expect(lines.map((l) => [l.number, l.text])).toEqual([
      [1, ''],
      [2, ''],
      [3, 'a'],
      [4, ''],
    ]);
  });

  it('strips a UTF-8 BOM on line 1 only', () => {
    const lines = split(`${BOM}first\n${BOM}second\n`);
    expect(texts(lines)).toEqual(['first', `${BOM}second`]);
    expect(lines[0]!.bytesEnd).toBe(9); // the BOM's 3 bytes still count as consumed
  });

  it('strips a BOM split across chunks, and a BOM-only first line is blank', () => {
    const input = Buffer.from(`${BOM}{"a":1}\n`);
    for (let at = 1; at < 4; at++) expect(texts(splitAt(input, at))).toEqual(['{"a":1}']);
    expect(texts(split(`${BOM}\nx\n`))).toEqual(['', 'x']);
  });

  it('gives the same lines whatever the chunk boundaries', () => {
    // Multi-byte characters (2, 3 and 4 bytes), CRLF, a BOM, blank lines, no final newline.
    const input = Buffer.from(`${BOM}héllo wörld\r\n€uro\n\n😀 emoji 🦄\r\n\r\nlast ✓`);
    const expected = ['héllo wörld', '€uro', '', '😀 emoji 🦄', '', 'last ✓'];
    const whole = split(input);
    expect(texts(whole)).toEqual(expected);
    for (let at = 0; at <= input.length; at++) {
      expect(splitAt(input, at), `split at byte ${at}`).toEqual(whole);
    }
    for (const size of [1, 2, 3, 5, 7]) {
      expect(split(input, 1024, [size]), `chunks of ${size}`).toEqual(whole);
    }
  });

  it('reassembles a 4-byte character split into single bytes', () => {
    const input = Buffer.from('😀\n');
    expect(input.length).toBe(5);
    expect(split(input, 1024, [1])).toEqual([{ number: 1, text: '😀', bytesEnd: 5 }]);
  });

  it('treats CR and LF split across chunks as one CRLF', () => {
    const input = Buffer.from('abc\r\ndef\r\n');
    const lines = splitAt(input, 4); // "abc\r" | "\ndef\r\n"
    expect(lines).toEqual([
      { number: 1, text: 'abc', bytesEnd: 5 },
      { number: 2, text: 'def', bytesEnd: 10 },
    ]);
  });

  it('counts bytesEnd as the bytes consumed through each terminator', () => {
    const input = Buffer.from('ä\r\n\nxyz\n€');
    const lines = split(input, 1024, [3]);
    expect(lines.map((l) => l.bytesEnd)).toEqual([4, 5, 9, 12]);
    expect(lines.at(-1)!.bytesEnd).toBe(input.length);
  });

  it('reports invalid UTF-8 on its own line and decodes the next line normally', () => {
    const input = Buffer.concat([
      Buffer.from('ok\n'),
      Buffer.from([0x66, 0xff, 0xfe, 0x0a]), // "f", two bytes never valid in UTF-8
      Buffer.from([0xe2, 0x82, 0x0a]), // a 3-byte sequence cut short by the newline
      Buffer.from([0xed, 0xa0, 0x80, 0x0a]), // an encoded surrogate (invalid in UTF-8)
      Buffer.from('after\n'),
    ]);
    const lines = split(input, 1024, [2]);
    expect(lines.map((l) => [l.number, l.text, l.problem])).toEqual([
      [1, 'ok', undefined],
      [2, undefined, 'invalid_utf8'],
      [3, undefined, 'invalid_utf8'],
      [4, undefined, 'invalid_utf8'],
      [5, 'after', undefined],
    ]);
    expect(lines.at(-1)!.bytesEnd).toBe(input.length);
  });

  describe('line limit', () => {
    it('accepts a line of exactly the limit, with or without CR, and refuses one byte more', () => {
      const limit = 10;
      const exact = 'x'.repeat(limit);
      const over = 'y'.repeat(limit + 1);
      const lines = split(`${exact}\n${exact}\r\n${over}\n${over}\r\nok`, limit);
      expect(lines.map((l) => [l.text, l.problem])).toEqual([
        [exact, undefined],
        [exact, undefined],
        [undefined, 'too_long'],
        [undefined, 'too_long'],
        ['ok', undefined],
      ]);
    });

    it('counts bytes, not characters', () => {
      // 4 characters, 12 bytes.
      expect(split('€€€€\n', 12)[0]).toMatchObject({ text: '€€€€' });
      expect(split('€€€€\n', 11)[0]).toMatchObject({ problem: 'too_long', text: undefined });
    });

    it('reports a too-long last line without a newline', () => {
      expect(split('ok\n' + 'z'.repeat(50), 10).map((l) => l.problem)).toEqual([
        undefined,
        'too_long',
      ]);
    });

    it('reports a too-long line at every chunk boundary and keeps the next line intact', () => {
      const input = Buffer.from(`${'L'.repeat(40)}\r\nnext line\n`);
      for (let at = 0; at <= input.length; at++) {
        const lines = splitAt(input, at, 16);
        expect(
          lines.map((l) => [l.number, l.text, l.problem, l.bytesEnd]),
          `split at byte ${at}`,
        ).toEqual([
          [1, undefined, 'too_long', 42],
          [2, 'next line', undefined, 52],
        ]);
      }
    });

    it('streams a 50 MB line in 64 KB chunks, holding at most the limit, then reads on', async () => {
      const limit = 1024 * 1024;
      const splitter = new LineSplitter(limit);
      const lines: Line[] = [];
      const onLine = (line: Line) => lines.push(line);
      const total = 50 * 1024 * 1024;
      splitter.push(Buffer.from('{"first":true}\n'), onLine);
      const before = await arrayBufferBytesAfterGc();
      // Fresh chunks, as a file stream hands them out: a splitter that kept views into
      // them would keep all 50 MB reachable.
      for (let sent = 0; sent < total; sent += 64 * 1024) {
        splitter.push(Buffer.alloc(64 * 1024, 0x61), onLine);
      }
      const during = await arrayBufferBytesAfterGc();
      splitter.push(Buffer.from('\n{"after":true}\n'), onLine);
      splitter.end(onLine);
      expect(lines.map((l) => [l.number, l.text, l.problem])).toEqual([
        [1, '{"first":true}', undefined],
        [2, undefined, 'too_long'],
        [3, '{"after":true}', undefined],
      ]);
      expect(lines[1]!.bytesEnd).toBe(15 + total + 1);
      expect(lines[2]!.bytesEnd).toBe(15 + total + 1 + 15);
      // The limit (1 MiB), plus the one chunk that straddles it, plus noise.
      expect(during - before).toBeLessThan(limit + 3 * 1024 * 1024);
    });

    it('starts afresh after a too-long line: the next line may be exactly the limit', () => {
      const limit = 8;
      for (const size of [1, 3, 8, 64]) {
        const lines = split(`${'x'.repeat(100)}\n${'12345678'}\r\n${'y'.repeat(9)}\nz`, limit, [
          size,
        ]);
        expect(
          lines.map((l) => l.text ?? l.problem),
          `chunks of ${size}`,
        ).toEqual(['too_long', '12345678', 'too_long', 'z']);
      }
    });
  });
});

/** ArrayBuffer memory still reachable after a full garbage collection. */
async function arrayBufferBytesAfterGc(): Promise<number> {
  // Lets WeakRef-like bookkeeping of the current job settle before collecting.
  await new Promise((resolve) => setImmediate(resolve));
  gc();
  gc();
  return process.memoryUsage().arrayBuffers;
}
