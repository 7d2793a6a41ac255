export interface Line {
  /** 1-based line number in the file. */
  number: number;
  /** The line without its terminator (and without a first-line BOM); undefined when too long. */
  text: string | undefined;
  /** Why text is missing: longer than the limit, or not valid UTF-8. */
  problem?: 'too_long' | 'invalid_utf8';
  /** Bytes of the file consumed up to and including this line's terminator. */
  bytesEnd: number;
}

const NEWLINE = 0x0a;
const CR = 0x0d;
const BOM = Buffer.from([0xef, 0xbb, 0xbf]);

/**
 * Splits a byte stream into lines (LF or CRLF) without ever holding more than one line
 * of at most `maxLineBytes` bytes: a longer line is skipped as it streams past and
 * reported as `too_long`, so memory stays flat whatever the input.
 */
export class LineSplitter {
  readonly #maxLineBytes: number;
  // ignoreBOM keeps U+FEFF in the text: only line 1's BOM is a byte order mark (see
  // #takeLine); TextDecoder would otherwise strip one from the start of every line.
  readonly #decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  #pieces: Buffer[] = [];
  #pieceBytes = 0;
  #lineBytes = 0;
  #bytesSeen = 0;
  #lineNumber = 0;

  constructor(maxLineBytes: number) {
    this.#maxLineBytes = maxLineBytes;
  }

  push(chunk: Buffer, onLine: (line: Line) => void): void {
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(NEWLINE, start);
      const end = nl === -1 ? chunk.length : nl;
      this.#append(chunk, start, end);
      if (nl === -1) {
        this.#bytesSeen += chunk.length - start;
        return;
      }
      this.#bytesSeen += nl + 1 - start;
      onLine(this.#takeLine());
      start = nl + 1;
    }
  }

  /** Emits the last line when the input does not end with a newline. */
  end(onLine: (line: Line) => void): void {
    if (this.#lineBytes > 0) onLine(this.#takeLine());
  }

  #append(chunk: Buffer, start: number, end: number): void {
    const length = end - start;
    this.#lineBytes += length;
    // Keep bytes only while under the limit (+1 for a CR that may end the line).
    if (this.#lineBytes <= this.#maxLineBytes + 1) {
      this.#pieces.push(chunk.subarray(start, end));
      this.#pieceBytes += length;
    } else if (this.#pieces.length > 0) {
      this.#pieces = [];
      this.#pieceBytes = 0;
    }
  }

  #takeLine(): Line {
    this.#lineNumber += 1;
    const line: Line = { number: this.#lineNumber, text: undefined, bytesEnd: this.#bytesSeen };
    const kept = this.#lineBytes <= this.#maxLineBytes + 1;
    let bytes =
      this.#pieces.length === 1 ? this.#pieces[0]! : Buffer.concat(this.#pieces, this.#pieceBytes);
    this.#pieces = [];
    this.#pieceBytes = 0;
    this.#lineBytes = 0;
    if (!kept) return { ...line, problem: 'too_long' };
    if (bytes.length > 0 && bytes[bytes.length - 1] === CR)
      bytes = bytes.subarray(0, bytes.length - 1);
    if (bytes.length > this.#maxLineBytes) return { ...line, problem: 'too_long' };
    if (line.number === 1 && bytes.subarray(0, 3).equals(BOM)) bytes = bytes.subarray(3);
    try {
      line.text = this.#decoder.decode(bytes);
    } catch {
      line.problem = 'invalid_utf8';
    }
    return line;
  }
}
