import { open } from 'node:fs/promises';
import { HdError } from '../../contract/errors.ts';

/** What a file is, decided from its bytes. */
export type FileKind =
  | { kind: 'pdf' }
  | { kind: 'image'; mime: string }
  | { kind: 'audio'; mime: string }
  | { kind: 'text'; format: 'plain' | 'markdown' | 'html' }
  | { kind: 'unsupported'; what: string };

export const SNIFF_BYTES = 64 * 1024;

/** Reads the head of a file, enough to sniff it. */
export async function readHead(path: string, bytes = SNIFF_BYTES): Promise<Buffer> {
  const file = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(bytes);
    const { bytesRead } = await file.read(buffer, 0, bytes, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await file.close();
  }
}

const at = (head: Buffer, offset: number, ascii: string) =>
  head.subarray(offset, offset + ascii.length).toString('latin1') === ascii;

/**
 * The file type from magic bytes; the extension and the declared mime type play no part,
 * except that a declared text subtype (markdown, html) names the format of a text file.
 */
export function sniff(head: Buffer, declaredMime: string | null): FileKind {
  // The PDF header may follow some junk; readers look for it in the first 1024 bytes.
  if (head.subarray(0, 1024).includes('%PDF-')) return { kind: 'pdf' };
  if (HEADERLESS_PDF.test(head.subarray(0, 1024).toString('latin1'))) return { kind: 'pdf' };
  if (at(head, 0, '\x89PNG\r\n\x1a\n')) return { kind: 'image', mime: 'image/png' };
  if (head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff)
    return { kind: 'image', mime: 'image/jpeg' };
  if (at(head, 0, 'GIF87a') || at(head, 0, 'GIF89a')) return { kind: 'image', mime: 'image/gif' };
  if (at(head, 0, 'II*\0') || at(head, 0, 'MM\0*')) return { kind: 'image', mime: 'image/tiff' };
  if (at(head, 0, 'RIFF') && at(head, 8, 'WEBP')) return { kind: 'image', mime: 'image/webp' };
  if (at(head, 0, 'BM') && head.length > 26 && head.readUInt32LE(14) >= 12)
    return { kind: 'image', mime: 'image/bmp' };
  if (at(head, 0, 'RIFF') && at(head, 8, 'WAVE')) return { kind: 'audio', mime: 'audio/wav' };
  if (at(head, 0, 'ID3') && isPlaylist(head.subarray(id3Length(head))))
    return { kind: 'unsupported', what: 'a media playlist behind an ID3 tag, not audio' };
  if (at(head, 0, 'ID3') || (head[0] === 0xff && ((head[1] ?? 0) & 0xe6) === 0xe2))
    return { kind: 'audio', mime: 'audio/mpeg' };
  if (at(head, 0, 'OggS')) return { kind: 'audio', mime: 'audio/ogg' };
  if (at(head, 0, 'fLaC')) return { kind: 'audio', mime: 'audio/flac' };
  if (at(head, 4, 'ftyp')) return { kind: 'audio', mime: 'video/mp4' };
  if (at(head, 0, '\x1aE\xdf\xa3')) return { kind: 'audio', mime: 'video/webm' };
  const binary = BINARY_SIGNATURES.find(([magic]) => at(head, 0, magic));
  if (binary) return { kind: 'unsupported', what: binary[1] };
  if (!looksLikeText(head)) return { kind: 'unsupported', what: 'binary data of an unknown type' };
  const mime = normalizeMime(declaredMime);
  if (mime === 'text/html' || mime === 'application/xhtml+xml' || looksLikeHtml(head))
    return { kind: 'text', format: 'html' };
  if (mime === 'text/markdown' || mime === 'text/x-markdown')
    return { kind: 'text', format: 'markdown' };
  return { kind: 'text', format: 'plain' };
}

// A PDF whose header line is lost (cut off, overwritten; pdf.js's bug1606566.pdf) but
// whose body begins, after comments, with an object: poppler and pdf.js read it, and no
// text file starts so.
const HEADERLESS_PDF = /^\s*(?:%[^\r\n]*[\r\n]+\s*)*\d+\s+\d+\s+obj\b/;

