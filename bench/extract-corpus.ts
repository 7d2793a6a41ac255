/**
 * The real-world part of the extract bench (bench/extract.ts, HD_BENCH_CORPUS): every *.pdf
 * in the corpus folders, read by the handler's extraction (runner/extract/extract-file.ts:
 * sniffing, poppler, pdf-parse, the quality gate, OCR, chunking) in this process, side by
 * side with `pdftotext`, file by file. Per file: the outcome (the code and the message a
 * user would see), pages and their layers, similarity to pdftotext's text (character
 * 3-grams, and word pairs, which catch a reversed word order that 3-grams barely see),
 * timings. Then the totals, and the files worth a look: failures pdftotext reads, messages
 * that are not one plain sentence, the least similar, timeouts.
 *
 * Settings (environment): HD_BENCH_CORPUS=DIR[:DIR…]; HD_BENCH_CORPUS_LIMIT=N, a sample of
 * N files spread over the corpus (by a hash of the name, the same sample every run);
 * HD_BENCH_CORPUS_TIMEOUT_S, per file and per tool (default 120); HD_BENCH_CORPUS_OCR=off
 * to leave OCR out; HD_BENCH_CORPUS_OUT=FILE.jsonl, one record per file.
 *
 * How to get the corpus: bench/extract.ts's comment. A real book of 1,000+ pages, kept out
 * of the repository too: the PGF/TikZ manual (1,321 pages, 10 MB, LuaTeX; sha256 ac16c575…)
 * from Debian's texlive-pictures-doc (a 233 MB package, bookworm 2022.20230122-3):
 *   cd /tmp && apt-get download texlive-pictures-doc
 *   dpkg-deb --fsys-tarfile texlive-pictures-doc_*_all.deb \
 *     | tar -x ./usr/share/doc/texlive-doc/generic/pgf/pgfmanual.pdf
 *   mkdir -p /tmp/book-corpus && mv usr/share/doc/texlive-doc/generic/pgf/pgfmanual.pdf /tmp/book-corpus/
 *   HD_BENCH_CORPUS=/tmp/book-corpus HD_BENCH_CORPUS_TIMEOUT_S=1200 HD_BENCH_PAGES= \
 *     HD_BENCH_OCR_PAGES=0 node bench/extract.ts
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { appendFile, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism, loadavg } from 'node:os';
import { delimiter, join } from 'node:path';
import { toHdError } from '../contract/errors.ts';
import type { Config } from '../control-plane/config.ts';
import { extractFile } from '../runner/extract/extract-file.ts';
import { judgePageText } from '../runner/extract/page-quality.ts';
import { findTool } from '../runner/extract/tools.ts';
import * as b from './lib.ts';

interface FileRecord {
  file: string;
  bytes: number;
  /** `completed`, an error code, or BENCH_TIMEOUT (the per-file limit stopped it). */
  outcome: string;
  message?: string;
  pages?: number;
  layers?: Record<string, number>;
  ocrTried?: number;
  ms: number;
  /**
   * pdftotext: ok with its text's visible length and whether that text passes the
   * handler's quality gate (junk from broken fonts does not), or how it failed.
   */
  anchor: { ok: boolean; ms: number; visible: number; usable: boolean; failure?: string };
  similarity?: number;
  wordPairs?: number;
  parserPeakMb?: number;
}

