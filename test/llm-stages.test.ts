import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import type { Config } from '../control-plane/config.ts';
import { configToEnv } from '../control-plane/config.ts';
import { normalizeLabel } from '../runner/handlers/text2kg.ts';
import { INTERPRETATION_PROMPT } from '../runner/llm/prompts.ts';
import type { TestDatabase } from './helpers/database.ts';
import {
  enqueueStage,
  insertChunks,
  interpretationAnswer,
  newDocument,
  rowsOf,
  runToCompletion,
  useStandInStages,
} from './helpers/llm-stages.ts';
import { waitUntil, type OpenAiStandIn } from './helpers/openai-server.ts';
import { ACCOUNT_A } from './helpers/runtime.ts';

// The model endpoint is a local stand-in server speaking the OpenAI chat-completions
// wire format (test/helpers/openai-server.ts), standing in for OpenAI/vLLM/Ollama.
let t: TestDatabase;
let server: OpenAiStandIn;
let config: Config;
useStandInStages((env) => ({ t, server, config } = env));

const count = async (sql: string, params: unknown[]) =>
  Number((await t.sql.query(sql, params)).rows[0].n);
const interpretationsOf = (documentId: string) =>
  count(`select count(*) n from hd_interpretations where document_id = $1`, [documentId]);

describe('extract_interpretations', () => {
  it('interprets every chunk once, records model, prompt version and usage, and a re-run asks nothing', async () => {
    const doc = newDocument();
    await insertChunks(t, ACCOUNT_A, doc, [
      'Acme Corp supplies Globex. Workers must wear helmets.',
      'Globex owns Initech.',
      'Nothing named here.',
    ]);
    const job = await enqueueStage(t, 'extract_interpretations', ACCOUNT_A, doc);
    const done = await runToCompletion(t, config, job.id);
    expect(server.requests).toHaveLength(3);
    const stats = done.debug.stats as Record<string, unknown>;
    expect(stats).toMatchObject({
      chunks: 3,
      already_done: 0,
      interpreted: 3,
      prompt_version: INTERPRETATION_PROMPT.version,
      written: { inserted: 3, updated: 0, unchanged: 0 },
      llm: { calls: 3, requests: 3, model: 'stand-in' },
    });
    expect((stats.llm as { cost_usd_estimate: number }).cost_usd_estimate).toBeGreaterThan(0);
    const rows = await rowsOf(t, 'hd_interpretations', ACCOUNT_A);
    expect(rows.filter((r) => r.document_id === doc)).toHaveLength(3);
    expect(rows[0]).toMatchObject({
      account_id: ACCOUNT_A,
      prompt_version: INTERPRETATION_PROMPT.version,
      model: 'stand-in',
      job_id: job.id,
      usage: expect.objectContaining({ requests: 1, prompt_tokens: expect.any(Number) }),
    });

    const before = await rowsOf(t, 'hd_interpretations', ACCOUNT_A);
    server.reset();
    await t.db.requeueJob(job.id);
    const again = await runToCompletion(t, config, job.id);
    expect(server.requests).toHaveLength(0);
    expect(again.debug.stats).toMatchObject({ chunks: 3, already_done: 3, interpreted: 0 });
    expect(await rowsOf(t, 'hd_interpretations', ACCOUNT_A)).toEqual(before);
  });

  it('resumes after the runner is killed mid-job: the retry asks only about the rest', async () => {
    const doc = newDocument();
    await insertChunks(
      t,
      ACCOUNT_A,
      doc,
      Array.from({ length: 6 }, (_, i) => `Part ${i}: Alpha${i} meets Beta${i}.`),
    );
    const job = await enqueueStage(t, 'extract_interpretations', ACCOUNT_A, doc);
    // Three answers, then the endpoint stalls: the runner is killed (SIGKILL) while it waits.
    server.respond((r) => (r.index < 3 ? undefined : { kind: 'hang' }));
    const runner = execa(process.execPath, ['cli/main.ts', 'run', '--job-id', job.id], {
      env: { PATH: process.env.PATH ?? '', ...configToEnv(config) },
      extendEnv: false,
      reject: false,
    });
    await waitUntil(
      'three interpretations stored',
      async () => (await interpretationsOf(doc)) === 3,
    );
    await waitUntil('two requests stalled', () => server.inFlight() === 2);
    runner.kill('SIGKILL');
    await runner;
    // The dead runner's lease runs out; the reaper puts the job back.
    await t.sql.query(`select hd_reap_expired_leases(now() + interval '10 minutes')`);
    expect(await t.db.getJob(job.id)).toMatchObject({ status: 'queued', attempts: 1 });

    server.reset();
    const done = await runToCompletion(t, config, job.id);
    expect(server.requests).toHaveLength(3);
    expect(done).toMatchObject({ attempts: 2 });
    expect(done.debug.stats).toMatchObject({ chunks: 6, already_done: 3, interpreted: 3 });
    expect(await interpretationsOf(doc)).toBe(6);
  });

  it('interprets a chunk again when extract_text changed its content, and only that one', async () => {
    const doc = newDocument();
    await insertChunks(t, ACCOUNT_A, doc, ['Alpha meets Beta.', 'Gamma meets Delta.']);
    const job = await enqueueStage(t, 'extract_interpretations', ACCOUNT_A, doc);
    await runToCompletion(t, config, job.id);
    await insertChunks(t, ACCOUNT_A, doc, ['Alpha meets Beta.', 'Gamma leaves Delta.']);
    server.reset();
    await t.db.requeueJob(job.id);
    const done = await runToCompletion(t, config, job.id);
    expect(server.requests).toHaveLength(1);
    expect(server.requests[0]!.text).toContain('Gamma leaves Delta.');
    expect(done.debug.stats).toMatchObject({ written: { inserted: 0, updated: 1 } });
  });

  it('fails a job without a document_id with INVALID_INPUT, asking nothing', async () => {
    const job = await enqueueStage(t, 'extract_interpretations', ACCOUNT_A, null);
    await runToCompletion(t, config, job.id).catch(() => undefined);
    expect(await t.db.getJob(job.id)).toMatchObject({
      status: 'failed',
      error_code: 'INVALID_INPUT',
    });
    expect(server.requests).toHaveLength(0);
  });
});

