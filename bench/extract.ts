/**
 * extract_text benchmark, end to end through the job: `hd-runner run --job-id` in its own
 * process (claim, download from fs storage, extraction, chunks written to a real embedded
 * PostgreSQL, completion), as a scheduler starts it.
 *
 * 1. Text PDFs (generated, ~2,500 characters a page) against `pdftotext` on the same file;
 *    runner and pdftotext each pinned to core 0 (taskset). The fixed overhead (process
 *    start-up, claim, completion) is the job's wall time less the handler's own
 *    (stats.duration_ms: download, extraction, chunking, the chunks' write).
 * 2. Scanned PDFs (pages rendered to images, no text layer): OCR pages/s of the job, using
 *    both cores, against bare `pdftoppm` + `tesseract` on the same pages, as many at once
 *    as there are cores, one thread each.
 *
 * 3. With HD_BENCH_CORPUS=DIR, every *.pdf in DIR, real-world files nobody here wrote, read
 *    by the handler's PDF path (in this process) and by `pdftotext`: the outcome (error code),
 *    pages and their layers, similarity to pdftotext (character 3-grams, Dice), pages/s
 *    with and without OCR, peak RSS. The files stay out of the repository; get them with
 *      git clone --depth 1 https://github.com/py-pdf/sample-files /tmp/corpus-src
 *      git clone --depth 1 https://github.com/pdfminer/pdfminer.six /tmp/pdfminer
 *      mkdir -p /tmp/corpus && find /tmp/corpus-src /tmp/pdfminer/samples -name '*.pdf' \
 *        -size +0 -exec cp {} /tmp/corpus/ \;
 *
 *   node bench/extract.ts   # HD_BENCH_PAGES=1,200,1000 HD_BENCH_OCR_PAGES=8 HD_BENCH_RUNS=3
 *   npm run build && HD_BENCH_CLI=dist/cli/main.js node bench/extract.ts   # the built runner
 *   HD_BENCH_CORPUS=/tmp/corpus HD_BENCH_PAGES= HD_BENCH_OCR_PAGES=0 node bench/extract.ts
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { configToEnv, loadConfig, type Config } from '../control-plane/config.ts';
import { openDb } from '../control-plane/open.ts';
import { extractPdf } from '../runner/extract/pdf.ts';
import { findTool } from '../runner/extract/tools.ts';
import { GERMAN, renderGray, textPdf } from '../test/fixtures/documents.ts';
import { makePdf } from '../test/fixtures/make-pdf.ts';
import * as b from './lib.ts';

const ACCOUNT = 'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa';
const BUCKET = 'hd_uploads_raw';
// HD_BENCH_CLI=dist/cli/main.js: the built CLI, whose `run` is the runner's bundle (npm run
// build), as a scheduler on the process launcher and the images start it; default: source.
const CLI = resolve(process.env.HD_BENCH_CLI ?? join(import.meta.dirname, '..', 'cli', 'main.ts'));
const REPORT_RSS = join(import.meta.dirname, 'report-rss.mjs');
const PIN = findTool('taskset') ? ['taskset', '-c', '0'] : [];
// GNU time (Debian: the `time` package), for CPU seconds; the shell's builtin will not do.
const TIME = ['/usr/bin/time'].find((path) => existsSync(path));

for (const tool of ['pdftotext', 'pdftoppm', 'tesseract']) {
  if (!findTool(tool))
    throw new Error(`${tool} is needed: apt-get install poppler-utils tesseract-ocr`);
}
const sizes = (process.env.HD_BENCH_PAGES ?? '1,200,1000').split(',').filter(Boolean).map(Number);
const ocrPages = process.env.HD_BENCH_OCR_PAGES === '0' ? 0 : b.envInt('HD_BENCH_OCR_PAGES', 8);
const corpus = process.env.HD_BENCH_CORPUS;
const runs = b.envInt('HD_BENCH_RUNS', 3);
// HD_BENCH_CPU_PROF=DIR: each runner writes a V8 CPU profile there (open in Chrome DevTools).
const cpuProf = process.env.HD_BENCH_CPU_PROF;
const profArgs = cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${cpuProf}`] : [];

console.log(`# extract bench — ${b.machineLine()}, ${runs} run(s) each, pinned=${PIN.length > 0}`);
const database = await b.startBenchDatabase();
const work = await mkdtemp(join(tmpdir(), 'hd-bench-extract-'));
const config = loadConfig({
  HD_DATABASE_URL: database.url,
  HD_STORAGE_ROOT: join(work, 'storage'),
  HD_WORK_DIR: work,
  HD_WORKER_ID: 'bench-extract',
  HD_LOG_LEVEL: 'silent',
});
const db = openDb(config);
try {
  for (const pages of sizes) {
    const pdf = textPdf(Array.from({ length: pages }, (_, i) => pageText(i)));
    const file = join(work, `text-${pages}.pdf`);
    await writeFile(file, pdf);
    const ours: number[] = [];
    const handler: number[] = [];
    const claimed: number[] = [];
    const anchor: number[] = [];
    const oursCpu: number[] = [];
    const anchorCpu: number[] = [];
    let peak = 0;
    let chunks = 0;
    for (let run = 0; run < runs; run += 1) {
      const bare = await timed([...PIN, 'pdftotext', '-enc', 'UTF-8', file, '/dev/null']);
      anchor.push(bare.ms);
      anchorCpu.push(bare.cpuMs);
      const job = await runJob(config, pdf, `text-${pages}.pdf`, PIN);
      ours.push(job.ms);
      oursCpu.push(job.cpuMs);
      // The handler's own time: download, extraction, chunking, the chunks' write.
      handler.push(job.stats.duration_ms as number);
      claimed.push(job.claimedMs);
      peak = Math.max(peak, job.peakMb);
      chunks = job.stats.chunks as number;
    }
    const anchorRate = (pages * 1000) / b.median(anchor);
    const rate = (pages * 1000) / b.median(ours);
    const handlerRate = (pages * 1000) / b.median(handler);
    const overhead = b.median(ours.map((ms, i) => ms - handler[i]!));
    const cpuRatio = b.median(anchorCpu) / b.median(oursCpu);
    console.log(
      `text ${String(pages).padStart(5)} pages: pdftotext ${b.fmt(anchorRate)} pages/s (${b.fmt(b.median(anchor))} ms)` +
        ` | job ${b.fmt(rate)} pages/s = ${(rate / anchorRate).toFixed(2)}x (${b.fmt(b.median(ours))} ms)` +
        ` | handler ${b.fmt(handlerRate)} pages/s = ${(handlerRate / anchorRate).toFixed(2)}x (${b.fmt(b.median(handler))} ms)` +
        ` | fixed overhead ${b.fmt(overhead)} ms, claim -> finished ${b.fmt(b.median(claimed))} ms` +
        ` | CPU pdftotext ${b.fmt(b.median(anchorCpu))} ms, job ${b.fmt(b.median(oursCpu))} ms = ${cpuRatio.toFixed(2)}x` +
        ` | runner peak RSS ${b.fmt(peak)} MB, ${chunks} chunks`,
    );
  }

  if (ocrPages > 0) await ocrBench();
  if (corpus) await corpusBench(corpus);
} finally {
  await db.close();
  await database.stop();
  await rm(work, { recursive: true, force: true });
}

/** OCR: both cores, as the job gets them in a container (cpus: 2). */
async function ocrBench() {
  const scan = renderGray(textPdf([GERMAN.repeat(6)]), work);
  const scanned = makePdf(Array.from({ length: ocrPages }, () => scan));
  const scanFile = join(work, 'scan.pdf');
  await writeFile(scanFile, scanned);
  const ours: number[] = [];
  const anchor: number[] = [];
  let peak = 0;
  for (let run = 0; run < runs; run += 1) {
    anchor.push(await bareOcr(scanFile, ocrPages, config.HD_OCR_DPI, config.HD_OCR_LANGUAGES));
    const job = await runJob(config, scanned, 'scan.pdf', []);
    if (job.stats.ocr_pages !== ocrPages) throw new Error(`OCR of ${job.stats.ocr_pages} pages`);
    ours.push(job.ms);
    peak = Math.max(peak, job.peakMb);
  }
  const anchorRate = (ocrPages * 1000) / b.median(anchor);
  const rate = (ocrPages * 1000) / b.median(ours);
  console.log(
    `ocr  ${ocrPages} scanned pages, ${availableParallelism()} cores: bare pdftoppm+tesseract ${anchorRate.toFixed(2)} pages/s | job ${rate.toFixed(2)} pages/s = ${(rate / anchorRate).toFixed(2)}x (runner peak RSS ${b.fmt(peak)} MB)`,
  );
}

