import { Parser } from 'htmlparser2';

// Elements whose content is not text a reader sees.
const SKIP = new Set([
  'head',
  'script',
  'style',
  'noscript',
  'template',
  'svg',
  'math',
  'iframe',
  'object',
  'canvas',
  'select',
  'button',
]);
// Elements that end a paragraph.
const PARAGRAPH = new Set([
  'p', 'div', 'section', 'article', 'header', 'footer', 'main', 'nav', 'aside', 'h1', 'h2',
  'h3', 'h4', 'h5', 'h6', 'ul', 'ol', 'dl', 'table', 'blockquote', 'pre', 'figure',
  'figcaption', 'form', 'fieldset', 'address', 'hr', 'details', 'summary', 'title', 'body',
]); // prettier-ignore
// Elements that end a line.
const LINE = new Set(['li', 'tr', 'dt', 'dd', 'br', 'caption', 'option']);
const CELL = new Set(['td', 'th']);

/**
 * The visible text of an HTML page, from htmlparser2 (a tolerant, streaming parser that
 * handles unclosed tags, entities and raw-text elements such as <script> the way
 * browsers do). Block elements become paragraph breaks, so the chunker can split there;
 * `<title>` is kept as the first paragraph, the rest of `<head>` is dropped.
 */
export function htmlToText(html: string): string {
  const out: string[] = [];
  const parser = htmlParser((text) => out.push(text));
  parser.write(html);
  parser.end();
  return out.join('').replace(/[ \t]+\n/g, '\n');
}

/** A parser that hands the visible text to `emit` as it goes (write, then end). */
export function htmlParser(emit: (text: string) => void): Parser {
  let pendingBreak: '' | '\n' | '\n\n' = '';
  let emitted = false;
  let skipDepth = 0;
  let preDepth = 0;
  let inTitle = false;
  let atLineStart = true;

  const requestBreak = (br: '\n' | '\n\n') => {
    if (emitted && pendingBreak !== '\n\n') pendingBreak = br;
  };
  const write = (text: string) => {
    if (pendingBreak) {
      emit(pendingBreak);
      pendingBreak = '';
      atLineStart = true;
    }
    emit(text);
    emitted = true;
    atLineStart = text.endsWith('\n');
  };

  return new Parser(
    {
      onopentag(name) {
        if (name === 'title') inTitle = true;
        if (SKIP.has(name) && !inTitle) skipDepth += 1;
        if (name === 'pre') preDepth += 1;
        if (PARAGRAPH.has(name)) requestBreak('\n\n');
        else if (LINE.has(name)) requestBreak('\n');
        else if (CELL.has(name) && !atLineStart && !pendingBreak) write('\t');
      },
      onclosetag(name) {
        if (name === 'title') inTitle = false;
        if (SKIP.has(name) && skipDepth > 0) skipDepth -= 1;
        if (name === 'pre' && preDepth > 0) preDepth -= 1;
        if (PARAGRAPH.has(name)) requestBreak('\n\n');
        else if (LINE.has(name)) requestBreak('\n');
      },
      ontext(data) {
        if (skipDepth > 0 && !inTitle) return;
        const text = preDepth > 0 ? data : data.replace(/\s+/g, ' ');
        if (text === '' || (text === ' ' && (atLineStart || pendingBreak !== ''))) return;
        const lineStart = preDepth === 0 && (atLineStart || pendingBreak !== '');
        write(lineStart ? text.replace(/^ /, '') : text);
      },
    },
    { decodeEntities: true, lowerCaseTags: true, recognizeSelfClosing: true },
  );
}
