import type { PageStart } from './chunker.ts';

/** The text of one file and where its pages begin (empty for text without pages). */
export interface ExtractedText {
  text: string;
  pages: PageStart[];
}

// A surrogate without its partner (cut-off UTF-16): PostgreSQL cannot store it.
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

// C0/C1 control characters other than tab and newline: PostgreSQL text cannot hold NUL,
// and the others are noise from PDF encodings.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0008\u000b\u000e-\u001f\u007f-\u009f]/g;

/**
 * Puts extracted text into one form: well-formed UTF-16 (lone surrogates become U+FFFD),
 * NFC, `\n` line ends, form feeds as paragraph breaks, no control characters, no
 * trailing blanks on a line, at most one empty line in a row.
 */
export function normalizeText(raw: string): string {
  return raw
    .replace(LONE_SURROGATE, '\ufffd')
    .normalize('NFC')
    .replace(/\r\n?/g, '\n')
    .replace(/\f/g, '\n\n')
    .replace(CONTROL, '')
    .replace(/[ \t\u00a0]+\n/g, '\n')
    .replace(/\n{3,}/g, '\n\n')
    .trim();
}

/** Joins pages (already normalised) with a blank line, remembering where each starts. */
export function joinPages(pages: readonly { num: number; text: string }[]): ExtractedText {
  let text = '';
  const starts: PageStart[] = [];
  for (const page of pages) {
    if (page.text === '') continue;
    if (text !== '') text += '\n\n';
    starts.push({ page: page.num, start: text.length });
    text += page.text;
  }
  return { text, pages: starts };
}

/** Counts characters that are not white space. */
export function visibleLength(text: string): number {
  return text.replace(/\s+/g, '').length;
}

/**
 * Decodes a text file: a BOM decides (UTF-8, UTF-16LE/BE); otherwise UTF-8 when the
 * bytes are valid UTF-8, else Windows-1252 (what "ANSI" files from Windows are).
 */
export function decodeText(bytes: Uint8Array): string {
  if (bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) {
    return new TextDecoder('utf-8').decode(bytes.subarray(3));
  }
  if (bytes[0] === 0xff && bytes[1] === 0xfe) {
    return new TextDecoder('utf-16le').decode(bytes.subarray(2));
  }
  if (bytes[0] === 0xfe && bytes[1] === 0xff) {
    return new TextDecoder('utf-16be').decode(bytes.subarray(2));
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return new TextDecoder('windows-1252').decode(bytes);
  }
}
