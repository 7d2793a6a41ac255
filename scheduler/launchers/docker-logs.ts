import { StringDecoder } from 'node:string_decoder';
import { Writable } from 'node:stream';

// A runner that prints without newlines must not grow a line without bound.
const MAX_PARTIAL_CHARS = 1024 * 1024;

/** Splits chunks into whole lines (a partial last line on end), synchronously. */
class LineBuffer {
  // Decodes across chunk boundaries: a character split between two frames stays whole.
  readonly #decoder = new StringDecoder('utf8');
  readonly #onLine: (line: string) => void;
  #partial = '';

  constructor(onLine: (line: string) => void) {
    this.#onLine = onLine;
  }

  write(chunk: Buffer): void {
    const lines = (this.#partial + this.#decoder.write(chunk)).split('\n');
    this.#partial = lines.pop() ?? '';
    for (const line of lines) this.#onLine(line);
    if (this.#partial.length > MAX_PARTIAL_CHARS) {
      this.#onLine(this.#partial);
      this.#partial = '';
    }
  }

  end(): void {
    const rest = this.#partial + this.#decoder.end();
    if (rest) this.#onLine(rest);
  }
}

/** A writable that hands on whole lines (a partial last line on end). */
export class LogLineSplitter extends Writable {
  constructor(onLine: (line: string) => void) {
    const lines = new LineBuffer(onLine);
    super({
      write: (chunk: Buffer, _encoding, done) => {
        lines.write(chunk);
        done();
      },
      final: (done) => {
        lines.end();
        done();
      },
    });
  }
}

/** Lines of a non-TTY `logs` answer: frames of [stream, 0, 0, 0, size (4 bytes BE), data]. */
export function demuxLogBuffer(buffer: Buffer): string[] {
  const frames: Buffer[] = [];
  for (let at = 0; at + 8 <= buffer.length;) {
    const size = buffer.readUInt32BE(at + 4);
    frames.push(buffer.subarray(at + 8, at + 8 + size));
    at += 8 + size;
  }
  return Buffer.concat(frames).toString('utf8').split('\n').filter(Boolean);
}

/**
 * The lines of a non-TTY `logs` answer, split per stream as a followed stream is split
 * (`demuxStream` into one LogLineSplitter per stream): both give the same lines in the
 * same order, so output read again after a restart is numbered the same.
 */
export function splitLogBuffer(buffer: Buffer): string[] {
  const lines: string[] = [];
  const out = new LineBuffer((line) => lines.push(line));
  const err = new LineBuffer((line) => lines.push(line));
  for (let at = 0; at + 8 <= buffer.length;) {
    const size = buffer.readUInt32BE(at + 4);
    (buffer[at] === 2 ? err : out).write(buffer.subarray(at + 8, at + 8 + size));
    at += 8 + size;
  }
  out.end();
  err.end();
  return lines;
}
