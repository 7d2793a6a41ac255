import { createHash } from 'node:crypto';
import { HdError } from '../../contract/errors.ts';
import type { NodeContext, SynthesisInput } from '../../control-plane/db/transport.ts';
import type { Handler, HandlerContext } from '../handler.ts';
import { SYNTHESIS_PROMPT, type NodeForPrompt } from '../llm/prompts.ts';
import { storableString } from '../sanitize-metadata.ts';

/** What the model is shown of one node: its strongest edges and a few quotes each. */
const CONTEXT_LIMITS = { maxEdges: 40, maxEvidence: 3 };
const MAX_DESCRIPTION_CHARS = 4000;
const MAX_SUMMARY_CHARS = 1000;

interface SynthesisStats {
  nodes: number;
  synthesized: number;
  unchanged: number;
  without_edges: number;
  /** Nodes of the document deleted while this job ran (a re-extraction removed them). */
  gone: number;
  change_kinds: Record<string, number>;
}

// hd_record_synthesis and hd_get_node_context's "not a node of this account": for a node
// listed from the document a moment ago, one its re-extraction has since deleted (00016).
const NODE_NOT_FOUND = 'HDT01';

/**
 * synthesize_node: for `node_id` (or every node of the job's document), shows the model
 * the node's edges and evidence and its previous description, and stores the answer as
 * the next version in hd_syntheses, with an hd_dynamics row and the node's
 * canonical_description. A node whose inputs did not change since its latest version is
 * skipped without a model call, so re-runs and retries write nothing twice.
 */
export const synthesizeNode: Handler<'synthesize_node'> = {
  resources: { gpu: false, memoryMb: 512, cpus: 1, timeoutMs: 2 * 60 * 60 * 1000 },

  async run(ctx) {
    const started = performance.now();
    const nodeIds = await nodesToSynthesize(ctx);
    const stats: SynthesisStats = {
      nodes: nodeIds.length,
      synthesized: 0,
      unchanged: 0,
      without_edges: 0,
      gone: 0,
      change_kinds: {},
    };
    await ctx.progress(0, `processing:0/${nodeIds.length}`);
    const stop = new AbortController();
    const signal = AbortSignal.any([ctx.signal, stop.signal]);
    // Windows of a few nodes at a time keep memory flat; the client bounds requests.
    const window = Math.max(1, ctx.config.HD_LLM_CONCURRENCY * 2);
    for (let i = 0; i < nodeIds.length; i += window) {
      let failure: { error: unknown } | undefined;
      await Promise.all(
        nodeIds.slice(i, i + window).map(async (nodeId) => {
          try {
            await synthesizeOne(ctx, nodeId, stats, signal);
          } catch (error) {
            if (!failure) {
              failure = { error };
              stop.abort(error);
            }
          }
        }),
      );
      if (failure) throw ctx.signal.aborted ? ctx.signal.reason : failure.error;
      const done = Math.min(i + window, nodeIds.length);
      await ctx.progress((done / nodeIds.length) * 100, `processing:${done}/${nodeIds.length}`);
    }
    return {
      ...stats,
      prompt_version: SYNTHESIS_PROMPT.version,
      llm: ctx.llm.meter.stats(),
      duration_ms: Math.round(performance.now() - started),
    };
  },
};

async function nodesToSynthesize(ctx: HandlerContext<'synthesize_node'>): Promise<string[]> {
  if (ctx.payload.node_id) return [ctx.payload.node_id];
  if (ctx.job.document_id) return ctx.outputs.listDocumentNodes();
  throw new HdError(
    'INVALID_INPUT',
    "synthesize_node needs debug.node_id, or a document_id to synthesise that document's nodes",
  );
}

async function synthesizeOne(
  ctx: HandlerContext<'synthesize_node'>,
  nodeId: string,
  stats: SynthesisStats,
  signal: AbortSignal,
): Promise<void> {
  const context = await ctx.outputs.getNodeContext(nodeId, CONTEXT_LIMITS);
  if (!context && !ctx.payload.node_id) {
    stats.gone += 1;
    return;
  }
  if (!context) {
    throw new HdError('INVALID_INPUT', `node ${nodeId} is not a node of this job's account`);
  }
  if (context.edges.length === 0) {
    stats.without_edges += 1;
    return;
  }
  const input = promptInput(context);
  const inputSha256 = fingerprint(ctx.llm.model, input);
  if (context.latest?.input_sha256 === inputSha256) {
    stats.unchanged += 1;
    return;
  }
  const prompt = SYNTHESIS_PROMPT;
  const answer = await ctx.llm.structured({
    task: prompt.task,
    schema: prompt.schema,
    system: prompt.system,
    user: prompt.user({ ...input, previous: context.latest?.content ?? null }),
    signal,
  });
  const synthesis: SynthesisInput = {
    content: storableString(answer.value.description.trim(), MAX_DESCRIPTION_CHARS),
    summary: storableString(answer.value.change_summary.trim(), MAX_SUMMARY_CHARS),
    sources: context.edges.flatMap((e) =>
      e.evidence.map((x) => ({
        interpretation_id: x.interpretation_id,
        chunk_id: x.chunk_id,
        document_id: x.document_id,
        edge_id: e.edge_id,
      })),
    ),
    model: answer.model,
    prompt_version: prompt.version,
    input_sha256: inputSha256,
    usage: { ...answer.usage },
  };
  const result = await ctx.outputs.recordSynthesis(nodeId, synthesis).catch((error: unknown) => {
    if ((error as { code?: unknown }).code !== NODE_NOT_FOUND) throw error;
    return undefined;
  });
  if (!result) {
    stats.gone += 1;
    return;
  }
  if (result.created) {
    stats.synthesized += 1;
    const kind = result.change_kind ?? 'unknown';
    stats.change_kinds[kind] = (stats.change_kinds[kind] ?? 0) + 1;
  } else {
    stats.unchanged += 1;
  }
}

function promptInput(context: NodeContext): Omit<NodeForPrompt, 'previous'> {
  return {
    label: context.node.label,
    node_type: context.node.node_type,
    relations: context.edges.map((e) => ({
      direction: e.direction,
      relation: e.relation.replace(/_/g, ' '),
      other_label: e.other_label,
      other_type: e.other_type,
      evidence_count: e.evidence_count,
      quotes: e.evidence.map((x) => x.quote).filter(Boolean),
    })),
  };
}

/**
 * Identifies what a synthesis is made from: prompt version, model and the node's shown
 * edges and evidence, but not the previous description (else every run would differ).
 */
function fingerprint(model: string, input: Omit<NodeForPrompt, 'previous'>): string {
  return createHash('sha256')
    .update(JSON.stringify([SYNTHESIS_PROMPT.version, model, input]))
    .digest('hex');
}
