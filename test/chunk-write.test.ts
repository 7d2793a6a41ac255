import { createHash, randomBytes, randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChunkRow } from '../control-plane/db/transport.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A } from './helpers/runtime.ts';

// hd_replace_document_chunks: a first write, re-runs that change nothing, some or all of
// the chunks, and the checks, against a real PostgreSQL. Which rows a call rewrote is read
// from the rows themselves (id, updated_at, xmin).
let t: TestDatabase;
beforeAll(async () => {
  t = await createTestDatabase();
  await t.sql.query('create table stored_payloads (id serial primary key, payload jsonb)');
});
afterAll(async () => {
  await t.drop();
});

const sha = (text: string) => createHash('sha256').update(text).digest('hex');

/** A claimed extract_text job whose document has two files. */
async function leasedDocument() {
  const documentId = randomUUID();
  const job = await t.db.enqueueJob({
    accountId: ACCOUNT_A,
    jobType: 'extract_text',
    debug: {},
    documentId,
  });
  const { rows: files } = await t.sql.query<{ id: string }>(
    `insert into hd_document_files (account_id, document_id, storage_path)
     values ($1, $2, $3), ($1, $2, $4) returning id`,
    [
      ACCOUNT_A,
      documentId,
      `accounts/${ACCOUNT_A}/d/${documentId}/a`,
      `accounts/${ACCOUNT_A}/d/${documentId}/b`,
    ],
  );
  const [claimed] = await t.db.claimJobs({ workerId: 'w', jobId: job.id, leaseSeconds: 600 });
  const lease = claimed!.lease_token!;
  return {
    documentId,
    files: files.map((f) => f.id),
    write: (chunks: readonly ChunkRow[]) => t.db.replaceDocumentChunks(job.id, lease, chunks),
    jobId: job.id,
    lease,
  };
}

function chunks(count: number, fileId: string, text = (i: number) => `Chunk ${i}. `.repeat(40)) {
  return Array.from({ length: count }, (_, i): ChunkRow => {
    const content = text(i);
    return {
      chunk_index: i,
      file_id: fileId,
      content,
      page_start: i + 1,
      page_end: i + 1,
      char_start: i * 1000,
      char_end: i * 1000 + content.length,
      content_sha256: sha(content),
    };
  });
}

/** What each row is now: its identity, and whether a statement rewrote it (xmin). */
async function rowStates(documentId: string) {
  const { rows } = await t.sql.query<{
    chunk_index: number;
    id: string;
    updated_at: Date;
    xmin: string;
  }>(
    `select chunk_index, id, updated_at, xmin::text from hd_asset_chunks
      where document_id = $1 order by chunk_index`,
    [documentId],
  );
  return rows;
}

