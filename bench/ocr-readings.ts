/**
 * Which OCR reading the script check keeps (issue 13, runner/extract/ocr.ts readImage): for
 * each page image, tesseract's readings in the job's languages (deu+eng) and in ara, heb
 * and rus, each with its mean word confidence and its characters in words read with
 * confidence CONFIDENT_WORD or more, and OSD's script. Then the reading readImage keeps (the
 * script's where OSD names one the job's languages do not read, if it has more confident
 * characters) and the one a mean-confidence rule would keep. No timing: the figures do not
 * move with the machine's load.
 *
 * Pages (grey PNGs, as the handler renders them): text2image scans of Arabic, Hebrew and
 * Russian prose at 300 dpi; poor scans (test/fixtures/documents.ts noisyScan: a low
 * resolution, a share of pixels noise, seeded) of German prose and of the Hebrew page, at
 * 150 dpi (the handler's floor for low-resolution scans); page 1 of each PDF in
 * HD_BENCH_OCR_SCRIPT_FILES (`:`-separated) at 150 dpi, e.g. pdf.js's test/pdfs
 * ThuluthFeatures.pdf (Arabic calligraphy), issue7229.pdf (a Russian scan), issue5475.pdf
 * and issue5481.pdf (pictures):
 *
 *   HD_BENCH_OCR_SCRIPT_FILES=/tmp/t.pdf:/tmp/r.pdf node bench/ocr-readings.ts
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import {
  detectScript,
  languageForScript,
  ocrImage,
  OCR_DOUBT_CONFIDENCE,
  OSD_MIN_CONFIDENCE,
  type OcrOptions,
  type OcrResult,
} from '../runner/extract/ocr.ts';
import { GERMAN, noisyScan, textPdf } from '../test/fixtures/documents.ts';
import { makePdf, type PdfPage } from '../test/fixtures/make-pdf.ts';
import { scriptScan } from '../test/fixtures/script-scan.ts';
import * as b from './lib.ts';
import { SCRIPT_SAMPLES } from './script-samples.ts';

const languages = 'deu+eng';
const work = await mkdtemp(join(tmpdir(), 'hd-bench-ocr-readings-'));
const options: OcrOptions = {
  languages,
  dpi: 300,
  timeoutMs: 600_000,
  maxMemoryMb: 2048,
  signal: new AbortController().signal,
  workDir: work,
};

function render(pdf: Buffer | string, name: string, dpi: number): string {
  const file = typeof pdf === 'string' ? pdf : join(work, `${name}.pdf`);
  if (typeof pdf !== 'string') writeFileSync(file, pdf);
  // prettier-ignore
  execFileSync('pdftoppm', ['-f', '1', '-l', '1', '-r', `${dpi}`, '-gray', '-png', '-singlefile', file, join(work, name)]);
  return join(work, `${name}.png`);
}

const scan = (name: string) => makePdf([scriptScan(SCRIPT_SAMPLES[name]!.text, work, name).page]);
const poor = (pdf: Buffer, settings: { dpi: number; noise: number; seed: number }): Buffer =>
  makePdf([noisyScan(pdf, work, settings) satisfies PdfPage]);

const pages: { name: string; is: string; png: string }[] = [];
for (const name of ['arabic', 'hebrew', 'cyrillic']) {
  pages.push({ name, is: SCRIPT_SAMPLES[name]!.language, png: render(scan(name), name, 300) });
}
const hebrew = scan('hebrew');
for (const [dpi, noise] of [
  [75, 0.1],
  [55, 0.04],
] as const) {
  const name = `hebrew ${dpi} ppi, ${noise * 100} % noise`;
  pages.push({ name, is: 'heb', png: render(poor(hebrew, { dpi, noise, seed: 1 }), name, 150) });
}
const german = textPdf([`${GERMAN} ${GERMAN}`]);
for (let seed = 1; seed <= 8; seed += 1) {
  const name = `german 55 ppi, 10 % noise, seed ${seed}`;
  pages.push({
    name,
    is: 'Latin',
    png: render(poor(german, { dpi: 55, noise: 0.1, seed }), name, 150),
  });
}
for (const seed of [1, 2]) {
  const name = `german 40 ppi, 4 % noise, seed ${seed}`;
  pages.push({
    name,
    is: 'Latin',
    png: render(poor(german, { dpi: 40, noise: 0.04, seed }), name, 150),
  });
}
for (const file of (process.env.HD_BENCH_OCR_SCRIPT_FILES ?? '').split(':').filter(Boolean)) {
  pages.push({ name: basename(file), is: '?', png: render(file, basename(file, '.pdf'), 150) });
}

const show = (r: OcrResult | undefined) =>
  r ? `${Number.isNaN(r.confidence) ? '–' : r.confidence.toFixed(1)} / ${r.confidentChars}` : '';
console.log(`ocr-readings ${b.machineLine()}; load ${loadavg()[0]!.toFixed(1)}`);
console.log(
  '| page | is | OSD | deu+eng | ara | heb | rus | kept (confident characters) | kept by mean confidence |',
);
console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
for (const { name, is, png } of pages) {
  const readings: Record<string, OcrResult> = {};
  for (const language of [languages, 'ara', 'heb', 'rus']) {
    readings[language] = await ocrImage(png, name, options, language);
  }
  const first = readings[languages]!;
  const seen = await detectScript(png, name, options);
  const acted =
    first.confidence < OCR_DOUBT_CONFIDENCE && seen && seen.confidence >= OSD_MIN_CONFIDENCE
      ? languageForScript(seen.script, languages)
      : undefined;
  const second = acted ? readings[acted] : undefined;
  const kept = (better: (a: OcrResult, b: OcrResult) => boolean) =>
    !acted
      ? `${languages} (no second reading)`
      : !second
        ? `skipped (${acted} not measured here)`
        : better(second, first)
          ? acted
          : languages;
  console.log(
    `| ${name} | ${is} | ${seen ? `${seen.script} ${seen.confidence}` : '–'} | ${show(first)} | ${show(readings.ara)} | ${show(readings.heb)} | ${show(readings.rus)} | ${kept((s, f) => s.confidentChars > f.confidentChars)} | ${kept((s, f) => s.confidence > f.confidence)} |`,
  );
}
console.log(`load average after: ${loadavg()[0]!.toFixed(1)}`);
await rm(work, { recursive: true, force: true });
