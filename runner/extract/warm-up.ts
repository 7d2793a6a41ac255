import { chunkText } from './chunker.ts';
import { judgePageText } from './page-quality.ts';
import { joinPages, normalizeText } from './text.ts';

// Lines in the shapes a text layer has: sentences, umlauts, a dot-leader line, and (on
// every other page) typographic quotes and an ellipsis, which make a two-byte string.
const LINES = [
  'Abschnitt {n}: Die Prüfung der Unterlagen ergab keine Beanstandungen.',
  'The quarterly report lists {n} invoices and 7 open items. Every figure was checked twice.',
  'Der Straßenbahnfahrer fährt über die Brücke, während die Möwen kreischen.',
  'Contents ........ {n}',
  'It’s the “last” page…',
];
/** Lines of a made-up page: about 2,500 characters, as a page of running text. */
const PAGE_LINES = 40;
/**
 * Made-up pages run through the text path before a job (~125 KB of text, ~100 chunks):
 * V8 compiles and optimises the gate's and the chunker's code on them, and the garbage
 * they leave makes the young generation collect, so that the objects the warm runner
 * loaded are promoted out of it before the job. In a warm runner's 200-page job with
 * 9 made-up pages, one scavenge that promoted them cost ~30 ms of CPU, and the gate's
 * loops ran unoptimised (issue 13). 200 made-up pages did no better than 50 in profiles.
 */
const WARM_PAGES = 50;

/**
 * A PDF's text path (quality gate, normalising, joining, chunking) run on made-up pages,
 * before a warm runner has a job: V8 compiles and optimises these functions and their
 * regular expressions then, not on the job's time (issue 13). Nothing of any job is
 * involved.
 */
export function warmTextPath(): void {
  const raw = Array.from({ length: WARM_PAGES }, (_, i) => madeUpPage(i));
  const texts = raw.map((text) => (judgePageText(text).usable ? normalizeText(text) : ''));
  const joined = joinPages(texts.map((text, i) => ({ num: i + 1, text })));
  chunkText(joined.text, { targetChars: 1500, overlapChars: 200 }, joined.pages);
}

/** Page `n` of made-up text, joined from pieces as pdftotext's pages are (poppler.ts). */
function madeUpPage(n: number): string {
  // The last of LINES (two-byte characters) on even pages only.
  const kinds = n % 2 === 0 ? LINES.length : LINES.length - 1;
  const parts: string[] = [];
  for (let line = 0; line < PAGE_LINES; line += 1) {
    const text = LINES[(n + line) % kinds]!;
    parts.push(text.replace('{n}', String(n * 7 + line)), line % 9 === 8 ? '\r\n\r\n' : '\n');
  }
  return parts.join('');
}
