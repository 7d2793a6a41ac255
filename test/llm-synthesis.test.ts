import { describe, expect, it } from 'vitest';
import type { Config } from '../control-plane/config.ts';
import { SYNTHESIS_PROMPT } from '../runner/llm/prompts.ts';
import type { TestDatabase } from './helpers/database.ts';
import {
  enqueueStage,
  insertChunks,
  newDocument,
  rowsOf,
  runStage,
  runToCompletion,
  useStandInStages,
} from './helpers/llm-stages.ts';
import type { OpenAiStandIn } from './helpers/openai-server.ts';
import { ACCOUNT_A, ACCOUNT_B } from './helpers/runtime.ts';

// The model endpoint is a local stand-in server speaking the OpenAI chat-completions
// wire format (test/helpers/openai-server.ts), standing in for OpenAI/vLLM/Ollama.
let t: TestDatabase;
let server: OpenAiStandIn;
let config: Config;
useStandInStages((env) => ({ t, server, config } = env));

/** extract_interpretations then text2kg for one document, as the pipeline runs them. */
async function ingest(accountId: string, texts: string[]) {
  const doc = newDocument();
  await insertChunks(t, accountId, doc, texts);
  await runToCompletion(
    t,
    config,
    (await enqueueStage(t, 'extract_interpretations', accountId, doc)).id,
  );
  await runToCompletion(t, config, (await enqueueStage(t, 'text2kg', accountId, doc)).id);
  return doc;
}

async function nodeId(accountId: string, normalizedLabel: string): Promise<string> {
  const { rows } = await t.sql.query(
    `select id from hd_kg_nodes where account_id = $1 and normalized_label = $2`,
    [accountId, normalizedLabel],
  );
  if (!rows[0]) throw new Error(`no node ${normalizedLabel}`);
  return rows[0].id as string;
}

describe('synthesize_node', () => {
  it('versions syntheses, records dynamics, updates the description, and re-runs write nothing', async () => {
    await ingest(ACCOUNT_A, ['Acme Corp supplies Globex.', 'Acme Corp employs Wile.']);
    const acme = await nodeId(ACCOUNT_A, 'acme corp');
    const job = await enqueueStage(t, 'synthesize_node', ACCOUNT_A, null, { node_id: acme });
    server.reset();
    const first = await runToCompletion(t, config, job.id);
    expect(server.requests).toHaveLength(1);
    expect(server.requests[0]!.text).toContain('Entity: Acme Corp [organization]');
    expect(server.requests[0]!.text).toContain('Previous description:\n(none)');
    expect(first.debug.stats).toMatchObject({
      nodes: 1,
      synthesized: 1,
      change_kinds: { created: 1 },
      prompt_version: SYNTHESIS_PROMPT.version,
      llm: { calls: 1 },
    });
    const [v1] = await rowsOf(t, 'hd_syntheses', ACCOUNT_A);
    expect(v1).toMatchObject({
      node_id: acme,
      version: 1,
      prompt_version: SYNTHESIS_PROMPT.version,
    });
    expect(v1!.sources).toHaveLength(2);
    const node = (await rowsOf(t, 'hd_kg_nodes', ACCOUNT_A)).find((n) => n.id === acme)!;
    expect(node.canonical_description).toBe(v1!.content);
    expect(await rowsOf(t, 'hd_dynamics', ACCOUNT_A)).toEqual([
      expect.objectContaining({
        synthesis_id: v1!.id,
        previous_synthesis_id: null,
        change_kind: 'created',
        summary: 'first description',
        details: expect.objectContaining({ version: 1, sources_added: 2, sources_removed: 0 }),
      }),
    ]);

    // Same inputs: no model call, no new version, no new dynamics row.
    server.reset();
    await t.db.requeueJob(job.id);
    const again = await runToCompletion(t, config, job.id);
    expect(server.requests).toHaveLength(0);
    expect(again.debug.stats).toMatchObject({ synthesized: 0, unchanged: 1 });
    expect(await rowsOf(t, 'hd_syntheses', ACCOUNT_A)).toHaveLength(1);

    // New evidence from another document: version 2, compared with version 1.
    await ingest(ACCOUNT_A, ['Acme Corp supplies Initech.']);
    server.reset();
    await t.db.requeueJob(job.id);
    await runToCompletion(t, config, job.id);
    expect(server.requests).toHaveLength(1);
    expect(server.requests[0]!.text).toContain(`Previous description:\n${String(v1!.content)}`);
    const v2 = (await rowsOf(t, 'hd_syntheses', ACCOUNT_A)).find((s) => s.version === 2)!;
    const dynamics = (await rowsOf(t, 'hd_dynamics', ACCOUNT_A)).find(
      (d) => d.synthesis_id === v2.id,
    );
    expect(dynamics).toMatchObject({
      previous_synthesis_id: v1!.id,
      change_kind: 'evidence_added',
      details: expect.objectContaining({
        version: 2,
        previous_version: 1,
        sources_added: 1,
        sources_removed: 0,
      }),
    });
  });

  it("synthesises every node of a document when no node_id is given, and refuses another account's node", async () => {
    const doc = await ingest(ACCOUNT_A, ['Rho Labs funds Sigma Works.']);
    const job = await enqueueStage(t, 'synthesize_node', ACCOUNT_A, doc);
    server.reset();
    const done = await runToCompletion(t, config, job.id);
    expect(done.debug.stats).toMatchObject({ nodes: 2, synthesized: 2 });
    expect(server.requests).toHaveLength(2);

    const foreign = await enqueueStage(t, 'synthesize_node', ACCOUNT_B, null, {
      node_id: await nodeId(ACCOUNT_A, 'rho labs'),
    });
    const outcome = await runStage(t, config, foreign.id);
    expect(outcome).toMatchObject({ outcome: 'failed', error: { code: 'INVALID_INPUT' } });
    expect(server.requests).toHaveLength(2);
  });
});
