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
  const { visible: length, junk, letters } = countInOnePass(raw) ?? countByPatterns(raw);
  if (length === 0) return { usable: false, visible: 0, why: 'empty' };
  // A few characters ("3", "–") are too few to judge by shares.
  const judged = length >= 8;
  if (junk / length > MAX_JUNK_SHARE || (judged && letters / length < MIN_LETTER_SHARE)) {
    return { usable: false, visible: length, why: 'garbled' };
  }
  return { usable: true, visible: length };
}

/** What the gate counts on a page's visible characters (white space left out). */
interface PageCounts {
  /** Visible characters, each run of LEADER counted as one. */
  visible: number;
  /** Of them CONTROL or UNMAPPED. */
  junk: number;
  /** Of them letters or digits. */
  letters: number;
}

/** The counts by the regular expressions: the reference, and for text with surrogates. */
function countByPatterns(raw: string): PageCounts {
  const visible = withoutLeaders(raw.replace(/\s+/gu, ''));
  const count = (pattern: RegExp) => visible.match(pattern)?.length ?? 0;
  return {
    visible: visible.length,
    junk: count(CONTROL) + count(UNMAPPED),
    letters: visible.length - notLetterOrDigit(visible),
  };
}

// What each UTF-16 code unit is, as bits, looked up by the regular expressions once per
// code unit seen (KNOWN set then): countByPatterns built two new strings a page and the
// replace's list of matches, ~29 KB of garbage a page of 2,500 characters (issue 13: a
// 200-page job's gate, 6 MB, most of its time going to fresh memory and the collector).
const KNOWN = 1;
const SPACE = 2;
const LETTER_OR_DIGIT = 4;
const LEADER_CHAR = 8;
const JUNK = 16;
const SURROGATE_UNIT = 32;
let codeUnitKinds: Uint8Array | undefined;

/** The kind of a code unit not seen before, into codeUnitKinds. */
function classify(kinds: Uint8Array, code: number): number {
  const char = String.fromCharCode(code);
  let kind = KNOWN;
  if (code >= 0xd800 && code <= 0xdfff) kind |= SURROGATE_UNIT;
  else if (/\s/u.test(char)) kind |= SPACE;
  else {
    if (/[\p{L}\p{N}]/u.test(char)) kind |= LETTER_OR_DIGIT;
    if (/(?!\ufffd)[\p{P}\p{S}]/u.test(char)) kind |= LEADER_CHAR;
    if (matches(CONTROL, char) || matches(UNMAPPED, char)) kind |= JUNK;
  }
  kinds[code] = kind;
  return kind;
}

function matches(pattern: RegExp, text: string): boolean {
  pattern.lastIndex = 0;
  return pattern.test(text);
}

/**
 * countByPatterns in one pass over the page, building nothing; undefined for text with a
 * surrogate (astral characters are rare in text layers: the patterns count them).
 */
function countInOnePass(raw: string): PageCounts | undefined {
  let visible = 0;
  let junk = 0;
  let letters = 0;
  // The run of equal visible code units that the last one belongs to.
  let runUnit = -1;
  let runLength = 0;
  const kinds = (codeUnitKinds ??= new Uint8Array(0x10000));
  for (let i = 0; i < raw.length; i += 1) {
    const code = raw.charCodeAt(i);
    const kind = kinds[code] || classify(kinds, code);
    if (kind & SPACE) continue;
    if (kind & SURROGATE_UNIT) return undefined;
    visible += 1;
    if (kind & LETTER_OR_DIGIT) letters += 1;
    if (kind & JUNK) junk += 1;
    if (code !== runUnit) {
      runUnit = code;
      runLength = 1;
    } else if (kind & LEADER_CHAR) {
      // A leader counts as one: its 2nd and 3rd come off at the 3rd, later ones each.
      runLength += 1;
      if (runLength === 3) visible -= 2;
      else if (runLength > 3) visible -= 1;
    }
  }
  return { visible, junk, letters };
}

// The two Unicode property searches below were ~90% of the gate's time (~80 µs a page of
// 2,500 characters, issue 13): each character is looked up in the property's tables. Most
// text is mostly ASCII, which a table answers; the rest goes to the regular expression.

/** A code unit that is part of a surrogate pair or a lone one. */
const SURROGATE = /[\ud800-\udfff]/;
/** ASCII letters and digits, by code. */
const ASCII_LETTER_OR_DIGIT = Array.from({ length: 128 }, (_, c) =>
  /[A-Za-z0-9]/.test(String.fromCharCode(c)),
);

/** `text` with every run of LEADER counted as one character, as `replace(LEADER, '$1')`. */
export function withoutLeaders(text: string): string {
  // A run needs three equal code units in a row (BMP), or a surrogate to be checked there.
  for (let i = 2; i < text.length; i += 1) {
    const c = text.charCodeAt(i);
    if ((c === text.charCodeAt(i - 1) && c === text.charCodeAt(i - 2)) || (c & 0xf800) === 0xd800)
      return text.replace(LEADER, '$1');
  }
  if (text.length > 0 && SURROGATE.test(text.slice(0, 2))) return text.replace(LEADER, '$1');
  return text;
}

/** How many characters of `text` are no letter or digit, as `match(NOT_LETTER_OR_DIGIT)`. */
export function notLetterOrDigit(text: string): number {
  if (SURROGATE.test(text)) return text.match(NOT_LETTER_OR_DIGIT)?.length ?? 0;
  let count = 0;
  let rest = '';
  for (let i = 0; i < text.length; i += 1) {
    const c = text.charCodeAt(i);
    if (c >= 128) rest += text[i];
    else if (!ASCII_LETTER_OR_DIGIT[c]) count += 1;
  }
  return count + (rest.match(NOT_LETTER_OR_DIGIT)?.length ?? 0);
}