export async function corpusBench(dirs: string, config: Config, work: string): Promise<void> {
  const limit = b.envInt('HD_BENCH_CORPUS_LIMIT', Number.MAX_SAFE_INTEGER);
  const timeoutMs = b.envInt('HD_BENCH_CORPUS_TIMEOUT_S', 120) * 1000;
  const ocr = process.env.HD_BENCH_CORPUS_OCR === 'off' ? 'off' : 'auto';
  const out = process.env.HD_BENCH_CORPUS_OUT;
  if (out) await writeFile(out, '');
  const files: string[] = [];
  for (const dir of dirs.split(delimiter).filter(Boolean)) {
    for (const name of await readdir(dir)) {
      if (name.toLowerCase().endsWith('.pdf')) files.push(join(dir, name));
    }
  }
  const sample = files
    .map((path) => ({ path, key: createHash('sha1').update(path.split('/').pop()!).digest('hex') }))
    .sort((x, y) => x.key.localeCompare(y.key))
    .slice(0, limit)
    .map((f) => f.path)
    .sort();
  console.log(
    `corpus: ${sample.length} of ${files.length} PDFs in ${dirs}, per-file limit ${timeoutMs / 1000} s, OCR ${ocr}, load ${loadLine()}`,
  );
  const records: FileRecord[] = [];
  for (const path of sample) {
    const record = await benchFile(path, config, work, { timeoutMs, ocr });
    records.push(record);
    if (out) await appendFile(out, `${JSON.stringify(record)}\n`);
    const sim = record.similarity === undefined ? '' : ` 3-grams ${record.similarity.toFixed(2)}`;
    const pairs =
      record.wordPairs === undefined ? '' : ` word pairs ${record.wordPairs.toFixed(2)}`;
    const what =
      record.outcome === 'completed'
        ? `completed ${record.pages} p ${JSON.stringify(record.layers)}${sim}${pairs}`
        : `${record.outcome}: ${record.message}`;
    console.log(
      `  ${record.file.padEnd(44)} ${what} ${b.fmt(record.ms)} ms | pdftotext ${record.anchor.ok ? `${record.anchor.visible} chars` : record.anchor.failure}`,
    );
  }
  summarize(records);
}

async function benchFile(
  path: string,
  config: Config,
  work: string,
  { timeoutMs, ocr }: { timeoutMs: number; ocr: 'auto' | 'off' },
): Promise<FileRecord> {
  const file = path.split('/').pop()!;
  const anchor = await pdftotext(path, timeoutMs);
  const workDir = await mkdtemp(join(work, 'corpus-'));
  const signal = AbortSignal.timeout(timeoutMs);
  const started = performance.now();
  const base = { file, bytes: 0, anchor };
  try {
    const extraction = await extractFile(path, 'application/pdf', {
      name: file,
      size: (await stat(path)).size,
      maxFileBytes: config.HD_EXTRACT_MAX_FILE_BYTES,
      chunking: {
        targetChars: config.HD_CHUNK_TARGET_CHARS,
        overlapChars: config.HD_CHUNK_OVERLAP_CHARS,
      },
      maxChunks: 100_000,
      maxPages: config.HD_EXTRACT_MAX_PAGES,
      parseTimeoutMs: Math.min(timeoutMs, config.HD_EXTRACT_PARSE_TIMEOUT_MS),
      textPageTimeoutMs: config.HD_EXTRACT_PAGE_TIMEOUT_MS,
      maxMemoryMb: config.HD_EXTRACT_MAX_MEMORY_MB,
      ocr,
      ocrLanguages: config.HD_OCR_LANGUAGES,
      ocrDpi: config.HD_OCR_DPI,
      ocrMinChars: config.HD_OCR_MIN_CHARS,
      ocrPageTimeoutMs: config.HD_OCR_PAGE_TIMEOUT_MS,
      cpus: Math.min(2, availableParallelism()),
      signal,
      workDir,
      onProgress: async () => {},
    });
    const ms = performance.now() - started;
    const text = extraction.paged?.text ?? '';
    const layers = (extraction.layers ?? []).reduce<Record<string, number>>(
      (n, layer) => ({ ...n, [layer]: (n[layer] ?? 0) + 1 }),
      {},
    );
    return {
      ...base,
      outcome: 'completed',
      pages: extraction.pageCount ?? 0,
      layers,
      ocrTried: extraction.ocrTried ?? 0,
      ms,
      ...(anchor.ok
        ? // The handler's text is NFC; pdftotext's may hold decomposed letters.
          {
            similarity: dice(text, anchor.text.normalize('NFC')),
            wordPairs: wordPairDice(text, anchor.text.normalize('NFC')),
          }
        : {}),
      parserPeakMb: (extraction.parserPeakRssKb ?? 0) / 1024,
      anchor: strip(anchor),
    };
  } catch (error) {
    const ms = performance.now() - started;
    if (signal.aborted) {
      return {
        ...base,
        outcome: 'BENCH_TIMEOUT',
        message: 'ran past the per-file limit',
        ms,
        anchor: strip(anchor),
      };
    }
    const failure = toHdError(error);
    return { ...base, outcome: failure.code, message: failure.message, ms, anchor: strip(anchor) };
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
}

function strip({ text: _, ...rest }: Anchor): FileRecord['anchor'] {
  return rest;
}

interface Anchor {
  ok: boolean;
  ms: number;
  visible: number;
  usable: boolean;
  text: string;
  failure?: string;
}

const ANCHOR_MEMORY_BYTES = 1024 * 1024 * 1024;

/** pdftotext's text of the whole file, with a time limit of its own. */
function pdftotext(path: string, timeoutMs: number): Promise<Anchor> {
  const started = performance.now();
  // Bounded like the handler's tools: unbounded, pdf.js's bomb_giant.pdf took it to 2.4 GB.
  const prlimit = findTool('prlimit') ? ['prlimit', `--as=${ANCHOR_MEMORY_BYTES}`, '--'] : [];
  const argv = [...prlimit, 'pdftotext', '-q', '-enc', 'UTF-8', path, '-'];
  const child = spawn(argv[0]!, argv.slice(1), {
    stdio: ['ignore', 'pipe', 'ignore'],
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
  });
  const parts: Buffer[] = [];
  child.stdout.on('data', (part: Buffer) => parts.push(part));
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      const ms = performance.now() - started;
      const text = Buffer.concat(parts).toString('utf8');
      const visible = text.replace(/\s+/g, '').length;
      const usable = text.split('\f').some((page) => judgePageText(page).usable);
      if (code === 0) resolve({ ok: true, ms, visible, usable, text });
      else {
        const failure = signal ? 'timed out' : `exit ${code}`;
        resolve({ ok: false, ms, visible, usable, text, failure });
      }
    });
  });
}