/** Real-world PDFs through the handler's PDF path and through pdftotext, file by file. */
async function corpusBench(dir: string) {
  const files = (await readdir(dir)).filter((f) => f.toLowerCase().endsWith('.pdf')).sort();
  const codes: Record<string, number> = {};
  const totals = {
    text: { pages: 0, ms: 0 },
    ocr: { pages: 0, ms: 0 },
    anchor: { pages: 0, ms: 0 },
  };
  const similarities: number[] = [];
  for (const file of files) {
    const path = join(dir, file);
    const anchor = await timed(['pdftotext', '-enc', 'UTF-8', path, join(work, 'anchor.txt')]).then(
      async (run) => ({ ms: run.ms, text: await readFile(join(work, 'anchor.txt'), 'utf8') }),
      () => undefined,
    );
    const started = performance.now();
    let line: string;
    try {
      const pdf = await extractPdf(path, {
        name: file,
        maxPages: config.HD_EXTRACT_MAX_PAGES,
        parseTimeoutMs: config.HD_EXTRACT_PARSE_TIMEOUT_MS,
        textPageTimeoutMs: config.HD_EXTRACT_PAGE_TIMEOUT_MS,
        maxMemoryMb: config.HD_EXTRACT_MAX_MEMORY_MB,
        ocr: 'auto',
        ocrLanguages: config.HD_OCR_LANGUAGES,
        ocrDpi: config.HD_OCR_DPI,
        ocrMinChars: config.HD_OCR_MIN_CHARS,
        ocrPageTimeoutMs: config.HD_OCR_PAGE_TIMEOUT_MS,
        ocrConcurrency: Math.min(2, availableParallelism()),
        signal: new AbortController().signal,
        workDir: work,
        onProgress: async () => {},
      });
      const ms = performance.now() - started;
      const bucket = pdf.ocrTried > 0 ? totals.ocr : totals.text;
      bucket.pages += pdf.pageCount;
      bucket.ms += ms;
      codes.completed = (codes.completed ?? 0) + 1;
      const similarity = anchor ? dice(pdf.text, anchor.text) : NaN;
      if (!Number.isNaN(similarity)) similarities.push(similarity);
      if (anchor) {
        totals.anchor.pages += pdf.pageCount;
        totals.anchor.ms += anchor.ms;
      }
      const layers = pdf.layers.reduce<Record<string, number>>(
        (n, layer) => ({ ...n, [layer]: (n[layer] ?? 0) + 1 }),
        {},
      );
      line = `completed ${pdf.pageCount} p ${JSON.stringify(layers)} ${b.fmt(ms)} ms, 3-gram similarity ${similarity.toFixed(2)}`;
    } catch (error) {
      const code = (error as { code?: string }).code ?? 'THROWN';
      codes[code] = (codes[code] ?? 0) + 1;
      line = `${code}: ${(error as Error).message}`;
    }
    console.log(`  ${file.padEnd(40)} ${line} | pdftotext ${anchor ? 'ok' : 'failed'}`);
  }
  const rate = (t: { pages: number; ms: number }) => ((t.pages * 1000) / t.ms).toFixed(1);
  console.log(
    `corpus ${files.length} files: ${JSON.stringify(codes)}; pages/s without OCR ${rate(totals.text)}, with OCR ${rate(totals.ocr)}, pdftotext ${rate(totals.anchor)};` +
      ` similarity to pdftotext median ${b.median(similarities).toFixed(2)}, min ${Math.min(...similarities).toFixed(2)};` +
      ` peak RSS of this process ${b.fmt(b.peakRssMb())} MB`,
  );
}

