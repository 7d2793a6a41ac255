/**
 * The chunk write of extract_text (issue 13): hd_replace_document_chunks as migrated now
 * against 00020's definition of it (read from that migration file, installed under schema
 * bench_00020 with the same security definer settings), in the same run, alternating.
 *
 * Chunks are those extract_text writes for a text PDF of N pages (bench/lib.ts pageText,
 * ~2,500 characters a page, chunked by runner/extract/chunker.ts with the default target
 * and overlap), sent as the postgres transport sends them (JSON.stringify, one jsonb
 * parameter). Three writes per document, each after listing the document's files, as a
 * runner does before it writes:
 *   first    the document has no chunks yet,
 *   same     a re-run with the same chunks (nothing may change),
 *   changed  a re-run of an edited, 10 % shorter text (updates and deletes);
 * on a fresh connection each (a runner's), and on one warm connection per definition that
 * has made more than five such writes before (a pooler's or PostgREST's, whose plpgsql may
 * have settled on generic plans by itself). Wall time of the call (JSON building included)
 * and the CPU time of its backend (/proc/<pid>/schedstat). Both definitions must return
 * the same counts and leave the same rows, or the bench fails.
 *
 *   node bench/chunk-write.ts   # HD_BENCH_CHUNK_PAGES=200,1000 HD_BENCH_ROUNDS=7
 */
import { createHash, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PostgresDb } from '../control-plane/db/postgres.ts';
import type { ChunkRow, ChunkWriteCounts } from '../control-plane/db/transport.ts';
import { chunkText, type PageStart } from '../runner/extract/chunker.ts';
import * as b from './lib.ts';

const ACCOUNT = 'cccccccc-0000-4000-8000-00000000c4c4';
const PAGES = (process.env.HD_BENCH_CHUNK_PAGES ?? '200,1000').split(',').map(Number);
const ROUNDS = b.envInt('HD_BENCH_ROUNDS', 7);
const SCENARIOS = ['first', 'same', 'changed'] as const;
const DEFINITIONS = ['00020', 'now'] as const;
const CONNECTIONS = ['fresh', 'warm'] as const;
type Definition = (typeof DEFINITIONS)[number];
/** Writes a connection makes before it counts as warm: plpgsql plans custom five times. */
const WARM_UP_WRITES = 6;

const MIGRATION_00020 = join(
  import.meta.dirname,
  '..',
  'supabase',
  'migrations',
  '00020_chunk_time_offsets.sql',
);

/** 00020's function, whole, as bench_00020.hd_replace_document_chunks. */
function definition00020(): string {
  const sql = readFileSync(MIGRATION_00020, 'utf8');
  const body =
    /create or replace function public\.hd_replace_document_chunks\([\s\S]*?\n\$\$;/.exec(sql)?.[0];
  if (!body) throw new Error(`no hd_replace_document_chunks in ${MIGRATION_00020}`);
  return body
    .replace('public.hd_replace_document_chunks', 'bench_00020.hd_replace_document_chunks')
    .replace(
      'language plpgsql volatile',
      // What hd__lock_down_functions() gives every runner function.
      "language plpgsql volatile security definer set search_path = ''",
    );
}

/** The rows extract_text sends for these pages of one file (see handlers/extract_text.ts). */
function chunkRows(pages: readonly string[], fileId: string): ChunkRow[] {
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

/** The same text edited on every tenth page (same length: offsets stay) and 10 % shorter. */
function editedPages(count: number): string[] {
  return Array.from({ length: Math.floor(count * 0.9) }, (_, i) =>
    i % 10 === 5 ? b.pageText(i).replaceAll('Beanstandungen', 'BEANSTANDUNGEN') : b.pageText(i),
  );
}

interface Leased {
  jobId: string;
  lease: string;
  documentId: string;
  fileId: string;
}

async function leasedDocument(db: PostgresDb): Promise<Leased> {
  const documentId = randomUUID();
  const job = await db.enqueueJob({
    accountId: ACCOUNT,
    jobType: 'extract_text',
    debug: {},
    documentId,
  });
  const { rows } = await db.pool.query<{ id: string }>(
    `insert into hd_document_files (account_id, document_id, storage_path, mime_type)
     values ($1, $2, $3, 'application/pdf') returning id`,
    [ACCOUNT, documentId, `accounts/${ACCOUNT}/docs/${documentId}.pdf`],
  );
  const [claimed] = await db.claimJobs({ workerId: 'bench', jobId: job.id, leaseSeconds: 3600 });
  return { jobId: job.id, lease: claimed!.lease_token!, documentId, fileId: rows[0]!.id };
}

/** CPU time the backend has used so far (ns in the first field of schedstat). */
function backendCpuMs(pid: number): number {
  return Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0]) / 1e6;
}

