import { createHash, randomUUID } from 'node:crypto';
import { appendFileSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { ClaimedJob } from '../contract/jobs.ts';
import { migrate } from '../control-plane/db/migrate.ts';
import type { PostgresDb } from '../control-plane/db/postgres.ts';
import type { ChunkRow } from '../control-plane/db/transport.ts';
import { chunkText, type PageStart } from '../runner/extract/chunker.ts';
import { startEmbeddedPostgres } from '../control-plane/embedded-postgres.ts';

export interface BenchDatabase {
  url: string;
  dir: string;
  stop(): Promise<void>;
}

/**
 * A fresh embedded PostgreSQL (default settings, fsync on) with the migrations applied.
 * HD_BENCH_PG_LOG=FILE: every statement's end and duration, with the time to the
 * millisecond and the role, written there (parameters left out): a job's timeline as the
 * server sees it.
 */
export async function startBenchDatabase(): Promise<BenchDatabase> {
  const dir = await mkdtemp(join(tmpdir(), 'hd-bench-pg-'));
  const pgLog = process.env.HD_BENCH_PG_LOG;
  const database = await startEmbeddedPostgres({
    dir,
    persistent: false,
    ...(pgLog ? { onLog: (line: string) => appendFileSync(pgLog, line) } : {}),
  });
  const url = database.connectionString();
  const client = new pg.Client(url);
  await client.connect();
  try {
    await migrate(client);
    if (pgLog) {
      await client.query('alter system set log_min_duration_statement = 0');
      await client.query(`alter system set log_line_prefix = '%m [%p] %u '`);
      // Megabytes of chunks in a log line would slow the server down more than the call.
      await client.query('alter system set log_parameter_max_length = 0');
      await client.query('select pg_reload_conf()');
    }
  } finally {
    await client.end();
  }
  return {
    url,
    dir,
    async stop() {
      await database.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export async function connect(url: string, name = 'hd-bench'): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url, application_name: name });
  await client.connect();
  return client;
}

/** Peak resident set size of this process so far, in MB (maxRSS is in KiB). */
export function peakRssMb(): number {
  return process.resourceUsage().maxRSS / 1024;
}

export function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) {
    throw new Error(`${name} must be a positive integer (got ${JSON.stringify(raw)})`);
  }
  return value;
}

export function median(values: readonly number[]): number {
  return percentile(values, 50);
}

/** Nearest-rank percentile. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1]!;
}

export function fmt(value: number, digits = 0): string {
  return value.toLocaleString('en-US', {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

export function machineLine(): string {
  const cpu = cpus();
  return `node ${process.version}, ${cpu.length} cores (${cpu[0]?.model ?? '?'}), ${process.platform}`;
}

export function verdict(met: boolean): string {
  return met ? 'MET' : 'MISSED';
}

/** About 2,500 characters of German-English prose per page, different on every page. */
export function pageText(i: number): string {
  const sentences = [
    `Abschnitt ${i + 1}: Die Prüfung der Unterlagen ergab keine Beanstandungen.`,
    'Grüße aus München; Äpfel, Öl und Übermut sind schön.',
    `The quarterly report lists ${i * 7} invoices and ${i * 3} open items.`,
    'Der Straßenbahnfahrer fährt über die Brücke, während die Möwen kreischen.',
    'Every figure was checked twice, and the totals agree with the ledger.',
  ];
  return Array.from({ length: 8 }, () => sentences.join(' ')).join(' ');
}

/** The rows extract_text writes for these pages of one file (see handlers/extract_text.ts). */
export function chunkRows(pages: readonly string[], fileId: string): ChunkRow[] {
  const starts: PageStart[] = [];
  let text = '';
  pages.forEach((page, i) => {
    starts.push({ page: i + 1, start: text.length });
    text += `${page}\n\n`;
  });
  return chunkText(text, { targetChars: 1500, overlapChars: 200 }, starts).map((chunk, i) => ({
    ...chunk,
    chunk_index: i,
    file_id: fileId,
    content_sha256: createHash('sha256').update(chunk.content).digest('hex'),
  }));
}

/** A new one-file document of `account` and an extract_text job of it, claimed. */
export async function leasedDocument(db: PostgresDb, account: string, workerId = 'bench') {
  const documentId = randomUUID();
  const queued = await db.enqueueJob({
    accountId: account,
    jobType: 'extract_text',
    debug: {},
    documentId,
  });
  const { rows } = await db.pool.query<{ id: string }>(
    `insert into hd_document_files (account_id, document_id, storage_path, mime_type)
     values ($1, $2, $3, 'application/pdf') returning id`,
    [account, documentId, `accounts/${account}/docs/${documentId}.pdf`],
  );
  const [claimed] = await db.claimJobs({ workerId, jobId: queued.id, leaseSeconds: 3600 });
  const job = claimed as ClaimedJob;
  return { job, jobId: job.id, lease: job.lease_token!, documentId, fileId: rows[0]!.id };
}

/** CPU time a server process has used so far (ns in the first field of schedstat). */
export function backendCpuMs(pid: number): number {
  return Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0]) / 1e6;
}
