import { createReadStream } from 'node:fs';
import { normalizeText } from './text.ts';

/** Bytes read at a time; also about the most text held before it is normalised. */
const PIECE_BYTES = 1024 * 1024;

/**
 * The text of a plain, Markdown or HTML file as normalised pieces, read as a stream so
 * that memory does not grow with the file: decoded as decodeText does (BOM, else UTF-8
 * when the whole file is valid UTF-8, which costs one extra pass, else Windows-1252),
 * HTML through the streaming parser, then normalised paragraph by paragraph. Pieces are
 * whole paragraphs, and joined they are normalizeText of the whole text (a paragraph
 * longer than a piece is the exception: it is broken at a line end or between words).
 */
export async function* readTextPieces(
  path: string,
  format: 'plain' | 'markdown' | 'html',
): AsyncGenerator<string> {
  const encoding = await detectEncoding(path);
  const decoder = new TextDecoder(encoding.label);
  const paragraphs = new ParagraphCutter();
  const html: string[] = [];
  // htmlparser2 is loaded only for HTML: a PDF job's runner starts without it.
  const parser =
    format === 'html' ? (await import('./html.ts')).htmlParser((text) => html.push(text)) : null;
  const take = (decoded: string): string[] => {
    if (!parser) return paragraphs.push(decoded);
    parser.write(decoded);
    const text = html.join('');
    html.length = 0;
    return paragraphs.push(text);
  };
  for await (const bytes of createReadStream(path, {
    start: encoding.skip,
    highWaterMark: PIECE_BYTES,
  }) as AsyncIterable<Buffer>) {
    yield* take(decoder.decode(bytes, { stream: true }));
  }
  yield* take(decoder.decode());
  if (parser) {
    parser.end();
    yield* paragraphs.push(html.join(''));
  }
  yield* paragraphs.end();
}

/** The decoder decodeText would choose, and the BOM's length. */
async function detectEncoding(path: string): Promise<{ label: string; skip: number }> {
  let head: Buffer | undefined;
  const validator = new TextDecoder('utf-8', { fatal: true });
  try {
    for await (const bytes of createReadStream(path, {
      highWaterMark: PIECE_BYTES,
    }) as AsyncIterable<Buffer>) {
      if (!head) {
        head = bytes;
        if (head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf)
          return { label: 'utf-8', skip: 3 };
        if (head[0] === 0xff && head[1] === 0xfe) return { label: 'utf-16le', skip: 2 };
        if (head[0] === 0xfe && head[1] === 0xff) return { label: 'utf-16be', skip: 2 };
      }
      validator.decode(bytes, { stream: true });
    }
    validator.decode();
    return { label: 'utf-8', skip: 0 };
  } catch {
    return { label: 'windows-1252', skip: 0 };
  }
}

/**
 * Normalises text that comes in pieces: holds back the text after the last blank line
 * (the paragraph may go on in the next piece) and a trailing CR (its LF may follow).
 */
class ParagraphCutter {
  #pending = '';
  #emitted = false;

  push(text: string): string[] {
    this.#pending += text;
    const pending = this.#pending;
    const end = pending.endsWith('\r') ? pending.length - 1 : pending.length;
    let cut = lastBlankLine(pending, end);
    // No paragraph end in a whole piece: cut at a line end, else between words, at worst
    // anywhere (one "word" of a MiB).
    if (cut < 0 && end >= PIECE_BYTES) {
      const line = pending.lastIndexOf('\n', end - 1);
      const space = line > 0 ? -1 : pending.lastIndexOf(' ', end - 1);
      cut = line > 0 ? line + 1 : space > 0 ? space + 1 : end;
    }
    if (cut <= 0) return [];
    this.#pending = pending.slice(cut);
    return this.#emit(pending.slice(0, cut));
  }

  end(): string[] {
    const rest = this.#pending;
    this.#pending = '';
    return this.#emit(rest);
  }

  #emit(raw: string): string[] {
    const text = normalizeText(raw);
    if (text === '') return [];
    // Paragraphs were cut at a blank line: put one back between them.
    const piece = this.#emitted ? `\n\n${text}` : text;
    this.#emitted = true;
    return [piece];
  }
}

/** Where the text after the last blank line (two line ends, maybe blanks between) starts. */
function lastBlankLine(text: string, end: number): number {
  let at = text.lastIndexOf('\n', end - 1);
  while (at > 0) {
    let i = at - 1;
    while (i >= 0 && (text[i] === ' ' || text[i] === '\t' || text[i] === '\r')) i -= 1;
    if (i >= 0 && text[i] === '\n') return at + 1;
    at = text.lastIndexOf('\n', at - 1);
  }
  return -1;
}