interface Session {
  db: PostgresDb;
  pid: number;
}

async function openSession(url: string): Promise<Session> {
  const db = new PostgresDb({ connectionString: url, poolSize: 1, listenConnectionString: null });
  const { rows } = await db.pool.query<{ pid: number }>('select pg_backend_pid() as pid');
  return { db, pid: rows[0]!.pid };
}

/** One write: on `session`, or on a fresh connection of its own when there is none. */
async function write(
  url: string,
  session: Session | null,
  definition: Definition,
  doc: Leased,
  chunks: ChunkRow[],
) {
  const { db, pid } = session ?? (await openSession(url));
  try {
    await db.listDocumentFiles(doc.jobId, doc.lease);
    const cpuBefore = backendCpuMs(pid);
    const started = performance.now();
    const counts =
      definition === 'now'
        ? await db.replaceDocumentChunks(doc.jobId, doc.lease, chunks)
        : (
            await db.pool.query<ChunkWriteCounts>(
              'select * from bench_00020.hd_replace_document_chunks($1, $2, $3::jsonb)',
              [doc.jobId, doc.lease, JSON.stringify(chunks)],
            )
          ).rows[0]!;
    const wallMs = performance.now() - started;
    return { wallMs, cpuMs: backendCpuMs(pid) - cpuBefore, counts };
  } finally {
    if (!session) await db.close();
  }
}

/** The document's rows without ids and clocks, for comparing what both definitions left. */
async function rowsDigest(db: PostgresDb, documentId: string): Promise<string> {
  const { rows } = await db.pool.query<{ digest: string }>(
    `select md5(coalesce(string_agg(
              concat_ws('|', chunk_index, content, page_start, page_end, char_start, char_end,
                        seconds_start, seconds_end, content_sha256),
              e'\\n' order by chunk_index), '')) as digest
       from hd_asset_chunks where document_id = $1`,
    [documentId],
  );
  return rows[0]!.digest;
}

/** The runner's own share of a write: the hashes extract_text computes, and the JSON. */
function clientSide(pages: readonly string[]) {
  const rows = chunkRows(pages, randomUUID());
  const hashMs: number[] = [];
  const jsonMs: number[] = [];
  for (let i = 0; i < 7; i++) {
    let started = performance.now();
    for (const row of rows) createHash('sha256').update(row.content).digest('hex');
    hashMs.push(performance.now() - started);
    started = performance.now();
    JSON.stringify(rows);
    jsonMs.push(performance.now() - started);
  }
  console.log(
    `client side, ${b.fmt(rows.length)} chunks: sha256 of every chunk ${b.fmt(b.median(hashMs), 1)} ms, ` +
      `JSON.stringify ${b.fmt(b.median(jsonMs), 1)} ms (p50 of 7)`,
  );
}

