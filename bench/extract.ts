/**
 * extract_text benchmark, end to end through the job: `hd-runner run --job-id` in its own
 * process (claim, download from fs storage, extraction, chunks written to a real embedded
 * PostgreSQL, completion), as a scheduler starts it.
 *
 * 1. Text PDFs (generated, ~2,500 characters a page) against `pdftotext` on the same file;
 *    runner and pdftotext each pinned to core 0 (taskset). The fixed overhead (process
 *    start-up, claim, completion) is the job's wall time less the handler's own
 *    (stats.duration_ms: download, extraction, chunking, the chunks' write).
 *    With HD_BENCH_LAUNCHER=1 (default), the same files through a scheduler's process
 *    launcher (scheduler/launchers/process.ts), the job claimed first as a scheduler claims
 *    it: "cold" launches a runner for the claimed job, "warm" hands it to a runner started
 *    before (HD_WARM_RUNNERS), loaded and logged in with a role of its own (bound to the
 *    job at the hand-over; a cold runner's role is made for its job, as under `hd-runner
 *    scheduler`: launch -> exit includes it); claim -> completed from the job row's clock, CPU
 *    from the runner's /proc/self/stat at exit (itself and its tools), less, for a warm
 *    runner, what it spent before its job.
 * 2. Scanned PDFs (pages rendered to images, no text layer): OCR pages/s of the job, using
 *    both cores, against bare `pdftoppm` + `tesseract` on the same pages, as many at once
 *    as there are cores, one thread each.
 *
 * 3. With HD_BENCH_CORPUS=DIR[:DIR…], every *.pdf there, real-world files nobody here
 *    wrote, read by the handler's extraction in this process and by `pdftotext`, file by
 *    file (bench/extract-corpus.ts: outcomes by code and the messages a user would see,
 *    similarity to pdftotext, pages/s with and without OCR, peak RSS; its settings there).
 *    The files stay out of the repository; get them with
 *      git clone --depth 1 https://github.com/py-pdf/sample-files /tmp/corpus-src
 *      git clone --depth 1 https://github.com/pdfminer/pdfminer.six /tmp/pdfminer
 *      mkdir -p /tmp/corpus && find /tmp/corpus-src /tmp/pdfminer/samples -name '*.pdf' \
 *        -size +0 -exec cp {} /tmp/corpus/ \;
 *    and pdf.js's test corpus (~970 files: Arabic, CJK, Type3 fonts, forms, fuzzed and
 *    broken files; its *.link files name files on the web, left out):
 *      git clone --depth 1 https://github.com/mozilla/pdf.js /tmp/pdf.js
 *      mkdir -p /tmp/pdfjs-corpus && cp /tmp/pdf.js/test/pdfs/*.pdf /tmp/pdfjs-corpus/
 *
 *   node bench/extract.ts   # HD_BENCH_PAGES=1,200,1000 HD_BENCH_OCR_PAGES=8 HD_BENCH_RUNS=3
 *   npm run build && HD_BENCH_CLI=dist/cli/main.js node bench/extract.ts   # the built runner
 *   HD_BENCH_CORPUS=/tmp/corpus:/tmp/pdfjs-corpus HD_BENCH_CORPUS_LIMIT=300 \
 *     HD_BENCH_PAGES= HD_BENCH_OCR_PAGES=0 node bench/extract.ts
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { ClaimedJob } from '../contract/jobs.ts';
import { configToEnv, loadConfig, type Config } from '../control-plane/config.ts';
import { openDb } from '../control-plane/open.ts';
import { ProcessLauncher } from '../scheduler/launchers/process.ts';
import { RunnerAccess } from '../scheduler/runner-access.ts';
import { findTool } from '../runner/extract/tools.ts';
import { GERMAN, renderGray, textPdf } from '../test/fixtures/documents.ts';
import { makePdf } from '../test/fixtures/make-pdf.ts';
import { corpusBench } from './extract-corpus.ts';
import * as b from './lib.ts';

const ACCOUNT = 'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa';
const BUCKET = 'hd_uploads_raw';
// HD_BENCH_CLI=dist/cli/main.js: the built CLI, whose `run` is the runner's bundle (npm run
// build), as a scheduler on the process launcher and the images start it; default: source.
const CLI = resolve(process.env.HD_BENCH_CLI ?? join(import.meta.dirname, '..', 'cli', 'main.ts'));
const REPORT_RSS = join(import.meta.dirname, 'report-rss.mjs');
// Whether that runner warms its database session before its job (00036): its bundle, or
// the source, names the warm-up (a build from before it does not).
const WARMS_SESSION = readFileSync(
  CLI.endsWith('.js')
    ? join(CLI, '..', 'runner.mjs')
    : join(import.meta.dirname, '..', 'control-plane', 'db', 'postgres.ts'),
  'utf8',
).includes('hd_warm_up_session');
const PIN = findTool('taskset') ? ['taskset', '-c', '0'] : [];
// HD_BENCH_JOB_CPUS=2: the job through the launcher on its CPU share, cores 0-1
// (extract_text asks for 2: pdfinfo beside pdftotext, the database's work beside the
// runner's); pdftotext, which uses one thread, stays on core 0. Default 1: both on core 0.
const JOB_PIN =
  PIN.length > 0 && process.env.HD_BENCH_JOB_CPUS === '2' ? ['taskset', '-c', '0-1'] : PIN;
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
const profArgs = cpuProf
  ? ['--cpu-prof', '--cpu-prof-interval=250', `--cpu-prof-dir=${cpuProf}`]
  : [];
const viaLauncher = process.env.HD_BENCH_LAUNCHER !== '0';
// HD_BENCH_DIRECT=0: without the `run --job-id` runs (the runner claiming its job itself).
const direct = process.env.HD_BENCH_DIRECT !== '0';
// HD_BENCH_WARM_LOGIN=0: a warm runner gets its job's role at the hand-over, as before
// warm roles (migration 00032), and connects after it (for a build older than them too).
const warmLogin = process.env.HD_BENCH_WARM_LOGIN !== '0';
// Clock ticks per second of /proc's CPU times (USER_HZ: 100 on Linux).
const TICK_MS = 10;

console.log(
  `# extract bench — ${b.machineLine()}, ${runs} run(s) each, pinned=${PIN.length > 0}, job's cores ${JOB_PIN.at(-1) ?? 'any'}`,
);
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
    const pdf = textPdf(Array.from({ length: pages }, (_, i) => b.pageText(i)));
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
    if (viaLauncher) await launcherBench(pdf, file, pages);
    if (!direct) continue;
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
  if (corpus) await corpusBench(corpus, config, work);
} finally {
  await db.close();
  await database.stop();
  await rm(work, { recursive: true, force: true });
}

/** OCR: both cores, as the job gets them in a container (cpus: 2). */
async function ocrBench() {
  // Scanned at HD_OCR_DPI: the job renders a scan at its own resolution (up to that), the
  // bare anchor at HD_OCR_DPI, so both do the same work.
  const scan = renderGray(textPdf([GERMAN.repeat(6)]), work, 1, config.HD_OCR_DPI);
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

/** One extract_text job for a one-file document, run by `hd-runner run` in its own process. */
async function runJob(config: Config, pdf: Buffer, name: string, pin: string[]) {
  const job = await queuedJob(pdf, name);
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

/** A new one-file document holding `pdf`, and an extract_text job of it, queued. */
async function queuedJob(pdf: Buffer, name: string) {
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
  return db.enqueueJob({ accountId: ACCOUNT, jobType: 'extract_text', documentId, debug: {} });
}

/**
 * The job through the process launcher, cold and warm, `runs` times each (alternating),
 * each right after a `pdftotext` of the same file: ratios per pair, then their median (the
 * machine's load moves between pairs more than within one).
 */
async function launcherBench(pdf: Buffer, file: string, pages: number) {
  // Credentials as `hd-runner scheduler` gives them: a role made for each cold runner's
  // job; a warm runner's role made before its job and bound to it at the hand-over.
  const access = new RunnerAccess(config, db);
  const launcher = new ProcessLauncher({
    env: { PATH: process.env.PATH ?? '', ...access.baseEnv },
    command: [...JOB_PIN, process.execPath, ...profArgs, '--import', REPORT_RSS, CLI],
  });
  const resources = { gpu: false, memoryMb: 2048, cpus: 1, timeoutMs: 600_000 };
  const figures = { cold: [] as Run[], warm: [] as Run[] };
  type Run = {
    claimedMs: number;
    wallMs: number;
    cpuMs: number;
    beforeMs: number;
    idleMb: number;
    anchorMs: number;
    anchorCpuMs: number;
    peakMb: number;
  };
  for (let run = 0; run < runs; run += 1) {
    for (const mode of ['cold', 'warm'] as const) {
      // A warm runner is started, loaded and logged in before its job exists.
      const login = mode === 'warm' && warmLogin ? await access.warmLogin(600_000) : undefined;
      const warm = mode === 'warm' ? await launcher.prestart(login?.env) : undefined;
      if (warm && !(await warm.ready)) throw new Error('the warm runner ended before it was ready');
      // It logs in after saying ready, and warms its session (00036): done before pdftotext
      // is timed beside it (one core) and before its CPU so far is taken as "before its job".
      if (login) await loggedIn(new URL(login.env.HD_DATABASE_URL!).username);
      const beforeMs = warm ? cpuTicks(warm.id) * TICK_MS : 0;
      const bare = await timed([...PIN, 'pdftotext', '-enc', 'UTF-8', file, '/dev/null']);
      const idleMb = warm ? residentMb(warm.id) : 0;
      const queued = await queuedJob(pdf, `launcher-${pages}.pdf`);
      const [job] = await db.claimJobs({
        workerId: 'bench-extract',
        jobId: queued.id,
        leaseSeconds: 300,
      });
      const lines: string[] = [];
      const started = performance.now();
      const request = {
        job: job as ClaimedJob,
        resources,
        env: await access.envFor(job as ClaimedJob, resources, login),
        onOutput: (line: string) => lines.push(line),
      };
      const runner = warm ? await warm.assign(request) : await launcher.launch(request);
      const exit = await runner.wait();
      const wallMs = performance.now() - started;
      await access.release();
      const done = await db.getJob(queued.id);
      if (exit.exitCode !== 0 || done?.status !== 'completed')
        throw new Error(
          `${mode} job ${done?.status}: ${done?.error} ${lines.slice(-5).join('\n')}`,
        );
      const report = lines
        .map((l) => /BENCH_MAX_RSS_KB=(\d+) BENCH_CPU_TICKS=(\d+)/.exec(l))
        .find(Boolean);
      if (!report) throw new Error(`no BENCH_ line from the ${mode} runner`);
      figures[mode].push({
        claimedMs: done.finished_at!.getTime() - done.started_at!.getTime(),
        wallMs,
        cpuMs: Number(report[2]) * TICK_MS - beforeMs,
        beforeMs,
        idleMb,
        anchorMs: bare.ms,
        anchorCpuMs: bare.cpuMs,
        peakMb: Number(report[1]) / 1024,
      });
    }
  }
  for (const mode of ['cold', 'warm'] as const) {
    const all = figures[mode];
    const m = (pick: (r: Run) => number) => b.median(all.map(pick));
    // pdftotext's figure over the job's, pair by pair.
    const ratio = (anchor: (r: Run) => number, ours: (r: Run) => number) =>
      m((r) => anchor(r) / ours(r)).toFixed(2);
    console.log(
      `text ${String(pages).padStart(5)} pages, process launcher, ${mode}:` +
        ` claim -> completed ${b.fmt(m((r) => r.claimedMs))} ms, pdftotext ${b.fmt(m((r) => r.anchorMs))} ms: ${ratio(
          (r) => r.anchorMs,
          (r) => r.claimedMs,
        )}x` +
        ` | launch -> exit ${b.fmt(m((r) => r.wallMs))} ms: ${ratio(
          (r) => r.anchorMs,
          (r) => r.wallMs,
        )}x` +
        ` | CPU with its job ${b.fmt(m((r) => r.cpuMs))} ms, pdftotext ${b.fmt(m((r) => r.anchorCpuMs))} ms: ${ratio(
          (r) => r.anchorCpuMs,
          (r) => r.cpuMs,
        )}x` +
        // 10 ms ticks: the means over the runs see steps the medians cannot.
        ` (means ${mean(all.map((r) => r.cpuMs))} / ${mean(all.map((r) => r.anchorCpuMs))} ms)` +
        (mode === 'warm'
          ? ` | before its job ${b.fmt(m((r) => r.beforeMs))} ms of CPU, resident ${b.fmt(m((r) => r.idleMb))} MB while it waits`
          : '') +
        ` | runner peak RSS ${b.fmt(Math.max(...all.map((r) => r.peakMb)))} MB`,
    );
  }
}

/**
 * Waits until a session of `role` is open and idle (a warm runner's, logged in), its
 * warm-up done where the runner's build makes one (migration 00036).
 */
async function loggedIn(role: string): Promise<void> {
  const admin = await b.connect(config.HD_DATABASE_URL!);
  const lastQuery = WARMS_SESSION ? '%hd_warm_up_session%' : '%';
  try {
    for (let tries = 0; tries < 500; tries += 1) {
      const { rows } = await admin.query(
        `select 1 from pg_stat_activity where usename = $1 and state = 'idle' and query like $2`,
        [role, lastQuery],
      );
      if (rows.length > 0) return;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    throw new Error(`the warm runner did not log in as ${role}`);
  } finally {
    await admin.end();
  }
}

function mean(values: readonly number[]): string {
  return (values.reduce((sum, v) => sum + v, 0) / values.length).toFixed(1);
}

/** Resident memory of a live process now, in MB. */
function residentMb(pid: string): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024;
}

/** CPU time of a live process so far, in clock ticks (utime + stime + waited-for children). */
function cpuTicks(pid: string): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return fields.slice(11, 15).reduce((sum, f) => sum + Number(f), 0);
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