/**
 * What a user should not read in a failure message: tool or library internals (stderr
 * fragments, exception names, hex bytes, stack traces), setting names, more than one line.
 */
const INTERNALS =
  /\n|<[0-9a-f]{2}>|\b(?:Error|Exception|stderr|stack|errno|ENOENT|EPIPE|undefined|null|NaN)\b|\bHD_[A-Z_]+\b|\bexit \d+\b|\bSIG[A-Z]+\b/;

function summarize(records: readonly FileRecord[]) {
  const codes: Record<string, number> = {};
  for (const r of records) codes[r.outcome] = (codes[r.outcome] ?? 0) + 1;
  const done = records.filter((r) => r.outcome === 'completed');
  // Files pdftotext finds usable text in: only there does similarity say something (where
  // its text is junk from a broken font, OCR's reading is rightly different).
  const compared = done.filter((r) => r.anchor.ok && r.anchor.usable);
  const junkAnchor = done.filter((r) => r.anchor.ok && r.anchor.visible > 0 && !r.anchor.usable);
  const sims = compared.map((r) => r.similarity!);
  const pairs = compared.map((r) => r.wordPairs!);
  const buckets = [1, 0.95, 0.8, 0.5, 0].map((min, i, all) => {
    const max = i === 0 ? Infinity : all[i - 1]!;
    const n = sims.filter((s) =>
      i === 0 ? s >= 0.995 : s >= min && s < Math.min(max, 0.995),
    ).length;
    return `${i === 0 ? '1.00' : `[${min.toFixed(2)}, ${Math.min(max, 0.995).toFixed(2)})`}: ${n}`;
  });
  const sum = (rs: readonly FileRecord[], f: (r: FileRecord) => number) =>
    rs.reduce((s, r) => s + f(r), 0);
  const rate = (rs: readonly FileRecord[], f: (r: FileRecord) => number) =>
    ((sum(rs, (r) => r.pages ?? 0) * 1000) / sum(rs, f)).toFixed(1);
  const withOcr = done.filter((r) => (r.ocrTried ?? 0) > 0);
  const withoutOcr = done.filter((r) => (r.ocrTried ?? 0) === 0);
  const anchored = (rs: readonly FileRecord[]) => rs.filter((r) => r.anchor.ok);
  const pages = sum(done, (r) => r.pages ?? 0);
  console.log(
    `corpus ${records.length} files, ${pages} pages completed; outcomes ${JSON.stringify(codes)}; load ${loadLine()}`,
  );
  console.log(
    `  similarity to pdftotext over ${compared.length} files it has usable text in (${junkAnchor.length} more where its text is junk): 3-grams p10 ${b.percentile(sims, 10).toFixed(2)} median ${b.median(sims).toFixed(2)} min ${Math.min(...sims).toFixed(2)}; ${buckets.join(', ')}; word pairs p10 ${b.percentile(pairs, 10).toFixed(2)} median ${b.median(pairs).toFixed(2)}`,
  );
  console.log(
    `  pages/s without OCR ${rate(withoutOcr, (r) => r.ms)} (${withoutOcr.length} files; pdftotext on them ${rate(anchored(withoutOcr), (r) => r.anchor.ms)}),` +
      ` with OCR ${rate(withOcr, (r) => r.ms)} (${withOcr.length} files, ${sum(withOcr, (r) => r.ocrTried ?? 0)} pages OCRed; pdftotext on them ${rate(anchored(withOcr), (r) => r.anchor.ms)});` +
      ` p50 per file ${b.fmt(b.median(done.map((r) => r.ms)))} ms vs pdftotext ${b.fmt(b.median(records.map((r) => r.anchor.ms)))} ms`,
  );
  console.log(
    `  peak RSS: this process ${b.fmt(b.peakRssMb())} MB, pdf-parse child ${b.fmt(Math.max(0, ...done.map((r) => r.parserPeakMb ?? 0)))} MB`,
  );
  const list = (title: string, rs: readonly FileRecord[], show: (r: FileRecord) => string) => {
    if (rs.length === 0) return;
    console.log(`  ${title} (${rs.length}):`);
    for (const r of rs) console.log(`    ${r.file}: ${show(r)}`);
  };
  list(
    'failed where pdftotext finds usable text',
    records.filter((r) => r.outcome !== 'completed' && r.anchor.ok && r.anchor.usable),
    (r) => `${r.outcome}: ${r.message} (pdftotext ${r.anchor.visible} chars)`,
  );
  list(
    'messages that are not one plain sentence',
    records.filter((r) => r.message && INTERNALS.test(r.message)),
    (r) => `${r.outcome}: ${JSON.stringify(r.message)}`,
  );
  list(
    'least similar to pdftotext (3-grams or word pairs < 0.8)',
    compared
      .filter((r) => r.similarity! < 0.8 || r.wordPairs! < 0.8)
      .sort((x, y) => x.similarity! - y.similarity!),
    (r) =>
      `3-grams ${r.similarity!.toFixed(2)}, word pairs ${r.wordPairs!.toFixed(2)}, ${JSON.stringify(r.layers)} (pdftotext ${r.anchor.visible} chars)`,
  );
  list(
    'pdftotext text junk (broken fonts), ours',
    junkAnchor,
    (r) => `${JSON.stringify(r.layers)}, 3-grams ${r.similarity!.toFixed(2)}`,
  );
  list(
    'slowest',
    [...records].sort((x, y) => y.ms - x.ms).slice(0, 5),
    (r) =>
      `${b.fmt(r.ms)} ms, ${r.outcome}, ${r.pages ?? '?'} p, ${r.ocrTried ?? 0} OCRed (pdftotext ${b.fmt(r.anchor.ms)} ms)`,
  );
}

