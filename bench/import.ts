// JSONL import: BENCH_LINES lines through the real runner path (hd_enqueue_job, then
// `hd-runner run --job-id` in its own process: fs storage, handler, hd_upsert_assets
// batches, complete; its peak RSS is the runner's own)
// against a server-side COPY of the same rows into the same table.
// Usage: BENCH_LINES=1000000 node bench/import.ts
import { execFileSync, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createWriteStream, type WriteStream } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { once } from 'node:events';
import type pg from 'pg';
import { configToEnv, loadConfig } from '../control-plane/config.ts';
import { openDb } from '../control-plane/open.ts';
import * as b from './lib.ts';

const LINES = b.envInt('BENCH_LINES', 1_000_000);
const ROUNDS = b.envInt('BENCH_IMPORT_ROUNDS', 2);
const ACCOUNT = randomUUID();
const BUCKET = 'hd_uploads_raw';
const KEY = `accounts/${ACCOUNT}/assets-jsonl/bench.jsonl`;
const LANGS = ['en', 'de', 'fr', 'es'];

async function write(out: WriteStream, text: string): Promise<void> {
  if (!out.write(text)) await once(out, 'drain');
}

async function close(out: WriteStream): Promise<void> {
  out.end();
  await once(out, 'finish');
}

/** The same rows twice: JSONL for the runner, CSV (account_id first) for COPY. */
async function generate(jsonlPath: string, csvPath: string, lines: number, account: string) {
  await mkdir(dirname(jsonlPath), { recursive: true });
  const jsonl = createWriteStream(jsonlPath);
  const csv = createWriteStream(csvPath, { mode: 0o644 });
  const quote = (s: string) => `"${s.replaceAll('"', '""')}"`;
  for (let start = 0; start < lines; start += 10_000) {
    let j = '';
    let c = '';
    for (let i = start; i < Math.min(lines, start + 10_000); i++) {
      const title = `Asset ${i} — quarterly report`;
      const ref = `bench-${i}`;
      const metadata = { n: i, lang: LANGS[i % 4], tags: ['bench', `g${i % 100}`], score: i / 7 };
      j += `${JSON.stringify({ title, source_type: 'document', source_ref: ref, metadata })}\n`;
      c += `${account},document,${ref},${quote(title)},${quote(JSON.stringify(metadata))}\n`;
    }
    await Promise.all([write(jsonl, j), write(csv, c)]);
  }
  await Promise.all([close(jsonl), close(csv)]);
  await chmod(csvPath, 0o644);
}

/** Empties hd_assets and flushes dirty pages so each timed run starts alike. */
async function reset(admin: pg.Client): Promise<void> {
  await admin.query('truncate public.hd_assets');
  await admin.query('checkpoint');
}

async function countAssets(admin: pg.Client): Promise<number> {
  const { rows } = await admin.query<{ n: number }>(
    'select count(*)::int as n from public.hd_assets where account_id = $1',
    [ACCOUNT],
  );
  return rows[0]!.n;
}

async function runCopy(admin: pg.Client, csvPath: string): Promise<number> {
  await reset(admin);
  const started = performance.now();
  // Server-side COPY as the superuser: the file lies in a 755 folder, mode 644.
  await admin.query(
    `copy public.hd_assets (account_id, source_type, source_ref, title, metadata)
     from '${csvPath.replaceAll("'", "''")}' with (format csv)`,
  );
  const seconds = (performance.now() - started) / 1000;
  const n = await countAssets(admin);
  if (n !== LINES) throw new Error(`COPY wrote ${n} rows, expected ${LINES}`);
  return LINES / seconds;
}

interface OursResult {
  rate: number;
  runnerPeakMb: number;
  batches: number;
}

const CLI = join(import.meta.dirname, '..', 'cli', 'main.ts');
const REPORT_RSS = join(import.meta.dirname, 'report-rss.mjs');