describe('hd_replace_document_chunks: writes', () => {
  it('first write inserts; a re-run with the same chunks rewrites no row', async () => {
    const doc = await leasedDocument();
    const rows = chunks(5, doc.files[0]!);
    expect(await doc.write(rows)).toEqual({ inserted: 5, updated: 0, unchanged: 0, deleted: 0 });
    const before = await rowStates(doc.documentId);
    expect(before.map((r) => r.chunk_index)).toEqual([0, 1, 2, 3, 4]);
    expect(await doc.write(rows)).toEqual({ inserted: 0, updated: 0, unchanged: 5, deleted: 0 });
    expect(await rowStates(doc.documentId)).toEqual(before);
  });

  it('a re-run of changed, fewer chunks updates only those, deletes the tail, keeps ids', async () => {
    const doc = await leasedDocument();
    const original = chunks(6, doc.files[0]!);
    await doc.write(original);
    const before = await rowStates(doc.documentId);
    const edited = chunks(4, doc.files[0]!, (i) =>
      i === 1 ? 'Chunk 1 was edited.' : original[i]!.content,
    );
    expect(await doc.write(edited)).toEqual({ inserted: 0, updated: 1, unchanged: 3, deleted: 2 });
    const after = await rowStates(doc.documentId);
    expect(after.map((r) => r.id)).toEqual(before.slice(0, 4).map((r) => r.id));
    expect(after.filter((r, i) => r.xmin !== before[i]!.xmin).map((r) => r.chunk_index)).toEqual([
      1,
    ]);
    const { rows } = await t.sql.query<{ content: string }>(
      `select content from hd_asset_chunks where document_id = $1 and chunk_index = 1`,
      [doc.documentId],
    );
    expect(rows[0]!.content).toBe('Chunk 1 was edited.');
    // More chunks than stored: the new ones are inserted.
    expect(await doc.write(original)).toEqual({
      inserted: 2,
      updated: 1,
      unchanged: 3,
      deleted: 0,
    });
  });

  it('a change in any one field of a chunk is an update of that chunk alone', async () => {
    const doc = await leasedDocument();
    const base: ChunkRow[] = chunks(3, doc.files[0]!).map((c) => ({
      ...c,
      seconds_start: 1.5,
      seconds_end: 2.25,
    }));
    await doc.write(base);
    const changes: Partial<ChunkRow>[] = [
      { file_id: doc.files[1]! },
      { file_id: null },
      { content: 'other' },
      { page_start: null },
      { page_end: 9 },
      { char_start: 1 },
      { char_end: 999_999 },
      { seconds_start: 1.499 },
      { seconds_start: undefined, seconds_end: undefined },
      { content_sha256: sha('other') },
    ];
    for (const change of changes) {
      const changed = base.map((c, i) => (i === 2 ? { ...c, ...change } : c));
      const counts = await doc.write(changed);
      expect({ change, counts }).toEqual({
        change,
        counts: { inserted: 0, updated: 1, unchanged: 2, deleted: 0 },
      });
      await doc.write(base);
    }
  });

  it('new rows get UUIDv7 ids in chunk order; rewritten rows keep theirs', async () => {
    const doc = await leasedDocument();
    const startedMs = Date.now();
    await doc.write(chunks(3, doc.files[0]!));
    await doc.write(chunks(5, doc.files[0]!, (i) => (i === 0 ? 'Chunk 0 was edited.' : `${i}`)));
    const ids = (await rowStates(doc.documentId)).map((r) => r.id);
    for (const id of ids) {
      // Version 7, variant 10 (RFC 9562), and the time of the write in the first 48 bits.
      expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      const ms = parseInt(id.replaceAll('-', '').slice(0, 12), 16);
      expect(ms).toBeGreaterThanOrEqual(startedMs - 5_000);
      expect(ms).toBeLessThanOrEqual(Date.now() + 5_000);
    }
    // Each write's new rows in chunk order; 0..2 kept the first write's ids.
    expect([...ids.slice(0, 3)].sort()).toEqual(ids.slice(0, 3));
    expect([...ids.slice(3)].sort()).toEqual(ids.slice(3));
    expect(new Set(ids).size).toBe(5);
  });

  it('a document whose stored rows have a gap gets every chunk back', async () => {
    const doc = await leasedDocument();
    const rows = chunks(5, doc.files[0]!);
    await doc.write(rows);
    await t.sql.query('delete from hd_asset_chunks where document_id = $1 and chunk_index = 2', [
      doc.documentId,
    ]);
    expect(await doc.write(rows)).toEqual({ inserted: 1, updated: 0, unchanged: 4, deleted: 0 });
    expect((await rowStates(doc.documentId)).map((r) => r.chunk_index)).toEqual([0, 1, 2, 3, 4]);
  });

  it('leaves a row written by hand with a negative index alone, and writes every chunk', async () => {
    const doc = await leasedDocument();
    const rows = chunks(3, doc.files[0]!);
    await t.sql.query(
      `insert into hd_asset_chunks (account_id, document_id, chunk_index, content)
       values ($1, $2, -1, 'by hand'), ($1, $2, 1, 'old')`,
      [ACCOUNT_A, doc.documentId],
    );
    expect(await doc.write(rows)).toEqual({ inserted: 2, updated: 1, unchanged: 0, deleted: 0 });
    const { rows: stored } = await t.sql.query<{ chunk_index: number; content: string }>(
      'select chunk_index, content from hd_asset_chunks where document_id = $1 order by 1',
      [doc.documentId],
    );
    expect(stored).toEqual([
      { chunk_index: -1, content: 'by hand' },
      ...rows.map((r) => ({ chunk_index: r.chunk_index, content: r.content })),
    ]);
  });

  it('two jobs writing one document at once take turns: the later write stands whole', async () => {
    const a = await leasedDocument();
    const old = (i: number) => `Old ${i}. `.repeat(40);
    await a.write(chunks(3, a.files[0]!, old));
    // A second job of the same document writes first, and has not committed yet.
    const queued = await t.db.enqueueJob({
      accountId: ACCOUNT_A,
      jobType: 'extract_text',
      debug: {},
      documentId: a.documentId,
    });
    const [b] = await t.db.claimJobs({ workerId: 'w', jobId: queued.id, leaseSeconds: 600 });
    const other = new pg.Client(t.url);
    await other.connect();
    try {
      const pid = (await other.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!
        .pid;
      await other.query('begin');
      await other.query('select * from public.hd_replace_document_chunks($1, $2, $3::jsonb)', [
        b!.id,
        b!.lease_token,
        JSON.stringify(chunks(5, a.files[0]!, (i) => `B ${i}. `.repeat(40))),
      ]);
      // The first job's re-run: its old three chunks and two more.
      const mine = chunks(5, a.files[0]!, (i) => (i < 3 ? old(i) : `A ${i}. `.repeat(40)));
      const writing = a.write(mine);
      await expect
        .poll(
          async () =>
            (
              await t.sql.query(
                `select 1 from pg_stat_activity where pid <> $1 and wait_event_type = 'Lock'
                    and query like '%hd_replace_document_chunks%'`,
                [pid],
              )
            ).rows.length,
          { timeout: 60_000, interval: 20 },
        )
        .toBe(1);
      await other.query('commit');
      await writing;
      const { rows } = await t.sql.query<{ content: string }>(
        'select content from hd_asset_chunks where document_id = $1 order by chunk_index',
        [a.documentId],
      );
      expect(rows.map((r) => r.content)).toEqual(mine.map((c) => c.content));
    } finally {
      await other.end();
    }
  });

  it('reads p_chunks from a table column a few times, not once per chunk', async () => {
    const doc = await leasedDocument();
    // Hex, each half said twice: ~70 kB of JSON that compresses to about half, more than
    // fits in a row, so the column holds it compressed in the TOAST table.
    const rows = chunks(60, doc.files[0]!, () => randomBytes(250).toString('hex').repeat(2));
    const { rows: stored } = await t.sql.query<{ id: number }>(
      `insert into stored_payloads (payload) values ($1::jsonb), ($2::jsonb) returning id`,
      [JSON.stringify(rows), JSON.stringify(rows.slice(0, 50))],
    );
    const { rows: storage } = await t.sql.query(
      `select pg_column_compression(payload) as compression,
              pg_column_toast_chunk_id(payload) is not null as apart
         from stored_payloads where id = any($1) order by id`,
      [stored.map((r) => r.id)],
    );
    expect(storage).toEqual([
      { compression: 'pglz', apart: true },
      { compression: 'pglz', apart: true },
    ]);
    const client = await t.sql.connect();
    try {
      const toastBlocks = async () => {
        // This backend's counters, flushed and read again (they are cached per transaction).
        await client.query('select pg_stat_clear_snapshot()');
        const { rows: counted } = await client.query<{ blocks: string }>(
          `select coalesce(toast_blks_read, 0) + coalesce(toast_blks_hit, 0) as blocks
             from pg_statio_user_tables where relname = 'stored_payloads'`,
        );
        return Number(counted[0]!.blocks);
      };
      const writeStored = async (id: number) => {
        await client.query('select pg_stat_force_next_flush()');
        const { rows: counts } = await client.query(
          `select r.* from stored_payloads s,
                  public.hd_replace_document_chunks($1, $2, s.payload) r where s.id = $3`,
          [doc.jobId, doc.lease, id],
        );
        return counts[0];
      };
      const before = await toastBlocks();
      expect(await writeStored(stored[0]!.id)).toEqual({
        inserted: 60,
        updated: 0,
        unchanged: 0,
        deleted: 0,
      });
      expect(await writeStored(stored[1]!.id)).toEqual({
        inserted: 0,
        updated: 0,
        unchanged: 50,
        deleted: 10,
      });
      // Two calls reading ~35 kB a few times each: some dozens of blocks. Read again per
      // chunk (and field), as generate_series(...) with p_chunks #>> '{i,field}' does, it
      // is tens of thousands, and 2,000 chunks took minutes instead of a second.
      expect(await toastBlocks()).toBeLessThan(before + 200);
    } finally {
      client.release();
    }
  });
});

describe('hd_replace_document_chunks: checks', () => {
  it('refuses indexes that are not 0..n-1 in order, and writes nothing', async () => {
    const doc = await leasedDocument();
    const rows = chunks(3, doc.files[0]!);
    await doc.write(rows);
    const before = await rowStates(doc.documentId);
    const wrong: [string, ChunkRow[]][] = [
      ['not from 0', [{ ...rows[0]!, chunk_index: 1 }, rows[1]!]],
      ['a gap', [rows[0]!, { ...rows[1]!, chunk_index: 2 }]],
      ['swapped', [rows[1]!, rows[0]!]],
      ['a repeat', [rows[0]!, rows[1]!, { ...rows[2]!, chunk_index: 1 }]],
      ['one missing', [rows[0]!, { ...rows[1]!, chunk_index: undefined as unknown as number }]],
    ];
    // Over stored rows (read in place) and into a document without any (inserted).
    const empty = await leasedDocument();
    for (const [why, chunksGiven] of wrong) {
      for (const target of [doc, empty]) {
        const own = chunksGiven.map((c) => ({ ...c, file_id: target.files[0]! }));
        await expect(target.write(own), why).rejects.toMatchObject({
          code: '22023',
          message: `chunk_index values must be 0..${chunksGiven.length - 1} in order`,
        });
      }
    }
    expect(await rowStates(doc.documentId)).toEqual(before);
    expect(await rowStates(empty.documentId)).toEqual([]);
  });

  it('a refused chunk past the stored ones undoes the rows already written by the call', async () => {
    const doc = await leasedDocument();
    await doc.write(chunks(6, doc.files[0]!));
    const before = await rowStates(doc.documentId);
    // 0..5 changed, rewritten in place first; 6 and 7 new, and 7 is refused.
    const edited = chunks(8, doc.files[0]!, (i) => `Edited ${i}.`);
    edited[7] = { ...edited[7]!, chunk_index: 8 };
    await expect(doc.write(edited)).rejects.toMatchObject({
      code: '22023',
      message: 'chunk_index values must be 0..7 in order',
    });
    expect(await rowStates(doc.documentId)).toEqual(before);
  });

  it("refuses a file of another document, even behind the document's own files", async () => {
    const doc = await leasedDocument();
    const other = await leasedDocument();
    const rows = chunks(4, doc.files[0]!).map((c, i) => ({
      ...c,
      file_id: [doc.files[0]!, doc.files[1]!, null, other.files[0]!][i]!,
    }));
    await expect(doc.write(rows)).rejects.toMatchObject({
      code: '22023',
      message: `a chunk refers to a file that is not part of document ${doc.documentId}`,
    });
    expect(await doc.write(rows.slice(0, 3))).toMatchObject({ inserted: 3 });
    // The same file over stored rows: refused, nothing rewritten.
    const before = await rowStates(doc.documentId);
    const moved = rows.slice(0, 3).map((c, i) => ({
      ...c,
      content: `moved ${i}`,
      file_id: i === 2 ? other.files[0]! : c.file_id,
    }));
    await expect(doc.write(moved)).rejects.toMatchObject({
      code: '22023',
      message: `a chunk refers to a file that is not part of document ${doc.documentId}`,
    });
    expect(await rowStates(doc.documentId)).toEqual(before);
  });

  it('a bad index is reported before a foreign file in an earlier chunk, as 00020 did', async () => {
    const doc = await leasedDocument();
    const other = await leasedDocument();
    const rows = chunks(4, doc.files[0]!).map((c, i) => ({
      ...c,
      file_id: i === 1 ? other.files[0]! : c.file_id,
      chunk_index: i === 3 ? 7 : i,
    }));
    const stored = await leasedDocument();
    await stored.write(chunks(4, stored.files[0]!));
    for (const target of [doc, stored]) {
      await expect(target.write(rows)).rejects.toMatchObject({
        code: '22023',
        message: 'chunk_index values must be 0..3 in order',
      });
    }
  });

  it("takes a file id in any of PostgreSQL's spellings of it", async () => {
    const doc = await leasedDocument();
    const rows = chunks(2, doc.files[0]!.toUpperCase());
    expect(await doc.write(rows)).toMatchObject({ inserted: 2 });
    expect(await doc.write(chunks(2, doc.files[0]!))).toMatchObject({ unchanged: 2 });
  });

  it('a call that fails half way (a chunk without content) leaves every row as it was', async () => {
    const doc = await leasedDocument();
    const rows = chunks(4, doc.files[0]!);
    await doc.write(rows);
    const before = await rowStates(doc.documentId);
    const broken = [
      { ...rows[0]!, content: 'changed' },
      { ...rows[1]!, content: null as unknown as string },
    ];
    await expect(doc.write(broken)).rejects.toMatchObject({ code: '23502' });
    // The tail delete and the first chunk's update went with the failed call.
    expect(await rowStates(doc.documentId)).toEqual(before);
  });
});
