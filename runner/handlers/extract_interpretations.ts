import { HdError } from '../../contract/errors.ts';
import type { LeasedJob } from '../../contract/jobs.ts';
import type { ChunkToInterpret, UpsertCounts } from '../../control-plane/db/transport.ts';
import type { Handler, HandlerContext } from '../handler.ts';
import { INTERPRETATION_PROMPT, type Interpretation } from '../llm/prompts.ts';
import { storableString } from '../sanitize-metadata.ts';

/** Chunks read per page; the LLM client bounds how many are asked at once. */
const PAGE_SIZE = 50;

// What is kept of one answer: a model can be verbose, the row should not be.
const LIMITS = { items: 50, relations: 100, text: 1000, label: 200, quote: 500 };

interface InterpretStats {
  document_id: string;
  prompt_version: string;
  chunks: number;
  already_done: number;
  interpreted: number;
  statements: number;
  rules: number;
  relations: number;
  written: UpsertCounts;
}

/**
 * extract_interpretations: asks the model, chunk by chunk, for the statements, rules and
 * relations of the job's document, and stores each answer as soon as it arrives. Chunks
 * already interpreted (same prompt version, same content) are skipped, so a retry after a
 * crash, timeout or cancellation asks only about the rest and a re-run asks nothing.
 */
export const extractInterpretations: Handler<'extract_interpretations'> = {
  resources: { gpu: false, memoryMb: 512, cpus: 1, timeoutMs: 4 * 60 * 60 * 1000 },

  async run(ctx) {
    const started = performance.now();
    const prompt = INTERPRETATION_PROMPT;
    const documentId = requireDocument(ctx.job, 'extract_interpretations');
    const { total, pending } = await ctx.outputs.countChunksToInterpret(prompt.version);
    const stats: InterpretStats = {
      document_id: documentId,
      prompt_version: prompt.version,
      chunks: total,
      already_done: total - pending,
      interpreted: 0,
      statements: 0,
      rules: 0,
      relations: 0,
      written: { inserted: 0, updated: 0, unchanged: 0 },
    };
    ctx.log.info({ document_id: stats.document_id, total, pending }, 'interpreting chunks');
    const report = () => {
      const done = stats.already_done + stats.interpreted;
      return ctx.progress(total === 0 ? 100 : (done / total) * 100, `processing:${done}/${total}`);
    };
    await report();

    // The first failing chunk stops the others (their requests are aborted): what was
    // stored stays, and the retry continues from there.
    const stop = new AbortController();
    const signal = AbortSignal.any([ctx.signal, stop.signal]);
    let after = -1;
    for (;;) {
      const page = await ctx.outputs.listChunksToInterpret(prompt.version, after, PAGE_SIZE);
      if (page.length === 0) break;
      after = page.at(-1)!.chunk_index;
      let failure: { error: unknown } | undefined;
      await Promise.all(
        page.map(async (chunk) => {
          try {
            await interpretChunk(ctx, chunk, stats, signal);
            await report();
          } catch (error) {
            if (!failure) {
              failure = { error };
              stop.abort(error);
            }
          }
        }),
      );
      if (failure) throw ctx.signal.aborted ? ctx.signal.reason : failure.error;
    }
    return {
      ...stats,
      llm: ctx.llm.meter.stats(),
      duration_ms: Math.round(performance.now() - started),
    };
  },
};

async function interpretChunk(
  ctx: HandlerContext<'extract_interpretations'>,
  chunk: ChunkToInterpret,
  stats: InterpretStats,
  signal: AbortSignal,
): Promise<void> {
  const prompt = INTERPRETATION_PROMPT;
  const answer = await ctx.llm.structured({
    task: prompt.task,
    schema: prompt.schema,
    system: prompt.system,
    user: prompt.user(chunk),
    signal,
  });
  const payload = boundInterpretation(answer.value);
  const counts = await ctx.outputs.upsertInterpretations([
    {
      chunk_id: chunk.chunk_id,
      chunk_sha256: chunk.chunk_sha256,
      prompt_version: prompt.version,
      model: answer.model,
      payload,
      usage: { ...answer.usage },
    },
  ]);
  stats.interpreted += 1;
  stats.statements += payload.statements.length;
  stats.rules += payload.rules.length;
  stats.relations += payload.relations.length;
  stats.written.inserted += counts.inserted;
  stats.written.updated += counts.updated;
  stats.written.unchanged += counts.unchanged;
}

/** Trims, caps and cleans an answer (jsonb cannot hold NUL); drops half-empty relations. */
export function boundInterpretation(value: Interpretation): Interpretation {
  const clean = (max: number) => (s: string) => storableString(s.replace(/\s+/g, ' ').trim(), max);
  return {
    statements: value.statements.map(clean(LIMITS.text)).filter(Boolean).slice(0, LIMITS.items),
    rules: value.rules.map(clean(LIMITS.text)).filter(Boolean).slice(0, LIMITS.items),
    relations: value.relations
      .map((r) => ({
        source: clean(LIMITS.label)(r.source),
        source_type: clean(LIMITS.label)(r.source_type),
        relation: clean(LIMITS.label)(r.relation),
        target: clean(LIMITS.label)(r.target),
        target_type: clean(LIMITS.label)(r.target_type),
        quote: clean(LIMITS.quote)(r.quote),
      }))
      .filter((r) => r.source && r.relation && r.target)
      .slice(0, LIMITS.relations),
  };
}

/** The document-scoped stages work on the job row's document_id, never on input content. */
export function requireDocument(job: LeasedJob, jobType: string): string {
  if (!job.document_id) {
    throw new HdError(
      'INVALID_INPUT',
      `${jobType} needs the job's document_id (the document whose chunks it reads); this job has none`,
    );
  }
  return job.document_id;
}