/** Dice coefficient of the character 3-gram sets, white space collapsed. */
function dice(a: string, b2: string): number {
  const grams = (text: string) => {
    const flat = text.replace(/\s+/g, ' ').trim();
    const set = new Set<string>();
    for (let i = 0; i + 3 <= flat.length; i += 1) set.add(flat.slice(i, i + 3));
    return set;
  };
  const x = grams(a);
  const y = grams(b2);
  if (x.size + y.size === 0) return 1;
  let shared = 0;
  for (const gram of x) if (y.has(gram)) shared += 1;
  return (2 * shared) / (x.size + y.size);
}

/** One extract_text job for a one-file document, run by `hd-runner run` in its own process. */
async function runJob(config: Config, pdf: Buffer, name: string, pin: string[]) {
  const documentId = randomUUID();
  const key = `accounts/${ACCOUNT}/documents/${documentId}/${name}`;
  const path = join(config.HD_STORAGE_ROOT!, BUCKET, key);
  await mkdir(join(path, '..'), { recursive: true });
  await writeFile(path, pdf);
  const admin = await b.connect(config.HD_DATABASE_URL!);
  try {
    await admin.query(
      `insert into hd_document_files (account_id, document_id, bucket, storage_path, mime_type, size_bytes)
       values ($1, $2, $3, $4, 'application/pdf', $5)`,
      [ACCOUNT, documentId, BUCKET, key, pdf.length],
    );
  } finally {
    await admin.end();
  }
  const job = await db.enqueueJob({
    accountId: ACCOUNT,
    jobType: 'extract_text',
    documentId,
    debug: {},
  });
  const run = await timed(
    [...pin, process.execPath, ...profArgs, '--import', REPORT_RSS, CLI, 'run', '--job-id', job.id],
    configToEnv(config),
  );
  const done = await db.getJob(job.id);
  if (done?.status !== 'completed') throw new Error(`job ${done?.status}: ${done?.error}`);
  const peakKb = Number(/BENCH_MAX_RSS_KB=(\d+)/.exec(run.stderr)?.[1] ?? NaN);
  return {
    ms: run.ms,
    cpuMs: run.cpuMs,
    // The row's own clock: the claim (started_at) to the completion (finished_at).
    claimedMs: done.finished_at!.getTime() - done.started_at!.getTime(),
    peakMb: peakKb / 1024,
    stats: done.debug.stats as Record<string, unknown>,
  };
}

