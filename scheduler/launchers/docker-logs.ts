import { StringDecoder } from 'node:string_decoder';
import { Writable } from 'node:stream';

// A runner that prints without newlines must not grow a line without bound.
const MAX_PARTIAL_CHARS = 1024 * 1024;

/** A writable that hands on whole lines (a partial last line on end). */
export class LogLineSplitter extends Writable {
  // Decodes across chunk boundaries: a character split between two frames stays whole.
  readonly #decoder = new StringDecoder('utf8');
  #partial = '';
  constructor(onLine: (line: string) => void) {
    super({
      write: (chunk: Buffer, _encoding, done) => {
        const lines = (this.#partial + this.#decoder.write(chunk)).split('\n');
        this.#partial = lines.pop() ?? '';
        for (const line of lines) onLine(line);
        if (this.#partial.length > MAX_PARTIAL_CHARS) {
          onLine(this.#partial);
          this.#partial = '';
        }
        done();
      },
      final: (done) => {
        const rest = this.#partial + this.#decoder.end();
        if (rest) onLine(rest);
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
