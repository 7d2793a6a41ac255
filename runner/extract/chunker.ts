/**
 * Splits extracted text into overlapping chunks of about `targetChars` characters,
 * breaking where the text breaks: at the last paragraph end past the first 30% of the
 * window, else at a sentence end, else at a line end, else between words. A chunk
 * is cut inside a "word" only when a run of more than `targetChars` non-blank
 * characters (a base64 blob, say) leaves no other place; such a run is looked past for
 * up to one more target length first.
 *
 * Offsets are JavaScript string indexes (UTF-16 code units) into the text given, so
 * `text.slice(char_start, char_end) === content` always holds. The result depends only on
 * the text and the options: a re-run yields exactly the same chunks.
 */
export interface ChunkOptions {
  targetChars: number;
  /** At most half the target; more would make every chunk mostly repetition. */
  overlapChars: number;
}

/** Where a page begins in the text (pages in increasing order of `start`). */
export interface PageStart {
  page: number;
  start: number;
}

export interface TextChunk {
  content: string;
  char_start: number;
  char_end: number;
  page_start: number | null;
  page_end: number | null;
  /** Transcripts: when the chunk was said, in seconds from the start of the recording. */
  seconds_start?: number;
  seconds_end?: number;
}

export const PARAGRAPH_END = /\n[ \t]*\n/g;
// A sentence ends with . ! ? … (or CJK 。！？), maybe followed by closing quotes/brackets,
// then white space. "Dr. Müller" splits too: a heuristic, but never inside a word.
export const SENTENCE_END = /[.!?…。！？]["'”’»)\]]*(?=\s)/g;
export const LINE_END = /\n/g;
const SPACE = /\s/;

export function chunkText(
  text: string,
  options: ChunkOptions,
  pages: readonly PageStart[] = [],
): TextChunk[] {
  const chunker = new Chunker(options, pages);
  return [...chunker.push(text), ...chunker.end()];
}

/**
 * chunkText for text that arrives in pieces (a file read as a stream): holds only the text
 * from the current chunk's start on, and cuts a chunk only once the text seen reaches past
 * everything findBreak looks at, so the chunks are exactly chunkText's on the whole text.
 */
export class Chunker {
  readonly #target: number;
  readonly #overlap: number;
  readonly #pages: readonly PageStart[];
  /** Text from offset #base of the whole text on. */
  #buf = '';
  #base = 0;
  /** Where the next chunk starts, in #buf. */
  #start = 0;

  constructor(options: ChunkOptions, pages: readonly PageStart[] = []) {
    this.#target = Math.max(1, Math.floor(options.targetChars));
    this.#overlap = Math.max(
      0,
      Math.min(Math.floor(options.overlapChars), Math.floor(this.#target / 2)),
    );
    this.#pages = pages;
  }

  /** Adds text; returns the chunks that are now certain. */
  push(piece: string): TextChunk[] {
    // Drop what no later chunk can reach.
    if (this.#start > 0) {
      this.#buf = this.#buf.slice(this.#start);
      this.#base += this.#start;
      this.#start = 0;
    }
    this.#buf += piece;
    return this.#cut(false);
  }

  /** The chunks of the rest, at the end of the text. */
  end(): TextChunk[] {
    return this.#cut(true);
  }

  #cut(final: boolean): TextChunk[] {
    const text = this.#buf;
    const target = this.#target;
    const chunks: TextChunk[] = [];
    // findBreak looks up to two targets ahead, the sentence pattern one character more.
    const enough = (start: number) => final || text.length - start > 2 * target + 1;
    let start = skipSpace(text, this.#start);
    while (start < text.length && enough(start)) {
      const end = text.length - start <= target ? text.length : findBreak(text, start, target);
      let last = end;
      while (last > start && SPACE.test(text[last - 1]!)) last -= 1;
      if (last > start) {
        const at = this.#base;
        chunks.push({
          content: text.slice(start, last),
          char_start: at + start,
          char_end: at + last,
          page_start: pageAt(this.#pages, at + start),
          page_end: pageAt(this.#pages, at + last - 1),
        });
      }
      if (end >= text.length) {
        start = end;
        break;
      }
      const overlap = this.#overlap;
      let next = skipSpace(text, overlap > 0 ? overlapStart(text, start, end, overlap) : end);
      if (next <= start) next = skipSpace(text, end);
      start = next;
    }
    this.#start = start;
    return chunks;
  }
}

/** Where to end a chunk that starts at `start` and may not exceed `target` characters. */
function findBreak(text: string, start: number, target: number): number {
  const limit = start + target;
  // One character past the limit, so a break right at the limit is seen.
  const window = text.slice(start, limit + 1);
  // A break this early would leave a chunk too short to be worth the row.
  const preferFrom = Math.floor(target * 0.3);
  for (const pattern of [PARAGRAPH_END, SENTENCE_END, LINE_END]) {
    const at = lastMatchEnd(window, pattern, preferFrom, target, pattern !== SENTENCE_END);
    if (at !== undefined) return start + at;
  }
  for (let i = target; i > 0; i -= 1) {
    if (SPACE.test(window[i] ?? ' ')) return start + i;
  }
  // One long run without spaces: end it at the next space if that comes soon enough.
  const horizon = Math.min(text.length, limit + target);
  for (let i = limit; i < horizon; i += 1) {
    if (SPACE.test(text[i]!)) return i;
  }
  if (horizon === text.length) return text.length;
  // Never split a surrogate pair (an emoji, say) in two.
  const code = text.charCodeAt(limit - 1);
  return code >= 0xd800 && code <= 0xdbff ? limit - 1 : limit;
}

/**
 * The last break of `pattern` in window[from..to]; at its start or at its end. By `test`,
 * which makes no match object (exec's were most of the chunker's ~8 MB of garbage for a
 * 1,000-page PDF, issue 13); where a match starts follows from its end (matchStart).
 */
export function lastMatchEnd(
  window: string,
  pattern: RegExp,
  from: number,
  to: number,
  atStart: boolean,
): number | undefined {
  let found: number | undefined;
  pattern.lastIndex = 0;
  while (pattern.test(window)) {
    const end = pattern.lastIndex;
    const at = atStart ? matchStart(window, pattern, end) : end;
    if (at > to) break;
    if (at >= from && at > 0) found = at;
  }
  return found;
}

/**
 * Where a match of LINE_END (one line end) or PARAGRAPH_END (a line end, blanks, a line
 * end) that ends at `end` starts.
 */
function matchStart(window: string, pattern: RegExp, end: number): number {
  if (pattern !== PARAGRAPH_END) return end - 1;
  let at = end - 2;
  while (window[at] === ' ' || window[at] === '\t') at -= 1;
  return at;
}

/**
 * Where the next chunk starts so that it repeats at most `overlap` characters of the
 * previous one: the earliest sentence start in that tail, else the earliest word start,
 * else no overlap.
 */
function overlapStart(text: string, start: number, end: number, overlap: number): number {
  const from = Math.max(start + 1, end - overlap);
  // Include the character before `from`, to see whether `from` itself starts a word.
  const tail = text.slice(from - 1, end);
  SENTENCE_END.lastIndex = 0;
  while (SENTENCE_END.test(tail)) {
    const at = skipSpace(tail, SENTENCE_END.lastIndex);
    if (at >= 1 && at < tail.length) return from - 1 + at;
  }
  for (let i = 1; i < tail.length; i += 1) {
    if (SPACE.test(tail[i - 1]!) && !SPACE.test(tail[i]!)) return from - 1 + i;
  }
  return end;
}

function skipSpace(text: string, at: number): number {
  let i = at;
  while (i < text.length && SPACE.test(text[i]!)) i += 1;
  return i;
}

/** The page that the character at `offset` is on, or null for text without pages. */
export function pageAt(pages: readonly PageStart[], offset: number): number | null {
  return (spanAt(pages, offset) ?? pages[0])?.page ?? null;
}

/** The last of `spans` (in increasing order of `start`) that starts at or before `offset`. */
export function spanAt<T extends { start: number }>(
  spans: readonly T[],
  offset: number,
): T | undefined {
  let lo = 0;
  let hi = spans.length - 1;
  let found: T | undefined;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const entry = spans[mid]!;
    if (entry.start <= offset) {
      found = entry;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}