describe('text2kg', () => {
  it('keeps one node per normalised label and type across documents, and re-runs change nothing', async () => {
    const [doc1, doc2] = [newDocument(), newDocument()];
    await insertChunks(t, ACCOUNT_A, doc1, ['DOC-ONE']);
    await insertChunks(t, ACCOUNT_A, doc2, ['DOC-TWO']);
    server.respond((r) => ({
      kind: 'answer',
      content: r.text.includes('DOC-ONE')
        ? interpretationAnswer([
            ['ACME  Corp', 'Organization', 'Supplies', 'Straße GmbH', 'organization'],
          ])
        : interpretationAnswer([
            ['ａｃｍｅ\u00a0corp', 'ORGANIZATION ', 'supplies', '„STRASSE GMBH“', 'organization'],
            ['Ac\u00adme Corp.', 'organization', 'is based in', 'Berlin', 'location'],
          ]),
    }));
    for (const doc of [doc1, doc2]) {
      await runToCompletion(
        t,
        config,
        (await enqueueStage(t, 'extract_interpretations', ACCOUNT_A, doc)).id,
      );
    }
    const kg1 = await enqueueStage(t, 'text2kg', ACCOUNT_A, doc1);
    expect((await runToCompletion(t, config, kg1.id)).debug.stats).toMatchObject({
      written: { nodes_inserted: 2, edges_inserted: 1 },
    });
    const kg2 = await enqueueStage(t, 'text2kg', ACCOUNT_A, doc2);
    expect((await runToCompletion(t, config, kg2.id)).debug.stats).toMatchObject({
      written: { nodes_inserted: 1, nodes_existing: 2, edges_inserted: 1, edges_updated: 1 },
    });
    const nodes = (await rowsOf(t, 'hd_kg_nodes', ACCOUNT_A)).filter((n) =>
      ['acme corp', 'strasse gmbh', 'berlin'].includes(String(n.normalized_label)),
    );
    expect(nodes.map((n) => [n.node_type, n.normalized_label, n.label]).sort()).toEqual([
      ['location', 'berlin', 'Berlin'],
      ['organization', 'acme corp', 'ACME Corp'],
      ['organization', 'strasse gmbh', 'Straße GmbH'],
    ]);
    const supplies = (await rowsOf(t, 'hd_kg_edges', ACCOUNT_A)).find(
      (e) => e.relation === 'supplies',
    )!;
    const evidence = supplies.evidence as { document_id: string; chunk_id: string }[];
    expect(evidence.map((e) => e.document_id).sort()).toEqual([doc1, doc2].sort());

    const before = {
      nodes: await rowsOf(t, 'hd_kg_nodes', ACCOUNT_A),
      edges: await rowsOf(t, 'hd_kg_edges', ACCOUNT_A),
    };
    for (const job of [kg1, kg2]) {
      await t.db.requeueJob(job.id);
      expect((await runToCompletion(t, config, job.id)).debug.stats).toMatchObject({
        written: { nodes_inserted: 0, edges_inserted: 0, edges_updated: 0, edges_removed: 0 },
      });
    }
    expect({
      nodes: await rowsOf(t, 'hd_kg_nodes', ACCOUNT_A),
      edges: await rowsOf(t, 'hd_kg_edges', ACCOUNT_A),
    }).toEqual(before);
  });

  it("drops a document's old evidence when it is re-interpreted, and an edge left without any", async () => {
    const doc = newDocument();
    await insertChunks(t, ACCOUNT_A, doc, ['Psi Org funds Chi Org. Psi Org hires Phi.']);
    const interpret = await enqueueStage(t, 'extract_interpretations', ACCOUNT_A, doc);
    await runToCompletion(t, config, interpret.id);
    const kg = await enqueueStage(t, 'text2kg', ACCOUNT_A, doc);
    await runToCompletion(t, config, kg.id);
    await insertChunks(t, ACCOUNT_A, doc, ['Psi Org funds Chi Org.']);
    for (const job of [interpret, kg]) {
      await t.db.requeueJob(job.id);
      await runToCompletion(t, config, job.id);
    }
    expect((await t.db.getJob(kg.id))!.debug.stats).toMatchObject({
      // Same chunk, same interpretation row, same quote: "funds" stays as it was.
      written: { edges_inserted: 0, edges_updated: 0, edges_unchanged: 1, edges_removed: 1 },
    });
    const relations = (await rowsOf(t, 'hd_kg_edges', ACCOUNT_A))
      .filter((e) => (e.evidence as { document_id: string }[]).some((x) => x.document_id === doc))
      .map((e) => e.relation);
    expect(relations).toEqual(['funds']);
  });

  it('normalises case, width, invisible characters, whitespace and wrapping punctuation', () => {
    expect(normalizeLabel('  ＡＣＭＥ\u00a0\u200bCorp. ')).toBe('acme corp');
    expect(normalizeLabel('Straße')).toBe(normalizeLabel('STRASSE'));
    expect(normalizeLabel('"Acme"')).toBe('acme');
    expect(normalizeLabel('C++')).toBe('c++');
    expect(normalizeLabel('ﬁle\tNAME')).toBe('file name');
  });
});
