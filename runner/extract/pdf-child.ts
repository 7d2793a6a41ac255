/**
 * Child-process entry of the PDF parser (see pdf-text.ts, which starts it with a heap
 * limit, a memory watchdog and a timeout): `node pdf-child.ts [--xfa] FILE MAX_PAGES
 * [PAGES]`. Writes one JSON message per line to stdout: `pages`, then `page` for each page
 * in order (only those of PAGES, a comma-separated list, where given), then `done`; or an
 * `error` with a reason. Nothing else is written to stdout. With --xfa, the pages are
 * those of a pure XFA form's layout (pdf-xfa.ts); a file that is none has 0 pages.
 */
import { readFile } from 'node:fs/promises';
import { PDFParse } from 'pdf-parse';
import { inLogicalOrder, type BidiItem } from './pdf-bidi.ts';
import { xfaPageTexts, type XfaNode } from './pdf-xfa.ts';

export type PdfChildMessage =
  | { type: 'pages'; total: number }
  | { type: 'page'; num: number; text: string }
  | { type: 'done'; max_rss_kb: number }
  | { type: 'error'; reason: 'password' | 'invalid' | 'too_many_pages' | 'other'; message: string };

async function send(message: PdfChildMessage): Promise<void> {
  if (!process.stdout.write(`${JSON.stringify(message)}\n`)) {
    await new Promise((resolve) => process.stdout.once('drain', resolve));
  }
}

function reasonOf(error: unknown): 'password' | 'invalid' | 'other' {
  const name = (error as { name?: unknown })?.name;
  if (name === 'PasswordException') return 'password';
  if (name === 'InvalidPDFException' || name === 'FormatError') return 'invalid';
  return 'other';
}

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  const xfa = args[0] === '--xfa';
  const [file, maxPagesArg, pagesArg] = xfa ? args.slice(1) : args;
  if (!file || !maxPagesArg) {
    process.stderr.write('usage: pdf-child [--xfa] FILE MAX_PAGES [PAGES]\n');
    return 2;
  }
  const maxPages = Number(maxPagesArg);
  // verbosity 0: pdf.js warnings about recoverable quirks stay out of stderr.
  const parser = new PDFParse({
    data: new Uint8Array(await readFile(file)),
    verbosity: 0,
    ...(xfa ? { enableXfa: true } : {}),
  });
  try {
    const doc = await loadDocument(parser);
    let total: number;
    let pageText: (num: number) => Promise<string>;
    if (xfa) {
      // Only a pure XFA form is read from its layout; any other file has no such pages.
      const texts = doc.isPureXfa && doc.allXfaHtml ? xfaPageTexts(doc.allXfaHtml) : [];
      total = texts.length;
      pageText = async (num) => texts[num - 1] ?? '';
    } else {
      readRightToLeftInOrder(doc);
      // The first page's text also gives the page count (cheaper than getInfo(), which
      // reads the outline and metadata too).
      const first = await parser.getText({ first: 1, last: 1, pageJoiner: '' });
      total = first.total;
      // One page per call keeps memory flat: pdf.js drops the page after each one.
      pageText = async (num) =>
        num === 1
          ? (first.pages[0]?.text ?? '')
          : ((await parser.getText({ first: num, last: num, pageJoiner: '' })).pages[0]?.text ??
            '');
    }
    await send({ type: 'pages', total });
    if (total > maxPages) {
      await send({
        type: 'error',
        reason: 'too_many_pages',
        message: `the PDF has ${total} pages, more than the limit of ${maxPages}`,
      });
      return 3;
    }
    const wanted = pagesArg
      ? pagesArg
          .split(',')
          .map(Number)
          .filter((n) => n >= 1 && n <= total)
      : Array.from({ length: total }, (_, i) => i + 1);
    for (const num of wanted) await send({ type: 'page', num, text: await pageText(num) });
    await send({ type: 'done', max_rss_kb: process.resourceUsage().maxRSS });
    return 0;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    await send({ type: 'error', reason: reasonOf(error), message });
    return 3;
  } finally {
    await parser.destroy();
  }
}

/** What pdf-parse (2.4.5, pinned) keeps private: its pdf.js document, loaded once. */
interface PdfJsDocument {
  isPureXfa: boolean;
  allXfaHtml: XfaNode | null;
  getPage(num: number): Promise<PdfJsPage>;
}
interface PdfJsPage {
  getTextContent(options?: unknown): Promise<{ items: BidiItem[] }>;
}

async function loadDocument(parser: PDFParse): Promise<PdfJsDocument> {
  return (parser as unknown as { load(): Promise<PdfJsDocument> }).load();
}

/**
 * Every page pdf-parse reads hands over its text items with right-to-left lines in
 * reading order (pdf-bidi.ts); pdf-parse's own line and cell logic then runs as before.
 */
function readRightToLeftInOrder(doc: PdfJsDocument): void {
  const getPage = doc.getPage.bind(doc);
  doc.getPage = async (num) => {
    const page = await getPage(num);
    const read = page.getTextContent.bind(page);
    page.getTextContent = async (options) => {
      const content = await read(options);
      return { ...content, items: inLogicalOrder(content.items) };
    };
    return page;
  };
}

process.exitCode = await main();
