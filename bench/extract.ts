/**
 * extract_text benchmark: pages/s of our PDF text extraction (pdf-parse in its bounded
 * child process, then normalising and chunking) against `pdftotext` (poppler, C++) on
 * the same generated PDFs, in the same run, pinned to one core (taskset), with peak RSS.
 *
 *   node bench/extract.ts            # HD_BENCH_PAGES=20,200,1000 HD_BENCH_RUNS=3
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chunkText } from '../runner/extract/chunker.ts';
import { extractPdfText } from '../runner/extract/pdf-text.ts';
import { joinPages, normalizeText } from '../runner/extract/text.ts';
import { findTool } from '../runner/extract/tools.ts';
import { textPdf } from '../test/fixtures/documents.ts';
import { envInt, median, peakRssMb } from './lib.ts';

// Children inherit the CPU affinity: re-run this script on core 0 so that the parser
// process and pdftotext each get the same single core.
if (!process.env.HD_BENCH_PINNED && findTool('taskset')) {
  const child = spawn('taskset', ['-c', '0', process.execPath, ...process.argv.slice(1)], {
    stdio: 'inherit',
    env: { ...process.env, HD_BENCH_PINNED: '1' },
  });
  child.on('exit', (code) => process.exit(code ?? 1));
} else {
  await main();
}

async function main() {
  if (!findTool('pdftotext')) throw new Error('pdftotext is needed: apt-get install poppler-utils');
  const sizes = (process.env.HD_BENCH_PAGES ?? '20,200,1000').split(',').map(Number);
  const runs = envInt('HD_BENCH_RUNS', 3);
  const dir = await mkdtemp(join(tmpdir(), 'hd-bench-extract-'));
  console.log(`extract bench: ${runs} run(s) each, pinned=${process.env.HD_BENCH_PINNED ?? '0'}`);
  try {
    for (const pages of sizes) {
      const file = join(dir, `doc-${pages}.pdf`);
      await writeFile(file, textPdf(Array.from({ length: pages }, (_, i) => pageText(i))));
      const ours: number[] = [];
      const anchor: number[] = [];
      let childRss = 0;
      let anchorRss = 0;
      let chunks = 0;
      for (let run = 0; run < runs; run += 1) {
        const a = await timePdftotext(file);
        anchor.push(a.ms);
        anchorRss = Math.max(anchorRss, a.peakKb);
        const o = await timeOurs(file, pages);
        ours.push(o.ms);
        childRss = Math.max(childRss, o.peakKb);
        chunks = o.chunks;
      }
      const ourRate = (pages * 1000) / median(ours);
      const anchorRate = (pages * 1000) / median(anchor);
      console.log(
        [
          `${String(pages).padStart(5)} pages:`,
          `pdftotext ${anchorRate.toFixed(0)} pages/s (peak RSS ${(anchorRss / 1024).toFixed(0)} MB)`,
          `| hd-runner ${ourRate.toFixed(0)} pages/s = ${(ourRate / anchorRate).toFixed(2)}x`,
          `(parser peak RSS ${(childRss / 1024).toFixed(0)} MB, ${chunks} chunks)`,
        ].join(' '),
      );
    }
    console.log(`runner process peak RSS ${peakRssMb().toFixed(0)} MB`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** About 2,500 characters of German-English prose per page, different on every page. */
function pageText(i: number): string {
  const sentences = [
    `Abschnitt ${i + 1}: Die Prüfung der Unterlagen ergab keine Beanstandungen.`,
    'Grüße aus München; Äpfel, Öl und Übermut sind schön.',
    `The quarterly report lists ${i * 7} invoices and ${i * 3} open items.`,
    'Der Straßenbahnfahrer fährt über die Brücke, während die Möwen kreischen.',
    'Every figure was checked twice, and the totals agree with the ledger.',
  ];
  return Array.from({ length: 8 }, () => sentences.join(' ')).join(' ');
}

async function timeOurs(file: string, pages: number) {
  const started = performance.now();
  const texts: { num: number; text: string }[] = [];
  const result = await extractPdfText(file, {
    name: file,
    maxPages: pages,
    timeoutMs: 600_000,
    maxMemoryMb: 1024,
    signal: new AbortController().signal,
    onPage: (page) => {
      texts.push({ num: page.num, text: normalizeText(page.text) });
    },
  });
  const joined = joinPages(texts);
  const chunks = chunkText(joined.text, { targetChars: 1500, overlapChars: 200 }, joined.pages);
  return { ms: performance.now() - started, peakKb: result.peakRssKb, chunks: chunks.length };
}

/** pdftotext's time and peak RSS (VmHWM sampled from /proc while it runs). */
async function timePdftotext(file: string): Promise<{ ms: number; peakKb: number }> {
  const started = performance.now();
  const child = spawn('pdftotext', ['-enc', 'UTF-8', file, '-'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  let peakKb = 0;
  const sample = async () => {
    try {
      const status = await readFile(`/proc/${child.pid}/status`, 'utf8');
      peakKb = Math.max(peakKb, Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0));
    } catch {
      // exited
    }
  };
  const timer = setInterval(() => void sample(), 5);
  await new Promise<void>((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`pdftotext exit ${code}`)),
    );
  });
  clearInterval(timer);
  return { ms: performance.now() - started, peakKb };
}
