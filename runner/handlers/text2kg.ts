import type { DocumentGraph } from '../../control-plane/db/transport.ts';
import type { Handler } from '../handler.ts';
import { interpretationSchema } from '../llm/prompts.ts';
import { requireDocument } from './extract_interpretations.ts';

/** Interpretations read per page. */
const PAGE_SIZE = 500;
const MAX_TYPE_CHARS = 50;
const MAX_RELATION_CHARS = 100;

// Invisible characters that make two spellings of one name differ: soft hyphen,
// zero-width space/joiners, word joiner, BOM.
const INVISIBLE = /[\u00AD\u200B-\u200D\u2060\uFEFF]/g;
// Quotes and brackets around a name ("„Acme“", "(Acme)") and trailing sentence marks.
const WRAPPING = /^[\s"'“”„‘’‚«»‹›()[\]{}]+|[\s"'“”„‘’‚«»‹›()[\]{}.,;:!?]+$/gu;

/**
 * The identity of a node label within an account: Unicode compatibility form (NFKC:
 * full-width letters, ligatures, non-breaking spaces), case folded (upper then lower, so
 * "Straße" and "STRASSE" meet), invisible characters removed, whitespace collapsed,
 * wrapping quotes and trailing punctuation dropped. The unique key of hd_kg_nodes is
 * (account_id, node_type, normalized_label).
 */
export function normalizeLabel(label: string): string {
  return label
    .normalize('NFKC')
    .replace(INVISIBLE, '')
    .toUpperCase()
    .toLowerCase()
    .normalize('NFKC')
    .replace(/\s+/gu, ' ')
    .replace(WRAPPING, '')
    .trim();
}

/** Node types and relations are identifiers: normalised, spaces as underscores. */
export function normalizeIdentifier(value: string, max: number, fallback: string): string {
  const id = normalizeLabel(value).replace(/ /g, '_').slice(0, max);
  return id || fallback;
}

/** The label shown for a node: as written, with whitespace and invisible characters tidied. */
function displayLabel(label: string): string {
  return label.normalize('NFC').replace(INVISIBLE, '').replace(/\s+/gu, ' ').trim();
}

/**
 * How directly a quote supports an edge, 0..1: half for each end it names (by normalised
 * label). A quote that names both is the model's evidence in the passage's own words; one
 * that names neither is the model's reading. Edges keep their strongest evidence only.
 */
export function quoteScore(
  quote: string,
  source: { normalized_label: string },
  target: { normalized_label: string },
): number {
  const text = normalizeLabel(quote);
  return (
    (text.includes(source.normalized_label) ? 0.5 : 0) +
    (text.includes(target.normalized_label) ? 0.5 : 0)
  );
}

/**
 * text2kg: turns the relations of the job's document's interpretations into graph nodes
 * (one per normalised label and type within the account) and edges (with evidence
 * pointing at the interpretation and chunk), written in one transaction. No model call:
 * re-runs and overlapping documents converge to the same rows. The SQL keeps the strongest
 * HD_KG_MAX_EVIDENCE_PER_EDGE items per edge, replaces this document's earlier evidence and
 * deletes edges and nodes left without any (migration 00016).
 */
export const text2kg: Handler<'text2kg'> = {
  resources: { gpu: false, memoryMb: 1024, cpus: 1, timeoutMs: 60 * 60 * 1000 },

  async run(ctx) {
    const started = performance.now();
    const documentId = requireDocument(ctx.job, 'text2kg');
    await ctx.progress(0, 'processing');
    const graph: DocumentGraph = { nodes: [], edges: [] };
    const nodes = new Map<string, DocumentGraph['nodes'][number]>();
    const edges = new Map<string, DocumentGraph['edges'][number]>();
    const stats = { document_id: documentId, interpretations: 0, invalid: 0, relations: 0 };
    const skipped = { empty_label: 0, self_loop: 0 };

    const node = (label: string, type: string) => {
      const node_type = normalizeIdentifier(type, MAX_TYPE_CHARS, 'other');
      const normalized_label = normalizeLabel(label);
      if (!normalized_label) return undefined;
      const key = `${node_type}\u0000${normalized_label}`;
      if (!nodes.has(key))
        nodes.set(key, { node_type, label: displayLabel(label), normalized_label });
      return nodes.get(key)!;
    };

    let after = -1;
    for (;;) {
      const page = await ctx.outputs.listDocumentInterpretations(after, PAGE_SIZE);
      if (page.length === 0) break;
      after = page.at(-1)!.chunk_index;
      for (const row of page) {
        stats.interpretations += 1;
        const parsed = interpretationSchema.safeParse(row.payload);
        if (!parsed.success) {
          stats.invalid += 1;
          continue;
        }
        for (const r of parsed.data.relations) {
          stats.relations += 1;
          const source = node(r.source, r.source_type);
          const target = node(r.target, r.target_type);
          const relation = normalizeIdentifier(r.relation, MAX_RELATION_CHARS, '');
          if (!source || !target || !relation) {
            skipped.empty_label += 1;
            continue;
          }
          if (source === target) {
            skipped.self_loop += 1;
            continue;
          }
          const key = [source.node_type, source.normalized_label, relation, target.node_type]
            .concat(target.normalized_label)
            .join('\u0000');
          let edge = edges.get(key);
          if (!edge) {
            edge = {
              source_type: source.node_type,
              source_key: source.normalized_label,
              relation,
              target_type: target.node_type,
              target_key: target.normalized_label,
              evidence: [],
            };
            edges.set(key, edge);
          }
          const score = quoteScore(r.quote, source, target);
          const seen = edge.evidence.find((e) => e.interpretation_id === row.interpretation_id);
          if (!seen)
            edge.evidence.push({ interpretation_id: row.interpretation_id, quote: r.quote, score });
          else if (score > (seen.score ?? 0)) Object.assign(seen, { quote: r.quote, score });
        }
      }
      await ctx.progress(0);
    }

    // Only nodes that take part in an edge: a name without a relation says nothing yet.
    const used = new Set<DocumentGraph['nodes'][number]>();
    for (const e of edges.values()) {
      used.add(nodes.get(`${e.source_type}\u0000${e.source_key}`)!);
      used.add(nodes.get(`${e.target_type}\u0000${e.target_key}`)!);
    }
    graph.nodes = [...used];
    graph.edges = [...edges.values()];
    graph.max_evidence_per_edge = ctx.config.HD_KG_MAX_EVIDENCE_PER_EDGE;
    await ctx.progress(50, 'postprocessing');
    const written = await ctx.outputs.writeDocumentGraph(graph);
    return {
      ...stats,
      skipped,
      nodes: graph.nodes.length,
      edges: graph.edges.length,
      written,
      duration_ms: Math.round(performance.now() - started),
    };
  },
};