const BINARY_SIGNATURES: [string, string][] = [
  ['PK\x03\x04', 'a ZIP container (DOCX, XLSX, ODT, ZIP …), not supported yet'],
  ['\xd0\xcf\x11\xe0', 'a legacy Office file (DOC, XLS, PPT), not supported'],
  ['\x1f\x8b', 'a gzip archive'],
  ['7z\xbc\xaf', 'a 7-Zip archive'],
  ['Rar!', 'a RAR archive'],
  ['\x7fELF', 'an executable'],
  ['MZ', 'a Windows executable'],
];

/** Size of an ID3v2 tag: a 10-byte header, a syncsafe length, a footer when flagged. */
function id3Length(head: Buffer): number {
  if (head.length < 10) return head.length;
  const size =
    ((head[6]! & 0x7f) << 21) |
    ((head[7]! & 0x7f) << 14) |
    ((head[8]! & 0x7f) << 7) |
    (head[9]! & 0x7f);
  return 10 + size + (head[5]! & 0x10 ? 10 : 0);
}

/** An HLS/M3U playlist or an ffconcat list: text that makes ffmpeg open other files. */
function isPlaylist(data: Buffer): boolean {
  const start = data
    .subarray(0, 64)
    .toString('latin1')
    .replace(/^[\s\0]+/, '');
  return /^(#EXTM3U|ffconcat version)/i.test(start);
}

/** No NUL bytes and hardly any other control characters: text in some 8-bit or UTF-8 form. */
function looksLikeText(head: Buffer): boolean {
  if (
    head.length >= 2 &&
    ((head[0] === 0xff && head[1] === 0xfe) || (head[0] === 0xfe && head[1] === 0xff))
  )
    return true;
  let control = 0;
  for (const byte of head) {
    if (byte === 0) return false;
    if (byte < 0x20 && byte !== 0x09 && byte !== 0x0a && byte !== 0x0d && byte !== 0x0c)
      control += 1;
  }
  return control <= head.length / 100;
}

function looksLikeHtml(head: Buffer): boolean {
  const start = head
    .subarray(0, 2048)
    .toString('utf8')
    .replace(/^\ufeff/, '')
    .trimStart();
  return /^(<!doctype html|<html[\s>])/i.test(start) || /<(html|head|body)[\s>]/i.test(start);
}

export function normalizeMime(mime: string | null | undefined): string | null {
  const value = mime?.split(';')[0]?.trim().toLowerCase();
  return value ? value : null;
}

/** Declared types that say nothing about the content. */
const UNINFORMATIVE = new Set([
  'application/octet-stream',
  'binary/octet-stream',
  'application/unknown',
]);

/**
 * A declared mime type that contradicts the content is refused: the upload was
 * mislabelled or tampered with, and guessing could process the wrong thing.
 */
export function assertDeclaredMime(name: string, declared: string | null, found: FileKind): void {
  const mime = normalizeMime(declared);
  if (mime === null || UNINFORMATIVE.has(mime) || found.kind === 'unsupported') return;
  const family = mime.split('/')[0];
  const agrees =
    found.kind === 'pdf'
      ? mime === 'application/pdf' || mime === 'application/x-pdf'
      : found.kind === 'image'
        ? family === 'image'
        : found.kind === 'audio'
          ? family === 'audio' || family === 'video'
          : family === 'text' || /^application\/(xhtml\+xml|xml|json|markdown)$/.test(mime);
  if (!agrees) {
    throw new HdError(
      'INVALID_INPUT',
      `${name}: declared as ${mime} but its content is ${describe(found)}; fix the file's mime type or upload the right file`,
      { details: { declared_mime: mime, detected: describe(found) } },
    );
  }
}

export function describe(kind: FileKind): string {
  switch (kind.kind) {
    case 'pdf':
      return 'a PDF document';
    case 'image':
      return `an image (${kind.mime})`;
    case 'audio':
      return `audio or video (${kind.mime})`;
    case 'text':
      return kind.format === 'html' ? 'an HTML page' : `text (${kind.format})`;
    case 'unsupported':
      return kind.what;
  }
}
