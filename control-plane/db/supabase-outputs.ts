import type {
  AssetRow,
  ChunkRow,
  ChunkToInterpret,
  ChunkWriteCounts,
  DocumentFile,
  DocumentGraph,
  DocumentInterpretation,
  GraphWriteCounts,
  InterpretationRow,
  NewJobLogLine,
  NodeContext,
  SynthesisInput,
  SynthesisResult,
  UpsertCounts,
} from './transport.ts';

/**
 * The lease-checked output writes and reads of the `supabase` transport, one `rpc()`
 * each to the SQL function the postgres transport calls with the same arguments.
 * Results are capped by PostgREST's max-rows (Supabase: 1000): paged reads ask for less.
 */
export abstract class SupabaseOutputCalls {
  abstract rpc<T>(fn: string, args: Record<string, unknown>): Promise<T>;

  async #first<T>(fn: string, args: Record<string, unknown>): Promise<T> {
    const [row] = await this.rpc<T[]>(fn, args);
    if (row === undefined) throw new Error(`no row returned by ${fn}`);
    return row;
  }

  appendJobLogs(jobId: string, leaseToken: string, lines: readonly NewJobLogLine[]) {
    return this.rpc<number>('hd_append_job_logs', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_lines: lines,
    });
  }

  upsertAssets(jobId: string, leaseToken: string, rows: readonly AssetRow[]) {
    return this.#first<UpsertCounts>('hd_upsert_assets', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_rows: rows,
    });
  }

  async listDocumentFiles(jobId: string, leaseToken: string): Promise<DocumentFile[]> {
    const rows = await this.rpc<DocumentFile[]>('hd_list_document_files', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
    });
    return rows.map((r) => ({
      ...r,
      size_bytes: r.size_bytes === null ? null : Number(r.size_bytes),
    }));
  }

  replaceDocumentChunks(jobId: string, leaseToken: string, chunks: readonly ChunkRow[]) {
    return this.#first<ChunkWriteCounts>('hd_replace_document_chunks', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_chunks: chunks,
    });
  }

  countChunksToInterpret(jobId: string, leaseToken: string, promptVersion: string) {
    return this.#first<{ total: number; pending: number }>('hd_count_chunks_to_interpret', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_prompt_version: promptVersion,
    });
  }

  listChunksToInterpret(
    jobId: string,
    leaseToken: string,
    promptVersion: string,
    afterIndex: number,
    limit: number,
  ) {
    return this.rpc<ChunkToInterpret[]>('hd_list_chunks_to_interpret', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_prompt_version: promptVersion,
      p_after_index: afterIndex,
      p_limit: limit,
    });
  }

  upsertInterpretations(jobId: string, leaseToken: string, rows: readonly InterpretationRow[]) {
    return this.#first<UpsertCounts>('hd_upsert_interpretations', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_rows: rows,
    });
  }

  listDocumentInterpretations(
    jobId: string,
    leaseToken: string,
    afterIndex: number,
    limit: number,
  ) {
    return this.rpc<DocumentInterpretation[]>('hd_list_document_interpretations', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_after_index: afterIndex,
      p_limit: limit,
    });
  }

  writeDocumentGraph(jobId: string, leaseToken: string, graph: DocumentGraph) {
    return this.#first<GraphWriteCounts>('hd_write_document_graph', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_nodes: graph.nodes,
      p_edges: graph.edges,
      ...(graph.max_evidence_per_edge ? { p_max_evidence: graph.max_evidence_per_edge } : {}),
    });
  }

  async listDocumentNodes(jobId: string, leaseToken: string) {
    const rows = await this.rpc<{ node_id: string }[]>('hd_list_document_nodes', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
    });
    return rows.map((r) => r.node_id);
  }

  async getNodeContext(
    jobId: string,
    leaseToken: string,
    nodeId: string,
    limits: { maxEdges: number; maxEvidence: number },
  ) {
    const context = await this.rpc<NodeContext | null>('hd_get_node_context', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_node_id: nodeId,
      p_max_edges: limits.maxEdges,
      p_max_evidence: limits.maxEvidence,
    });
    return context ?? undefined;
  }

  recordSynthesis(jobId: string, leaseToken: string, nodeId: string, synthesis: SynthesisInput) {
    return this.#first<SynthesisResult>('hd_record_synthesis', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_node_id: nodeId,
      p_synthesis: synthesis,
    });
  }
}
