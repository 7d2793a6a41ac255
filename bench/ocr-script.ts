/**
 * What script detection costs OCR (issue 13): each page image read the way extract_text
 * reads it (runner/extract/ocr.ts readImage: tesseract in the job's languages with txt and
 * tsv output, then, where the reading is doubtful, OSD and a second reading in the page's
 * script) against the anchor, bare `tesseract IMAGE stdout -l deu+eng`, which is what the
 * handler ran before; both one thread, alternating, on the same 300 dpi grey PNG. CPU is
 * the children's (/proc/self/stat cutime + cstime, 10 ms ticks): the figure that does not
 * move with the machine's load.
 *
 * Pages: generated scans (tesseract's text2image, DejaVu Sans) of German, Arabic, Hebrew,
 * Cyrillic prose and one line of capitals; plus page 1 of each PDF in
 * HD_BENCH_OCR_SCRIPT_FILES (`:`-separated), e.g. pdf.js's test/pdfs/ThuluthFeatures.pdf
 * (Arabic calligraphy, its text layer junk) and issue7229.pdf (a Russian scan):
 *   git --git-dir /path/to/pdf.js/.git show HEAD:test/pdfs/ThuluthFeatures.pdf > /tmp/t.pdf
 *
 *   HD_BENCH_RUNS=5 HD_BENCH_OCR_SCRIPT_FILES=/tmp/t.pdf node bench/ocr-script.ts
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { readImage, type OcrOptions } from '../runner/extract/ocr.ts';
import { runTool } from '../runner/extract/tools.ts';
import { makePdf } from '../test/fixtures/make-pdf.ts';
import { scriptScan } from '../test/fixtures/script-scan.ts';
import * as b from './lib.ts';
import { SCRIPT_SAMPLES } from './script-samples.ts';

const runs = b.envInt('HD_BENCH_RUNS', 5);
const languages = process.env.HD_BENCH_OCR_LANGUAGES ?? 'deu+eng';
const work = await mkdtemp(join(tmpdir(), 'hd-bench-ocr-script-'));

/** CPU of this process's waited-for children so far, in ms (10 ms ticks). */
function childrenCpuMs(): number {
  const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[13]) + Number(fields[14])) * 10; // cutime, cstime
}

function render(pdf: string, name: string): string {
  const base = join(work, name);
  // prettier-ignore
  execFileSync('pdftoppm', ['-f', '1', '-l', '1', '-r', '300', '-gray', '-png', '-singlefile', pdf, base]);
  return `${base}.png`;
}

const pages: [string, string][] = Object.entries(SCRIPT_SAMPLES).map(([name, { text }]) => {
  const pdf = join(work, `${name}.pdf`);
  writeFileSync(pdf, makePdf([scriptScan(text, work, name).page]));
  return [name, render(pdf, name)];
});
for (const file of (process.env.HD_BENCH_OCR_SCRIPT_FILES ?? '').split(':').filter(Boolean)) {
  pages.push([basename(file), render(file, basename(file, '.pdf'))]);
}

const options: OcrOptions = {
  languages,
  dpi: 300,
  timeoutMs: 300_000,
  maxMemoryMb: 1024,
  signal: new AbortController().signal,
  workDir: work,
};

console.log(
  `ocr-script ${b.machineLine()}; ${runs} runs, languages ${languages}; load ${loadavg()[0]!.toFixed(1)}`,
);
console.log(
  '| page | bare tesseract: wall, CPU | readImage: wall, CPU | ratio (CPU) | what readImage did |',
);
console.log('| --- | --- | --- | --- | --- |');
for (const [name, png] of pages) {
  const bare = { wall: [] as number[], cpu: [] as number[] };
  const ours = { wall: [] as number[], cpu: [] as number[] };
  let did = '';
  for (let run = 0; run < runs; run += 1) {
    let [t, c] = [performance.now(), childrenCpuMs()];
    await runTool(
      'tesseract',
      [png, 'stdout', '-l', languages],
      { ...options, what: name },
      {
        env: { OMP_THREAD_LIMIT: '1' },
      },
    );
    bare.wall.push(performance.now() - t);
    bare.cpu.push(childrenCpuMs() - c);
    [t, c] = [performance.now(), childrenCpuMs()];
    const read = await readImage(png, name, options);
    ours.wall.push(performance.now() - t);
    ours.cpu.push(childrenCpuMs() - c);
    did = read.skipped
      ? `skipped (${read.skipped.kind}): ${read.skipped.why.split(',')[0]}`
      : `${read.language ?? languages}: ${JSON.stringify(read.text.slice(0, 40))}`;
  }
  const [bw, bc, ow, oc] = [bare.wall, bare.cpu, ours.wall, ours.cpu].map(b.median);
  console.log(
    `| ${name} | ${b.fmt(bw!)} ms, ${b.fmt(bc!)} ms | ${b.fmt(ow!)} ms, ${b.fmt(oc!)} ms | ${(oc! / bc!).toFixed(2)}x | ${did} |`,
  );
}
console.log(`load average after: ${loadavg()[0]!.toFixed(1)}`);
await rm(work, { recursive: true, force: true });
