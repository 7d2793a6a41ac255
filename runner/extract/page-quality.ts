/**
 * Whether the text layer of a PDF page can be trusted, judged on its raw text (before
 * normalising strips control characters). A broken font encoding gives control
 * characters, U+FFFD or private-use code points where letters should be, or a mix
 * without letters; OCR of the rendered page reads what is really drawn.
 */
export type PageText =
  { usable: true; visible: number } | { usable: false; visible: number; why: 'empty' | 'garbled' };

// C0/C1 controls other than the white space a layout holds (tab, line ends, form feed).
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0008\u000b\u000e-\u001f\u007f-\u009f]/gu;
// Replacement character, private use areas, noncharacters (pdf.js gives U+FFFF for glyphs
// a broken CID font cannot map: pdf.js's arial_unicode_ab_cidfont.pdf): glyphs without a
// mapping to Unicode.
const UNMAPPED = /[\ufffd\ue000-\uf8ff\ufdd0-\ufdef\ufffe\uffff\u{f0000}-\u{10ffff}]/gu;
// Counted by what is not a letter or digit: few matches on real text, so cheap.
const NOT_LETTER_OR_DIGIT = /[^\p{L}\p{N}]/gu;

/** Share of the visible characters that may be junk before the page is OCRed. */
export const MAX_JUNK_SHARE = 0.1;
/** Share of letters and digits a real text has at least (tables, formulas included). */
export const MIN_LETTER_SHARE = 0.35;

// Three or more of the same punctuation or symbol in a row: dot leaders of a table of
// contents ("Chapter 1 ........ 2"), rules, fill-in lines. Counted as one character, or a
// contents page would be judged garbled and OCRed (issue 13's corpus: OCR read the dots as
// "oo. ccc nn").
// U+FFFD (a symbol too) stays: unmapped glyphs are counted one by one.
const LEADER = /((?!\ufffd)[\p{P}\p{S}])\1{2,}/gu;

export function judgePageText(raw: string): PageText {
  const visible = raw.replace(/\s+/gu, '').replace(LEADER, '$1');
  const length = visible.length;
  if (length === 0) return { usable: false, visible: 0, why: 'empty' };
  const count = (pattern: RegExp) => visible.match(pattern)?.length ?? 0;
  const junk = count(CONTROL) + count(UNMAPPED);
  const letters = length - count(NOT_LETTER_OR_DIGIT);
  // A few characters ("3", "–") are too few to judge by shares.
  const judged = length >= 8;
  if (junk / length > MAX_JUNK_SHARE || (judged && letters / length < MIN_LETTER_SHARE)) {
    return { usable: false, visible: length, why: 'garbled' };
  }
  return { usable: true, visible: length };
}