/** Renders and OCRs every page as the job does, `cores` pages at once, one thread each. */
async function bareOcr(file: string, pages: number, dpi: number, languages: string) {
  const dir = await mkdtemp(join(work, 'bare-'));
  const started = performance.now();
  let next = 1;
  const worker = async () => {
    while (next <= pages) {
      const page = next++;
      const base = join(dir, `p${page}`);
      // prettier-ignore
      await timed(['pdftoppm', '-f', `${page}`, '-l', `${page}`, '-r', `${dpi}`, '-gray', '-png', '-singlefile', file, base]);
      await timed(['tesseract', `${base}.png`, 'stdout', '-l', languages], {
        OMP_THREAD_LIMIT: '1',
      });
    }
  };
  await Promise.all(Array.from({ length: availableParallelism() }, worker));
  const ms = performance.now() - started;
  await rm(dir, { recursive: true, force: true });
  return ms;
}

/**
 * Runs a command to its end: wall time, CPU time (user + system, of the command and the
 * children it waited for, from GNU time where installed) and stderr; fails on a non-zero
 * exit. CPU time barely moves with the machine's load, wall time does.
 */
function timed(command: string[], env: Record<string, string> = {}) {
  const argv = TIME ? [TIME, '-f', 'BENCH_CPU_S=%U+%S', ...command] : command;
  const started = performance.now();
  const child = spawn(argv[0]!, argv.slice(1), {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { PATH: process.env.PATH ?? '', ...env },
  });
  let stderr = '';
  child.stderr.on('data', (part: Buffer) => (stderr += part.toString()));
  return new Promise<{ ms: number; cpuMs: number; stderr: string }>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => {
      const ms = performance.now() - started;
      const cpu = /BENCH_CPU_S=([\d.]+)\+([\d.]+)/.exec(stderr);
      const cpuMs = cpu ? (Number(cpu[1]) + Number(cpu[2])) * 1000 : NaN;
      if (code === 0) resolve({ ms, cpuMs, stderr });
      else reject(new Error(`${command.join(' ')} exit ${code}: ${stderr.slice(-500)}`));
    });
  });
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
