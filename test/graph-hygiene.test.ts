import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { Config } from '../control-plane/config.ts';
import type { TestDatabase } from './helpers/database.ts';
import {
  enqueueStage,
  insertChunks,
  newDocument,
  rowsOf,
  runToCompletion,
  useStandInStages,
} from './helpers/llm-stages.ts';
import { waitUntil, type OpenAiStandIn } from './helpers/openai-server.ts';
import { ACCOUNT_A, ACCOUNT_B, putObject } from './helpers/runtime.ts';

// Real PostgreSQL and fs storage; the model endpoint is the local stand-in server
// (test/helpers/openai-server.ts) standing in for OpenAI/vLLM/Ollama, answering with the
// deterministic stand-in model (names and the words between them) unless a test scripts it.
let t: TestDatabase;
let server: OpenAiStandIn;
let config: Config;
useStandInStages((env) => ({ t, server, config } = env));

const BUCKET = 'hd_uploads_raw';

/** Stores `text` as the document's one file (replacing it) with its hd_document_files row. */
async function putDocument(account: string, documentId: string, text: string) {
  const key = `accounts/${account}/documents/${documentId}/source.txt`;
  await putObject(config.HD_STORAGE_ROOT, BUCKET, key, text);
  await t.sql.query(
    `insert into hd_document_files (account_id, document_id, bucket, storage_path, mime_type, size_bytes)
     values ($1, $2, $3, $4, 'text/plain', $5)
     on conflict (account_id, bucket, storage_path) do update set size_bytes = excluded.size_bytes`,
    [account, documentId, BUCKET, key, Buffer.byteLength(text)],
  );
}

/** extract_text → extract_interpretations → text2kg, as a pipeline; the stats of each. */
async function runPipeline(account: string, documentId: string) {
  const small = { ...config, HD_CHUNK_TARGET_CHARS: 100, HD_CHUNK_OVERLAP_CHARS: 0 };
  let job = await enqueueStage(t, 'extract_text', account, documentId, {
    next_stages: ['extract_interpretations', 'text2kg'],
  });
  const stats: Record<string, Record<string, unknown>> = {};
  for (;;) {
    const done = await runToCompletion(t, small, job.id);
    const s = done.debug.stats as Record<string, unknown>;
    stats[done.job_type] = s;
    const next = s.next_job as { id: string } | undefined;
    if (!next) return stats;
    job = (await t.db.getJob(next.id))!;
  }
}

/** The account's graph by content (ids of chunks and interpretations left out). */
async function graphOf(account: string) {
  const nodes = await rowsOf(t, 'hd_kg_nodes', account);
  const label = new Map(nodes.map((n) => [n.id, `${n.node_type}:${n.normalized_label}`]));
  const edges = (await rowsOf(t, 'hd_kg_edges', account)).map((e) => ({
    edge: `${label.get(e.source_node_id)} -${e.relation}-> ${label.get(e.target_node_id)}`,
    evidence: (e.evidence as Record<string, unknown>[]).map((x) => [x.quote, x.score]),
    dropped: e.evidence_dropped,
  }));
  return {
    nodes: nodes.map((n) => [n.node_type, n.normalized_label, n.label]).sort(),
    edges: edges.sort((a, b) => a.edge.localeCompare(b.edge)),
  };
}

const V1 = [
  'Acme Corp supplies Globex. Globex owns Initech. Nothing else happened in that quarter at all.',
  'Initech hires Zed. Zed visits Berlin. The remaining lines of this paragraph only fill it up.',
].join('\n\n');
const V2 = 'Acme Corp supplies Globex. Globex sells Umbrella.';

