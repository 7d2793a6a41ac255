import { describe, expect, it } from 'vitest';
import { assertDeclaredMime, sniff } from '../runner/extract/sniff.ts';

const bytes = (s: string) => Buffer.from(s, 'latin1');

describe('sniff: the file type comes from the bytes', () => {
  it('recognises documents, images and audio by their magic bytes', () => {
    expect(sniff(bytes('junk\n%PDF-1.7\n'), null)).toEqual({ kind: 'pdf' });
    // The header line lost, the body intact: readers take it.
    expect(sniff(bytes('%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>'), null)).toEqual({
      kind: 'pdf',
    });
    expect(sniff(bytes('Table 1 0 objects'), null)).toMatchObject({ kind: 'text' });
    expect(sniff(bytes('\x89PNG\r\n\x1a\n....'), 'application/pdf')).toEqual({
      kind: 'image',
      mime: 'image/png',
    });
    expect(sniff(bytes('\xff\xd8\xff\xe0'), null)).toMatchObject({ mime: 'image/jpeg' });
    expect(sniff(bytes('II*\x00'), null)).toMatchObject({ mime: 'image/tiff' });
    expect(sniff(bytes('RIFF\x00\x00\x00\x00WAVEfmt '), null)).toMatchObject({ kind: 'audio' });
    expect(sniff(bytes('ID3\x04'), null)).toMatchObject({ kind: 'audio', mime: 'audio/mpeg' });
    expect(sniff(bytes('\x00\x00\x00\x18ftypmp42'), null)).toMatchObject({ kind: 'audio' });
  });

  it('tells text, Markdown and HTML apart; the extension plays no part', () => {
    expect(sniff(bytes('Hallo Welt'), null)).toEqual({ kind: 'text', format: 'plain' });
    expect(sniff(bytes('# Titel'), 'text/markdown; charset=utf-8')).toEqual({
      kind: 'text',
      format: 'markdown',
    });
    expect(sniff(bytes('\xef\xbb\xbf  <!DOCTYPE html><p>x'), null)).toEqual({
      kind: 'text',
      format: 'html',
    });
    expect(sniff(bytes('<p>fragment</p>'), 'text/html')).toEqual({ kind: 'text', format: 'html' });
    expect(sniff(bytes('Gr\xfc\xdfe'), null)).toEqual({ kind: 'text', format: 'plain' });
  });

  it('refuses binary data it does not know', () => {
    expect(sniff(bytes('PK\x03\x04rest'), null)).toMatchObject({
      kind: 'unsupported',
      what: expect.stringMatching(/ZIP/),
    });
    expect(sniff(bytes('\x00\x01\x02\x03binary'), null)).toMatchObject({ kind: 'unsupported' });
  });

  it('refuses a declared mime type that contradicts the content, ignores uninformative ones', () => {
    const png = sniff(bytes('\x89PNG\r\n\x1a\n'), null);
    expect(() => assertDeclaredMime('a.pdf', 'application/pdf', png)).toThrow(
      /a\.pdf: declared as application\/pdf but its content is an image/,
    );
    expect(() => assertDeclaredMime('a.png', 'text/plain', png)).toThrow(
      expect.objectContaining({ code: 'INVALID_INPUT' }),
    );
    expect(() => assertDeclaredMime('a.png', 'image/jpeg', png)).not.toThrow();
    expect(() => assertDeclaredMime('a.bin', 'application/octet-stream', png)).not.toThrow();
    expect(() => assertDeclaredMime('a.txt', null, png)).not.toThrow();
    const text = sniff(bytes('plain'), null);
    expect(() => assertDeclaredMime('x.pdf', 'application/pdf', text)).toThrow(/content is text/);
  });
});
