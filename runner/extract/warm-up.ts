import { chunkText } from './chunker.ts';
import { judgePageText } from './page-quality.ts';
import { joinPages, normalizeText } from './text.ts';

// Made-up pages, in the shapes a text layer has: sentences, a dot-leader line, umlauts.
const SAMPLE_PAGE = [
  'Abschnitt 1: Die Prüfung der Unterlagen ergab keine Beanstandungen.\r\n',
  'Contents ........ 2\n\n',
  'The quarterly report lists 42 invoices and 7 open items. Every figure was checked twice.\n',
].join('');

/**
 * A PDF's text path (quality gate, normalising, joining, chunking) run once on made-up
 * pages, before a warm runner has a job: V8 compiles these functions and their regular
 * expressions then, not on the job's time (issue 13). Nothing of any job is involved.
 */
export function warmTextPath(): void {
  const pages = Array.from({ length: 8 }, (_, i) =>
    `${SAMPLE_PAGE.repeat(6)}\f`.repeat(i > 0 ? 1 : 2),
  );
  const texts = pages.map((raw) => (judgePageText(raw).usable ? normalizeText(raw) : ''));
  const joined = joinPages(texts.map((text, i) => ({ num: i + 1, text })));
  chunkText(joined.text, { targetChars: 1000, overlapChars: 100 }, joined.pages);
}