describe('graph hygiene', () => {
  it('re-running the pipeline after the source changed leaves the graph a fresh run makes, and a run without change leaves every row as it was', async () => {
    const doc = randomUUID();
    await putDocument(ACCOUNT_A, doc, V1);
    const first = await runPipeline(ACCOUNT_A, doc);
    expect(first.extract_text).toMatchObject({ chunks: 2 });
    expect((await graphOf(ACCOUNT_A)).edges.map((e) => e.edge)).toEqual([
      'entity:globex -owns-> entity:initech',
      'entity:initech -hires-> entity:zed',
      'entity:zed -visits-> entity:berlin',
      'organization:acme corp -supplies-> entity:globex',
    ]);
    const supplies = async () =>
      (await rowsOf(t, 'hd_kg_edges', ACCOUNT_A)).find((e) => e.relation === 'supplies')!;
    const suppliesBefore = await supplies();

    await putDocument(ACCOUNT_A, doc, V2);
    const second = await runPipeline(ACCOUNT_A, doc);
    expect(second.extract_text).toMatchObject({ chunks: 1, chunks_deleted: 1 });
    expect(second.text2kg).toMatchObject({
      // Zed, Berlin and their edges went when extract_text cut the second chunk (its
      // evidence deleted with it); text2kg removed "owns" and Initech, no longer said.
      written: { edges_inserted: 1, edges_removed: 1, nodes_removed: 1 },
    });
    // The same graph as the new text gives on an empty account, labels and quotes alike.
    await putDocument(ACCOUNT_B, doc, V2);
    await runPipeline(ACCOUNT_B, doc);
    const fresh = await graphOf(ACCOUNT_B);
    expect(await graphOf(ACCOUNT_A)).toEqual(fresh);
    expect(fresh.nodes.map((n) => n[1]).sort()).toEqual(['acme corp', 'globex', 'umbrella']);
    // What stayed was kept in place, not deleted and made again.
    expect((await supplies()).id).toBe(suppliesBefore.id);

    const tables = ['hd_kg_nodes', 'hd_kg_edges', 'hd_interpretations'] as const;
    const before = await Promise.all(tables.map((table) => rowsOf(t, table, ACCOUNT_A)));
    const third = await runPipeline(ACCOUNT_A, doc);
    expect(third.text2kg).toMatchObject({
      written: {
        nodes_inserted: 0,
        edges_inserted: 0,
        edges_updated: 0,
        edges_removed: 0,
        nodes_removed: 0,
      },
    });
    expect(await Promise.all(tables.map((table) => rowsOf(t, table, ACCOUNT_A)))).toEqual(before);
  });

  it('keeps the strongest evidence per edge and counts the rest; a re-run changes nothing', async () => {
    const doc = newDocument();
    // Five passages state one relation; their quotes name both ends, one, or neither.
    const quotes = [
      'Omikron AG supplies Pi Ltd',
      'they supply Pi Ltd',
      'supplies them',
      'Omikron AG ships to Pi Ltd',
      'Omikron AG is a supplier',
    ];
    await insertChunks(
      t,
      ACCOUNT_A,
      doc,
      quotes.map((q, i) => `PASSAGE-${i}`),
    );
    server.respond((r) => {
      const i = Number(/PASSAGE-(\d)/.exec(r.text)![1]);
      return {
        kind: 'answer',
        content: relationAnswer('Omikron AG', 'supplies', 'Pi Ltd', quotes[i]!),
      };
    });
    await runToCompletion(
      t,
      config,
      (await enqueueStage(t, 'extract_interpretations', ACCOUNT_A, doc)).id,
    );
    const kg = await enqueueStage(t, 'text2kg', ACCOUNT_A, doc);
    const bounded = { ...config, HD_KG_MAX_EVIDENCE_PER_EDGE: 3 };
    const done = await runToCompletion(t, bounded, kg.id);
    expect(done.debug.stats).toMatchObject({ written: { edges_inserted: 1, evidence_dropped: 2 } });
    const [edge] = (await graphOf(ACCOUNT_A)).edges.filter((e) => e.edge.includes('omikron'));
    expect(edge).toEqual({
      edge: 'organization:omikron ag -supplies-> organization:pi ltd',
      // Both ends named first, then one; ties in quote order.
      evidence: [
        ['Omikron AG ships to Pi Ltd', 1],
        ['Omikron AG supplies Pi Ltd', 1],
        ['Omikron AG is a supplier', 0.5],
      ],
      dropped: 2,
    });
    const before = await rowsOf(t, 'hd_kg_edges', ACCOUNT_A);
    await t.db.requeueJob(kg.id);
    await runToCompletion(t, bounded, kg.id);
    expect(await rowsOf(t, 'hd_kg_edges', ACCOUNT_A)).toEqual(before);
  });

  it("removes a deleted document's evidence, and the edges and nodes only it supported; other documents' evidence stays", async () => {
    const [kept, deleted] = [newDocument(), newDocument()];
    await insertChunks(t, ACCOUNT_B, kept, ['Rho Inc lends to Sigma Inc.']);
    await insertChunks(t, ACCOUNT_B, deleted, ['Rho Inc lends to Sigma Inc. Sigma Inc hires Tau.']);
    for (const doc of [kept, deleted]) {
      await runToCompletion(
        t,
        config,
        (await enqueueStage(t, 'extract_interpretations', ACCOUNT_B, doc)).id,
      );
      await runToCompletion(t, config, (await enqueueStage(t, 'text2kg', ACCOUNT_B, doc)).id);
    }
    const labels = async () =>
      (await graphOf(ACCOUNT_B)).nodes
        .map((n) => n[1])
        .filter((l) => /rho|sigma|tau/.test(String(l)))
        .sort();
    expect(await labels()).toEqual(['rho inc', 'sigma inc', 'tau']);

    // The application deletes the document: its chunks and interpretations, as itself.
    await t.sql.query(`delete from hd_interpretations where document_id = $1`, [deleted]);
    await t.sql.query(`delete from hd_asset_chunks where document_id = $1`, [deleted]);

    expect(await labels()).toEqual(['rho inc', 'sigma inc']);
    const edges = (await rowsOf(t, 'hd_kg_edges', ACCOUNT_B)).filter((e) =>
      JSON.stringify(e.evidence).includes(kept),
    );
    expect(edges.map((e) => e.relation)).toEqual(['lends_to']);
    expect((edges[0]!.evidence as { document_id: string }[]).map((x) => x.document_id)).toEqual([
      kept,
    ]);
    expect(JSON.stringify(await rowsOf(t, 'hd_kg_edges', ACCOUNT_B))).not.toContain(deleted);
  });

  it('forgets the dropped count of a deleted document, and keeps an edge whose only support was dropped', async () => {
    const docs = [newDocument(), newDocument(), newDocument()];
    // Strong, medium and weak support of one edge, one per document; one item is stored.
    const quotes = ['Ypsilon KG rents from Zeta SE', 'rents from Zeta SE', 'rents it'];
    for (const [i, doc] of docs.entries()) {
      await insertChunks(t, ACCOUNT_B, doc, [`PASSAGE-${i}`]);
    }
    server.respond((r) => {
      const i = Number(/PASSAGE-(\d)/.exec(r.text)![1]);
      return {
        kind: 'answer',
        content: relationAnswer('Ypsilon KG', 'rents from', 'Zeta SE', quotes[i]!),
      };
    });
    const bounded = { ...config, HD_KG_MAX_EVIDENCE_PER_EDGE: 1 };
    for (const doc of docs) {
      await runToCompletion(
        t,
        config,
        (await enqueueStage(t, 'extract_interpretations', ACCOUNT_B, doc)).id,
      );
      await runToCompletion(t, bounded, (await enqueueStage(t, 'text2kg', ACCOUNT_B, doc)).id);
    }
    const edge = async () =>
      (await rowsOf(t, 'hd_kg_edges', ACCOUNT_B)).find((e) => e.relation === 'rents_from');
    expect(await edge()).toMatchObject({
      evidence: [expect.objectContaining({ document_id: docs[0], score: 1 })],
      evidence_dropped: 2,
      evidence_dropped_by_document: { [docs[1]!]: 1, [docs[2]!]: 1 },
    });
    await t.sql.query(`delete from hd_asset_chunks where document_id = $1`, [docs[2]]);
    expect(await edge()).toMatchObject({
      evidence_dropped: 1,
      evidence_dropped_by_document: { [docs[1]!]: 1 },
    });
    // The stored item's document goes: the edge stays, supported by docs[1] (not stored).
    await t.sql.query(`delete from hd_asset_chunks where document_id = $1`, [docs[0]]);
    expect(await edge()).toMatchObject({ evidence: [], evidence_dropped: 1 });
    await t.sql.query(`delete from hd_asset_chunks where document_id = $1`, [docs[1]]);
    expect(await edge()).toBeUndefined();
  });

  it("takes turns with other writers of the account's graph: a deletion and a write waiting on a write in progress all land", async () => {
    const [x, y, z] = [newDocument(), newDocument(), newDocument()];
    for (const [i, doc] of [x, y, z].entries()) {
      await insertChunks(t, ACCOUNT_B, doc, [`Kilo Corp supplies Lima Corp. Marker ${i}.`]);
      await runToCompletion(
        t,
        config,
        (await enqueueStage(t, 'extract_interpretations', ACCOUNT_B, doc)).id,
      );
    }
    await runToCompletion(t, config, (await enqueueStage(t, 'text2kg', ACCOUNT_B, x)).id);
    const kgZ = await enqueueStage(t, 'text2kg', ACCOUNT_B, z);
    // Document y's graph write, as text2kg sends it, left open in its transaction: it holds
    // the account's lock and has changed the shared edge, not yet committed.
    const queued = await enqueueStage(t, 'text2kg', ACCOUNT_B, y);
    const [kgY] = await t.db.claimJobs({ workerId: 'hygiene', leaseSeconds: 60, jobId: queued.id });
    const { rows: interpretations } = await t.sql.query<{ id: string }>(
      `select id from hd_interpretations where document_id = $1`,
      [y],
    );
    const nodes = ['Kilo Corp', 'Lima Corp'].map((label) => ({
      node_type: 'organization',
      label,
      normalized_label: label.toLowerCase(),
    }));
    const edges = [
      {
        source_type: 'organization',
        source_key: 'kilo corp',
        relation: 'supplies',
        target_type: 'organization',
        target_key: 'lima corp',
        evidence: [
          {
            interpretation_id: interpretations[0]!.id,
            quote: 'Kilo Corp supplies Lima Corp',
            score: 1,
          },
        ],
      },
    ];
    const writer = await t.sql.connect();
    try {
      await writer.query('begin');
      await writer.query(`select * from hd_write_document_graph($1, $2, $3, $4)`, [
        kgY!.id,
        kgY!.lease_token,
        JSON.stringify(nodes),
        JSON.stringify(edges),
      ]);
      const pending = Promise.all([
        runToCompletion(t, config, kgZ.id),
        t.sql.query(`delete from hd_asset_chunks where document_id = $1`, [x]),
      ]);
      await waitUntil('both waiting on the write in progress', async () => {
        const { rows } = await t.sql.query(
          `select count(*)::int n from pg_stat_activity
            where datname = current_database() and wait_event_type = 'Lock'`,
        );
        return rows[0].n >= 2;
      });
      await writer.query('commit');
      await pending;
    } finally {
      writer.release();
    }
    const edge = (await rowsOf(t, 'hd_kg_edges', ACCOUNT_B)).find(
      (e) => e.relation === 'supplies' && JSON.stringify(e.evidence).includes(z),
    )!;
    const documents = (edge.evidence as { document_id: string }[]).map((e) => e.document_id);
    expect(documents.sort()).toEqual([y, z].sort());
    expect(edge.evidence_dropped).toBe(0);
  });

  it('synthesize_node counts a node deleted while the model described it as gone, not as a failure', async () => {
    const doc = newDocument();
    await insertChunks(t, ACCOUNT_A, doc, ['Nova Corp hires Orion.']);
    for (const stage of ['extract_interpretations', 'text2kg']) {
      await runToCompletion(t, config, (await enqueueStage(t, stage, ACCOUNT_A, doc)).id);
    }
    const synth = await enqueueStage(t, 'synthesize_node', ACCOUNT_A, doc);
    server.respond(() => ({ kind: 'hang' }));
    const running = runToCompletion(t, config, synth.id);
    await waitUntil('both nodes being described', () => server.inFlight() === 2);
    // The document is deleted meanwhile: its nodes go with their last evidence.
    await t.sql.query(`delete from hd_asset_chunks where document_id = $1`, [doc]);
    server.releaseHanging();
    const done = await running;
    expect(done.debug.stats).toMatchObject({ nodes: 2, synthesized: 0, gone: 2 });
  });
});

function relationAnswer(source: string, relation: string, target: string, quote: string) {
  return JSON.stringify({
    statements: [],
    rules: [],
    relations: [
      { source, source_type: 'organization', relation, target, target_type: 'organization', quote },
    ],
  });
}
