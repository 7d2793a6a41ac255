import { createHash, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { SupabaseDb } from '../control-plane/db/supabase.ts';
import type { ControlPlaneDb } from '../control-plane/db/transport.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, ACCOUNT_B } from './helpers/runtime.ts';
import { startLocalSupabase, type LocalSupabase } from './helpers/supabase-proxy.ts';

// The output writes and reads of every handler (extract_text, the LLM stages) through
// both transports: the same calls must give the same answers, whether pg runs the SQL
// function directly or supabase-js reaches it over a real PostgREST.
let t: TestDatabase;
let supabase: LocalSupabase;
let rest: SupabaseDb;

beforeAll(async () => {
  t = await createTestDatabase();
  supabase = await startLocalSupabase(t.url);
  rest = new SupabaseDb({ url: supabase.url, serviceRoleKey: supabase.serviceRoleKey });
});
afterAll(async () => {
  await rest.close();
  await supabase.stop();
  await t.drop();
});

const sha = (text: string) => createHash('sha256').update(text).digest('hex');

/** Replaces ids by their order of appearance, so two runs in two accounts compare equal. */
function normalise(value: unknown): unknown {
  const ids = new Map<string, string>();
  const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const text = JSON.stringify(value)
    .replaceAll(ACCOUNT_A, 'ACCOUNT')
    .replaceAll(ACCOUNT_B, 'ACCOUNT');
  return JSON.parse(text, (_key, v: unknown) => {
    if (typeof v === 'string' && uuid.test(v)) {
      if (!ids.has(v)) ids.set(v, `id${ids.size}`);
      return ids.get(v);
    }
    return v;
  });
}

async function runHandlersCalls(db: ControlPlaneDb, account: string) {
  const documentId = randomUUID();
  const job = await db.enqueueJob({
    accountId: account,
    jobType: 'extract_text',
    debug: {},
    documentId,
  });
  await t.sql.query(
    `insert into hd_document_files (account_id, document_id, storage_path, mime_type, size_bytes)
     values ($1, $2, $3, 'text/plain', 5000000000)`,
    [account, documentId, `accounts/${account}/docs/a.txt`],
  );
  const [claimed] = await db.claimJobs({ workerId: 'w', jobId: job.id, leaseSeconds: 60 });
  const lease = claimed!.lease_token!;
  const files = await db.listDocumentFiles(job.id, lease);
  const texts = ['Ada knows Bob.', 'Bob knows Ada.'];
  const chunkRows = texts.map((content, i) => ({
    chunk_index: i,
    file_id: files[0]!.id,
    content,
    page_start: 1,
    page_end: 1,
    char_start: i * 15,
    char_end: i * 15 + content.length,
    content_sha256: sha(content),
  }));
  const chunks = await db.replaceDocumentChunks(job.id, lease, chunkRows);
  // A re-run: unchanged chunks are left alone, a changed one updated, a longer list inserts.
  const chunksAgain = await db.replaceDocumentChunks(job.id, lease, chunkRows);
  const chunksEdited = await db.replaceDocumentChunks(job.id, lease, [
    { ...chunkRows[0]!, page_end: 2 },
    chunkRows[1]!,
    { ...chunkRows[1]!, chunk_index: 2, char_start: 30, char_end: 44 },
  ]);
  await db.replaceDocumentChunks(job.id, lease, chunkRows);
  const counted = await db.countChunksToInterpret(job.id, lease, 'v1');
  const pending = await db.listChunksToInterpret(job.id, lease, 'v1', -1, 10);
  const interpreted = await db.upsertInterpretations(
    job.id,
    lease,
    pending.map((c) => ({
      chunk_id: c.chunk_id,
      chunk_sha256: c.chunk_sha256,
      prompt_version: 'v1',
      model: 'm',
      payload: { entities: ['Ada', 'Bob'] },
      usage: { tokens: 3 },
    })),
  );
  const interpretations = await db.listDocumentInterpretations(job.id, lease, -1, 10);
  const graph = await db.writeDocumentGraph(job.id, lease, {
    nodes: [
      { node_type: 'person', label: 'Ada', normalized_label: 'ada' },
      { node_type: 'person', label: 'Bob', normalized_label: 'bob' },
    ],
    edges: [
      {
        source_type: 'person',
        source_key: 'ada',
        relation: 'knows',
        target_type: 'person',
        target_key: 'bob',
        evidence: [
          { interpretation_id: interpretations[0]!.interpretation_id, quote: 'Ada knows Bob' },
        ],
      },
    ],
  });
  const nodes = await db.listDocumentNodes(job.id, lease);
  const { rows } = await t.sql.query<{ id: string }>(
    `select id from hd_kg_nodes where account_id = $1 order by normalized_label`,
    [account],
  );
  expect([...nodes].sort()).toEqual(rows.map((r) => r.id).sort());
  const ada = rows[0]!.id;
  const context = await db.getNodeContext(job.id, lease, ada, { maxEdges: 5, maxEvidence: 2 });
  const synthesis = await db.recordSynthesis(job.id, lease, ada, {
    content: 'Ada knows Bob.',
    summary: 'first',
    sources: [],
    model: 'm',
    prompt_version: 'v1',
    input_sha256: sha('in'),
    usage: {},
  });
  const limits = { maxEdges: 5, maxEvidence: 2 };
  const foreign = await db.getNodeContext(job.id, lease, randomUUID(), limits);
  return normalise({
    files,
    chunks,
    chunksAgain,
    chunksEdited,
    counted,
    pending,
    interpreted,
    interpretations,
    graph,
    context,
    synthesis,
    foreign: foreign ?? 'none',
  });
}

it('gives the same answers to every output call over pg and over PostgREST', async () => {
  const viaPg = await runHandlersCalls(t.db, ACCOUNT_A);
  const viaRest = await runHandlersCalls(rest, ACCOUNT_B);
  expect(viaRest).toEqual(viaPg);
  expect(viaPg).toMatchObject({
    files: [{ size_bytes: 5000000000, mime_type: 'text/plain' }],
    chunks: { inserted: 2 },
    chunksAgain: { inserted: 0, updated: 0, unchanged: 2, deleted: 0 },
    chunksEdited: { inserted: 1, updated: 1, unchanged: 1, deleted: 0 },
    counted: { total: 2, pending: 2 },
    interpreted: { inserted: 2 },
    graph: { nodes_inserted: 2, edges_inserted: 1 },
    synthesis: { version: 1, created: true },
    foreign: 'none',
  });
});