const database = await b.startBenchDatabase();
const db = new PostgresDb({ connectionString: database.url, listenConnectionString: null });
try {
  await db.pool.query('create schema bench_00020');
  await db.pool.query(definition00020());
  console.log(`# chunk write — ${new Date().toISOString()} — ${b.machineLine()}`);
  console.log(`rounds: ${ROUNDS}, 00020/now alternating; wall p50 per call, backend CPU mean\n`);
  console.log(
    '| pages | chunks | MB | connection | write | counts | 00020 wall | now wall | ratio | 00020 CPU | now CPU | ratio |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const pageCount of PAGES) {
    const pages = Array.from({ length: pageCount }, (_, i) => b.pageText(i));
    const edited = editedPages(pageCount);
    for (const connection of CONNECTIONS) {
      const sessions = new Map<Definition, Session | null>();
      for (const definition of DEFINITIONS) {
        if (connection === 'fresh') {
          sessions.set(definition, null);
          continue;
        }
        const session = await openSession(database.url);
        const doc = await leasedDocument(db);
        const rows = chunkRows(pages, doc.fileId);
        for (let i = 0; i < WARM_UP_WRITES; i++) {
          await write(database.url, session, definition, doc, i % 2 ? rows : rows.slice(0, -1));
        }
        sessions.set(definition, session);
      }
      const wall = new Map<string, number[]>();
      const cpu = new Map<string, number>();
      const counts = new Map<string, string>();
      let chunkCount = 0;
      let megabytes = 0;
      for (let round = 0; round < ROUNDS; round++) {
        const order = round % 2 === 0 ? DEFINITIONS : [...DEFINITIONS].reverse();
        const digests = new Map<string, string>();
        for (const definition of order) {
          const doc = await leasedDocument(db);
          const original = chunkRows(pages, doc.fileId);
          chunkCount = original.length;
          megabytes = JSON.stringify(original).length / 1e6;
          const versions = {
            first: original,
            same: original,
            changed: chunkRows(edited, doc.fileId),
          };
          for (const scenario of SCENARIOS) {
            const session = sessions.get(definition)!;
            const result = await write(database.url, session, definition, doc, versions[scenario]);
            const key = `${scenario} ${definition}`;
            wall.set(key, [...(wall.get(key) ?? []), result.wallMs]);
            cpu.set(key, (cpu.get(key) ?? 0) + result.cpuMs);
            counts.set(key, JSON.stringify(result.counts));
            digests.set(key, await rowsDigest(db, doc.documentId));
          }
        }
        for (const scenario of SCENARIOS) {
          if (digests.get(`${scenario} 00020`) === digests.get(`${scenario} now`)) continue;
          throw new Error(`after "${scenario}" the two definitions left different rows`);
        }
      }
      for (const session of sessions.values()) await session?.db.close();
      for (const scenario of SCENARIOS) {
        const old = counts.get(`${scenario} 00020`);
        if (old !== counts.get(`${scenario} now`)) {
          throw new Error(`${scenario}: counts differ: ${old} vs ${counts.get(`${scenario} now`)}`);
        }
        const oldWall = b.median(wall.get(`${scenario} 00020`)!);
        const nowWall = b.median(wall.get(`${scenario} now`)!);
        const oldCpu = cpu.get(`${scenario} 00020`)! / ROUNDS;
        const nowCpu = cpu.get(`${scenario} now`)! / ROUNDS;
        const { inserted, updated, unchanged, deleted } = JSON.parse(old!) as ChunkWriteCounts;
        console.log(
          `| ${pageCount} | ${b.fmt(chunkCount)} | ${b.fmt(megabytes, 1)} | ${connection} | ` +
            `${scenario} | ${inserted}/${updated}/${unchanged}/${deleted} | ` +
            `${b.fmt(oldWall)} ms | ${b.fmt(nowWall)} ms | **${b.fmt(nowWall / oldWall, 2)}** | ` +
            `${b.fmt(oldCpu)} ms | ${b.fmt(nowCpu)} ms | **${b.fmt(nowCpu / oldCpu, 2)}** |`,
        );
      }
    }
  }
  console.log('\ncounts: inserted/updated/unchanged/deleted (the same from both definitions)');
  clientSide(Array.from({ length: PAGES.at(-1)! }, (_, i) => b.pageText(i)));
} finally {
  await db.close();
  await database.stop();
}