/** Ours: `hd-runner run --job-id` in its own process, as a scheduler starts it. */
async function runOurs(admin: pg.Client, url: string, work: string): Promise<OursResult> {
  await reset(admin);
  const config = loadConfig({
    ...process.env, // HD_IMPORT_BATCH_SIZE, HD_DATABASE_POOL_SIZE … may be set to experiment
    HD_DATABASE_URL: url,
    HD_STORAGE_ROOT: join(work, 'storage'),
    HD_WORK_DIR: work,
    HD_WORKER_ID: 'bench-import',
    HD_LOG_LEVEL: 'silent',
  });
  const db = openDb(config);
  try {
    const job = await db.enqueueJob({
      accountId: ACCOUNT,
      jobType: 'import_assets_jsonl',
      debug: { bucket: BUCKET, path: KEY },
    });
    const started = performance.now();
    const child = spawnSync(
      process.execPath,
      ['--import', REPORT_RSS, CLI, 'run', '--job-id', job.id],
      {
        env: {
          PATH: process.env.PATH ?? '',
          NODE_OPTIONS: process.env.NODE_OPTIONS ?? '',
          ...configToEnv(config),
        },
        encoding: 'utf8',
      },
    );
    const seconds = (performance.now() - started) / 1000;
    const done = await db.getJob(job.id);
    if (child.status !== 0 || done?.status !== 'completed') {
      throw new Error(`import ended ${done?.status} (exit ${child.status}): ${child.stderr}`);
    }
    const stats = (done.debug.stats ?? {}) as { inserted?: number; batches?: number };
    const n = await countAssets(admin);
    if (n !== LINES || stats.inserted !== LINES) {
      throw new Error(`runner wrote ${n} rows (inserted ${stats.inserted}), expected ${LINES}`);
    }
    const rssKb = Number(/BENCH_MAX_RSS_KB=(\d+)/.exec(child.stderr)?.[1] ?? NaN);
    return { rate: LINES / seconds, runnerPeakMb: rssKb / 1024, batches: stats.batches ?? 0 };
  } finally {
    await db.close();
  }
}

async function main() {
  console.log(`# import bench — ${b.machineLine()}`);
  const db = await b.startBenchDatabase();
  const work = await mkdtemp(join(tmpdir(), 'hd-bench-import-'));
  const admin = await b.connect(db.url, 'hd-bench-admin');
  try {
    await chmod(work, 0o755); // the postgres OS user reads the CSV from here
    const csvPath = join(work, 'bench.csv');
    const t0 = performance.now();
    // In a child process, so that this process's peak RSS is the import's alone.
    const jsonlPath = join(work, 'storage', BUCKET, KEY);
    const args = ['--generate', jsonlPath, csvPath, String(LINES), ACCOUNT];
    execFileSync(process.execPath, [import.meta.filename, ...args], { stdio: 'inherit' });
    console.log(
      `generated ${b.fmt(LINES)} lines in ${b.fmt((performance.now() - t0) / 1000, 1)} s` +
        ` (batch size ${process.env.HD_IMPORT_BATCH_SIZE ?? '5000 (default)'}, ${ROUNDS} round(s), medians)`,
    );
    const copy: number[] = [];
    const ours: OursResult[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      if (round % 2 === 0) {
        copy.push(await runCopy(admin, csvPath));
        ours.push(await runOurs(admin, db.url, work));
      } else {
        ours.push(await runOurs(admin, db.url, work));
        copy.push(await runCopy(admin, csvPath));
      }
    }
    const anchor = b.median(copy);
    const our = b.median(ours.map((o) => o.rate));
    const ratio = our / anchor;
    const peak = Math.max(...ours.map((o) => o.runnerPeakMb));
    console.log(
      `import ${b.fmt(LINES)} lines  anchor(COPY csv) ${b.fmt(anchor).padStart(9)} rows/s` +
        `  ours(hd-runner run) ${b.fmt(our).padStart(9)} rows/s  ratio ${b.fmt(ratio, 2)}` +
        ` (goal >= 0.60: ${b.verdict(ratio >= 0.6)})  [${ours[0]!.batches} upsert batches]`,
    );
    console.log(
      `runner peak RSS ${b.fmt(peak, 1)} MB (maxRSS of the hd-runner run process, Node included)` +
        ` (goal < 150 MB: ${b.verdict(peak < 150)})`,
    );
  } finally {
    await admin.end();
    await db.stop();
    await rm(work, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--generate') {
  const [jsonlPath, csvPath, lines, account] = process.argv.slice(3);
  await generate(jsonlPath!, csvPath!, Number(lines), account!);
} else {
  await main();
}
