/**
 * Child-process entry of the PDF parser (see pdf-text.ts, which starts it with a heap
 * limit, a memory watchdog and a timeout): `node pdf-child.ts FILE MAX_PAGES [PAGES]`.
 * Writes one JSON message per line to stdout: `pages`, then `page` for each page in
 * order (only those of PAGES, a comma-separated list, where given), then `done`; or an
 * `error` with a reason. Nothing else is written to stdout.
 */
import { readFile } from 'node:fs/promises';
import { PDFParse } from 'pdf-parse';

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
  const [file, maxPagesArg, pagesArg] = process.argv.slice(2);
  if (!file || !maxPagesArg) {
    process.stderr.write('usage: pdf-child FILE MAX_PAGES [PAGES]\n');
    return 2;
  }
  const maxPages = Number(maxPagesArg);
  // verbosity 0: pdf.js warnings about recoverable quirks stay out of stderr.
  const parser = new PDFParse({ data: new Uint8Array(await readFile(file)), verbosity: 0 });
  try {
    // The first page's text also gives the page count (cheaper than getInfo(), which
    // reads the outline and metadata too).
    const first = await parser.getText({ first: 1, last: 1, pageJoiner: '' });
    const total = first.total;
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
    for (const num of wanted) {
      if (num === 1) {
        await send({ type: 'page', num: 1, text: first.pages[0]?.text ?? '' });
        continue;
      }
      // One page per call keeps memory flat: pdf.js drops the page after each one.
      const result = await parser.getText({ first: num, last: num, pageJoiner: '' });
      await send({ type: 'page', num, text: result.pages[0]?.text ?? '' });
    }
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

process.exitCode = await main();