function loadLine(): string {
  return loadavg()
    .map((l) => l.toFixed(1))
    .join(' ');
}

const collapse = (text: string) => text.replace(/\s+/g, ' ').trim();

/** Dice coefficient of two sets. */
function setDice(x: ReadonlySet<string>, y: ReadonlySet<string>): number {
  if (x.size + y.size === 0) return 1;
  let shared = 0;
  for (const item of x) if (y.has(item)) shared += 1;
  return (2 * shared) / (x.size + y.size);
}

/** Dice coefficient of the character 3-gram sets, white space collapsed. */
export function dice(a: string, c: string): number {
  const grams = (text: string) => {
    const flat = collapse(text);
    const set = new Set<string>();
    for (let i = 0; i + 3 <= flat.length; i += 1) set.add(flat.slice(i, i + 3));
    return set;
  };
  return setDice(grams(a), grams(c));
}

/** Dice coefficient of the sets of adjacent word pairs: the same words in another order differ. */
export function wordPairDice(a: string, c: string): number {
  const pairs = (text: string) => {
    const words = collapse(text).split(' ').filter(Boolean);
    const set = new Set<string>();
    for (let i = 0; i + 1 < words.length; i += 1) set.add(`${words[i]} ${words[i + 1]}`);
    return set;
  };
  return setDice(pairs(a), pairs(c));
}
