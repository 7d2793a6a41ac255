/**
 * The chunk write of extract_text (issue 13): hd_replace_document_chunks as migrated now
 * against its earlier definitions, in the same run, alternating: 00020's (the function as
 * that migration wrote it) and 00033's (00020's with a generic plan), each installed under
 * a schema of its own (bench_00020, bench_00033) from the migration files, with the
 * settings hd__lock_down_functions() gives it.
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
 * and the CPU time of its backend (/proc/<pid>/schedstat). Every definition must return
 * the same counts and leave the same rows, or the bench fails.
 *
 *   node bench/chunk-write.ts   # HD_BENCH_CHUNK_PAGES=200,1000 HD_BENCH_ROUNDS=7
 */
import { createHash, randomUUID } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PostgresDb } from '../control-plane/db/postgres.ts';
import type { ChunkRow, ChunkWriteCounts } from '../control-plane/db/transport.ts';
import * as b from './lib.ts';

const ACCOUNT = 'cccccccc-0000-4000-8000-00000000c4c4';
const PAGES = (process.env.HD_BENCH_CHUNK_PAGES ?? '200,1000').split(',').map(Number);
const ROUNDS = b.envInt('HD_BENCH_ROUNDS', 7);
const SCENARIOS = ['first', 'same', 'changed'] as const;
/** Earlier definitions, by the migration they stand as of; the last one is `now`. */
const EARLIER = ['00020', '00033'] as const;
const DEFINITIONS = [...EARLIER, 'now'] as const;
const CONNECTIONS = ['fresh', 'warm'] as const;
type Definition = (typeof DEFINITIONS)[number];
/** Writes a connection makes before it counts as warm: plpgsql plans custom five times. */
const WARM_UP_WRITES = 6;

const MIGRATIONS = join(import.meta.dirname, '..', 'supabase', 'migrations');
const FUNCTION = 'public.hd_replace_document_chunks';

/**
 * hd_replace_document_chunks as it stood after migration `version`, as
 * bench_<version>.hd_replace_document_chunks: the last whole definition up to that
 * migration, then the `alter function` statements of the migrations after it.
 */
function definitionAsOf(version: string): string[] {
  const files = readdirSync(MIGRATIONS)
    .filter((f) => /^\d+_.+\.sql$/.test(f) && f.split('_')[0]! <= version)
    .sort();
  const statements: string[] = [];
  for (const file of files) {
    const sql = readFileSync(join(MIGRATIONS, file), 'utf8');
    const created =
      /create or replace function public\.hd_replace_document_chunks\([\s\S]*?\n\$\$;/.exec(
        sql,
      )?.[0];
    if (created) statements.length = 0;
    statements.push(
      ...(created ? [created] : []),
      ...(sql.match(/alter function public\.hd_replace_document_chunks\([^;]*;/g) ?? []),
    );
  }
  if (statements.length === 0) throw new Error(`no ${FUNCTION} up to migration ${version}`);
  return [
    ...statements,
    // What hd__lock_down_functions() gives every runner function.
    `alter function ${FUNCTION}(uuid, uuid, jsonb, timestamptz) security definer set search_path = ''`,
  ].map((statement) =>
    statement.replaceAll(FUNCTION, `bench_${version}.hd_replace_document_chunks`),
  );
}

/** The same text edited on every tenth page (same length: offsets stay) and 10 % shorter. */
function editedPages(count: number): string[] {
  return Array.from({ length: Math.floor(count * 0.9) }, (_, i) =>
    i % 10 === 5 ? b.pageText(i).replaceAll('Beanstandungen', 'BEANSTANDUNGEN') : b.pageText(i),
  );
}

type Leased = Awaited<ReturnType<typeof b.leasedDocument>>;
const leasedDocument = (db: PostgresDb) => b.leasedDocument(db, ACCOUNT);

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
    const cpuBefore = b.backendCpuMs(pid);
    const started = performance.now();
    const counts =
      definition === 'now'
        ? await db.replaceDocumentChunks(doc.jobId, doc.lease, chunks)
        : (
            await db.pool.query<ChunkWriteCounts>(
              `select * from bench_${definition}.hd_replace_document_chunks($1, $2, $3::jsonb)`,
              [doc.jobId, doc.lease, JSON.stringify(chunks)],
            )
          ).rows[0]!;
    const wallMs = performance.now() - started;
    return { wallMs, cpuMs: b.backendCpuMs(pid) - cpuBefore, counts };
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
  const rows = b.chunkRows(pages, randomUUID());
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
  for (const version of EARLIER) {
    await db.pool.query(`create schema bench_${version}`);
    for (const statement of definitionAsOf(version)) await db.pool.query(statement);
  }
  console.log(`# chunk write — ${new Date().toISOString()} — ${b.machineLine()}`);
  console.log(
    `rounds: ${ROUNDS}, ${DEFINITIONS.join('/')} in turn; backend CPU mean, wall p50 per call\n`,
  );
  const perDefinition = (what: string) => [
    ...DEFINITIONS.map((d) => `${d} ${what}`),
    ...EARLIER.map((d) => `now/${d}`),
  ];
  const header = [
    ...['pages', 'chunks', 'MB', 'connection', 'write', 'counts'],
    ...perDefinition('CPU'),
    ...perDefinition('wall'),
  ];
  console.log(`| ${header.join(' | ')} |`);
  console.log(`|${' --- |'.repeat(header.length)}`);
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
        const rows = b.chunkRows(pages, doc.fileId);
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
        const order = DEFINITIONS.map((_, i) => DEFINITIONS[(i + round) % DEFINITIONS.length]!);
        const digests = new Map<string, string>();
        for (const definition of order) {
          const doc = await leasedDocument(db);
          const original = b.chunkRows(pages, doc.fileId);
          chunkCount = original.length;
          megabytes = JSON.stringify(original).length / 1e6;
          const versions = {
            first: original,
            same: original,
            changed: b.chunkRows(edited, doc.fileId),
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
          const left = new Set(DEFINITIONS.map((d) => digests.get(`${scenario} ${d}`)));
          if (left.size > 1)
            throw new Error(`after "${scenario}" the definitions left different rows`);
        }
      }
      for (const session of sessions.values()) await session?.db.close();
      for (const scenario of SCENARIOS) {
        const returned = new Set(DEFINITIONS.map((d) => counts.get(`${scenario} ${d}`)));
        if (returned.size > 1)
          throw new Error(`${scenario}: counts differ: ${[...returned].join(' vs ')}`);
        const figures = (of: (definition: Definition) => number) => {
          const now = of('now');
          return [
            ...DEFINITIONS.map((d) => `${b.fmt(of(d))} ms`),
            ...EARLIER.map((d) => `**${b.fmt(now / of(d), 2)}**`),
          ];
        };
        const { inserted, updated, unchanged, deleted } = JSON.parse(
          [...returned][0]!,
        ) as ChunkWriteCounts;
        const cells = [
          pageCount,
          b.fmt(chunkCount),
          b.fmt(megabytes, 1),
          connection,
          scenario,
          `${inserted}/${updated}/${unchanged}/${deleted}`,
          ...figures((d) => cpu.get(`${scenario} ${d}`)! / ROUNDS),
          ...figures((d) => b.median(wall.get(`${scenario} ${d}`)!)),
        ];
        console.log(`| ${cells.join(' | ')} |`);
      }
    }
  }
  console.log('\ncounts: inserted/updated/unchanged/deleted (the same from every definition)');
  clientSide(Array.from({ length: PAGES.at(-1)! }, (_, i) => b.pageText(i)));
} finally {
  await db.close();
  await database.stop();
}
