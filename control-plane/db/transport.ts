import type { ClaimedJob, Job } from '../../contract/jobs.ts';

/** Who calls the reaper: a scheduler's worker id, its reap interval and its lease length. */
export interface SchedulerReport {
  workerId: string;
  everySeconds: number;
  leaseSeconds: number;
}

export interface ClaimOptions {
  workerId: string;
  jobTypes?: readonly string[] | undefined;
  limit?: number;
  leaseSeconds: number;
  /** Claim exactly this job (ignores run_after), for `hd-runner run --job-id`. */
  jobId?: string;
  /** Most jobs running at once for an account without a row in hd_account_limits. */
  accountMaxRunning?: number | undefined;
}

export interface Failure {
  code: string;
  message: string;
  retryable: boolean;
  details?: Record<string, unknown> | undefined;
}

export interface EnqueueRequest {
  accountId: string;
  jobType: string;
  debug: Record<string, unknown>;
  documentId?: string | null | undefined;
  priority?: number | undefined;
  maxAttempts?: number | undefined;
  runAfter?: Date | undefined;
}

export interface AssetRow {
  title: string;
  source_type: string;
  source_ref: string;
  metadata: Record<string, unknown>;
}

export interface UpsertCounts {
  inserted: number;
  updated: number;
  unchanged: number;
}

/** A row of hd_document_files, as hd_list_document_files returns it. */
export interface DocumentFile {
  id: string;
  bucket: string;
  storage_path: string;
  mime_type: string | null;
  size_bytes: number | null;
}

/** One chunk of a document's text (hd_asset_chunks); account and document come from the job. */
export interface ChunkRow {
  chunk_index: number;
  file_id: string | null;
  content: string;
  page_start: number | null;
  page_end: number | null;
  char_start: number;
  char_end: number;
  /** Transcripts: when the chunk was said, in seconds from the start (00020). */
  seconds_start?: number | undefined;
  seconds_end?: number | undefined;
  content_sha256: string;
}

export interface ChunkWriteCounts extends UpsertCounts {
  /** Chunks past the new end, left by an earlier run that yielded more. */
  deleted: number;
}

/** A chunk still to be interpreted (hd_list_chunks_to_interpret). */
export interface ChunkToInterpret {
  chunk_id: string;
  chunk_index: number;
  content: string;
  chunk_sha256: string;
  page_start: number | null;
  page_end: number | null;
}

/** One hd_interpretations row to upsert; account and document come from the job. */
export interface InterpretationRow {
  chunk_id: string;
  /** Hash of the chunk content the model saw (a changed chunk is interpreted again). */
  chunk_sha256: string;
  prompt_version: string;
  model: string;
  payload: Record<string, unknown>;
  usage: Record<string, unknown>;
}

/** The current interpretation of one chunk of the job's document. */
export interface DocumentInterpretation {
  interpretation_id: string;
  chunk_id: string;
  chunk_index: number;
  prompt_version: string;
  payload: Record<string, unknown>;
}

/** A document's graph for hd_write_document_graph; nodes are named by (type, normalised label). */
export interface DocumentGraph {
  nodes: { node_type: string; label: string; normalized_label: string }[];
  edges: {
    source_type: string;
    source_key: string;
    relation: string;
    target_type: string;
    target_key: string;
    /** score: 0..1, how directly the quote supports the edge; the strongest are kept. */
    evidence: { interpretation_id: string; quote: string; score?: number }[];
  }[];
  /** Evidence items an edge keeps (the strongest); the SQL's default 20 when absent. */
  max_evidence_per_edge?: number;
}

export interface GraphWriteCounts {
  nodes_inserted: number;
  nodes_existing: number;
  edges_inserted: number;
  edges_updated: number;
  edges_unchanged: number;
  edges_removed: number;
  /** Nodes left without an edge by this write, deleted. */
  nodes_removed: number;
  /** Evidence items of this document not stored (weaker than the kept ones). */
  evidence_dropped: number;
}

/** What hd_get_node_context returns: a node, its strongest edges, its latest synthesis. */
export interface NodeContext {
  node: { id: string; label: string; node_type: string; canonical_description: string | null };
  edges: {
    edge_id: string;
    direction: 'out' | 'in';
    relation: string;
    other_label: string;
    other_type: string;
    evidence_count: number;
    evidence: { document_id: string; chunk_id: string; interpretation_id: string; quote: string }[];
  }[];
  latest: {
    id: string;
    version: number;
    content: string;
    input_sha256: string | null;
    prompt_version: string | null;
  } | null;
}

export interface SynthesisInput {
  content: string;
  /** The model's account of what changed against the previous version (hd_dynamics.summary). */
  summary: string;
  sources: { interpretation_id: string; chunk_id: string; document_id: string; edge_id: string }[];
  model: string;
  prompt_version: string;
  input_sha256: string;
  usage: Record<string, unknown>;
}

export interface SynthesisResult {
  synthesis_id: string;
  version: number;
  /** False when the latest version already had the same inputs (nothing written). */
  created: boolean;
  change_kind: string | null;
}

/** A runner output line to append to hd_job_logs (hd_append_job_logs). */
export interface NewJobLogLine {
  /** Position within the attempt; a seq already stored is skipped (a retried batch). */
  seq: number;
  level: string;
  message: string;
  fields: Record<string, unknown> | null;
  /** ISO time the runner logged it (or the scheduler received it). */
  logged_at: string;
}

/** A stored hd_job_logs line. */
export interface JobLogLine {
  attempt: number;
  seq: number;
  logged_at: Date;
  level: string;
  message: string;
  fields: Record<string, unknown> | null;
}

export interface ListJobsFilter {
  accountId?: string | undefined;
  status?: string | undefined;
  jobType?: string | undefined;
  /** Ids from [0] to [1], inclusive: the UUIDs that start with a given prefix. */
  idRange?: readonly [string, string] | undefined;
  limit?: number | undefined;
}

export type WakeReason = { kind: 'queued'; jobType: string } | { kind: 'cancelled'; jobId: string };

/**
 * Everything the worker does to the control plane, one method per SQL function.
 * Lease-checked calls throw an error with SQLSTATE HDL01 when the lease is gone
 * (toHdError turns it into LEASE_LOST or CANCELLED).
 */
/** What the scheduler records of a URL input it fetched and stored (debug.url_input). */
export interface StoredUrlInput {
  bucket: string;
  path: string;
  bytes: number;
  sha256: string;
  content_type: string;
  declared_content_type: string | null;
  fetched_from: string;
  redirects: number;
}

export interface ControlPlaneDb {
  /** hd_claim_jobs: whole rows (`jobId`: that job, for a hand-run of one job). */
  claimJobs(options: ClaimOptions): Promise<Job[]>;
  /** hd_claim_leases: the scheduler's fair claim, only the columns it needs. */
  claimLeases(options: Omit<ClaimOptions, 'jobId'>): Promise<ClaimedJob[]>;
  heartbeat(jobId: string, leaseToken: string, leaseSeconds: number): Promise<Date>;
  /**
   * hd_create_job_role: a login role for the leased job's runner (postgres transport),
   * member of hd_runner, valid until `validUntil`; resolves to its name.
   */
  createJobRole(
    jobId: string,
    leaseToken: string,
    password: string,
    validUntil: Date,
  ): Promise<string>;
  /** hd_drop_job_roles: drops the roles of jobs no longer running (of `jobId`, or all). */
  dropJobRoles(jobId?: string): Promise<number>;
  /**
   * hd_create_warm_role: a login role for a warm runner, made before its job exists
   * (postgres transport): it reaches no job until bound to one; resolves to its name.
   */
  createWarmRole(password: string, validUntil: Date): Promise<string>;
  /**
   * hd_bind_warm_role: binds an unbound warm role to the leased job its runner is handed,
   * valid until `validUntil` from then on.
   */
  bindWarmRole(role: string, jobId: string, leaseToken: string, validUntil: Date): Promise<void>;
  /** hd_drop_warm_role: drops an unbound warm role (its runner ended without a job). */
  dropWarmRole(role: string): Promise<boolean>;
  /** hd_adopt_lease: renews a handed-over lease and reads its job (a runner's first call). */
  adoptLease(jobId: string, leaseToken: string, leaseSeconds: number): Promise<Job>;
  reportProgress(jobId: string, leaseToken: string, percent: number, step?: string): Promise<void>;
  completeJob(jobId: string, leaseToken: string, stats: Record<string, unknown>): Promise<Job>;
  /** hd_complete_jobs: completes claimed jobs together, each fenced by its own lease. */
  completeJobs(
    leases: readonly { jobId: string; leaseToken: string }[],
    stats: Record<string, unknown>,
  ): Promise<{ jobId: string; completed: boolean }[]>;
  failJob(jobId: string, leaseToken: string, failure: Failure): Promise<Job>;
  releaseJob(jobId: string, leaseToken: string): Promise<Job>;
  /**
   * hd_record_url_input (scheduler only): where the leased job's URL input was stored
   * (`info.bucket`, `info.path` under the job's url-inputs prefix) goes into debug.url_input.
   */
  recordUrlInput(jobId: string, leaseToken: string, info: StoredUrlInput): Promise<Job>;
  setContainerId(jobId: string, leaseToken: string, containerId: string): Promise<void>;
  /**
   * hd_reap_expired_leases. A scheduler passes `reporter`: the call is also its report-in,
   * by which the reaper spares the leases of a scheduler cut off from the database (00019).
   */
  reapExpiredLeases(reporter?: SchedulerReport): Promise<Job[]>;
  enqueueJob(request: EnqueueRequest): Promise<Job>;
  requeueJob(jobId: string): Promise<Job>;
  cancelJob(jobId: string, reason?: string): Promise<Job>;
  getJob(jobId: string): Promise<Job | undefined>;
  listJobs(filter: ListJobsFilter): Promise<Job[]>;
  /**
   * hd_append_job_logs: lines of the attempt the lease belongs to, also just after that
   * lease ended (the runner settled its job itself). Resolves to the lines inserted.
   */
  appendJobLogs(
    jobId: string,
    leaseToken: string,
    lines: readonly NewJobLogLine[],
  ): Promise<number>;
  /** The job's last `limit` hd_job_logs lines, oldest first (by attempt, seq). */
  listJobLogs(jobId: string, limit: number): Promise<JobLogLine[]>;
  upsertAssets(jobId: string, leaseToken: string, rows: readonly AssetRow[]): Promise<UpsertCounts>;
  /** hd_list_document_files: the leased job's document files, its own account only. */
  listDocumentFiles(jobId: string, leaseToken: string): Promise<DocumentFile[]>;
  /** hd_replace_document_chunks: all of the document's chunks, in one transaction. */
  replaceDocumentChunks(
    jobId: string,
    leaseToken: string,
    chunks: readonly ChunkRow[],
  ): Promise<ChunkWriteCounts>;
  /** hd_count_chunks_to_interpret: the document's chunks, and those not yet interpreted. */
  countChunksToInterpret(
    jobId: string,
    leaseToken: string,
    promptVersion: string,
  ): Promise<{ total: number; pending: number }>;
  /** hd_list_chunks_to_interpret: next page (by chunk_index) of chunks not yet interpreted. */
  listChunksToInterpret(
    jobId: string,
    leaseToken: string,
    promptVersion: string,
    afterIndex: number,
    limit: number,
  ): Promise<ChunkToInterpret[]>;
  /** hd_upsert_interpretations: keyed (account, chunk, prompt version). */
  upsertInterpretations(
    jobId: string,
    leaseToken: string,
    rows: readonly InterpretationRow[],
  ): Promise<UpsertCounts>;
  /** hd_list_document_interpretations: the document's current interpretations, paged. */
  listDocumentInterpretations(
    jobId: string,
    leaseToken: string,
    afterIndex: number,
    limit: number,
  ): Promise<DocumentInterpretation[]>;
  /** hd_write_document_graph: nodes and this document's edge evidence, one transaction. */
  writeDocumentGraph(
    jobId: string,
    leaseToken: string,
    graph: DocumentGraph,
  ): Promise<GraphWriteCounts>;
  /** hd_list_document_nodes: nodes on edges with evidence from the job's document. */
  listDocumentNodes(jobId: string, leaseToken: string): Promise<string[]>;
  /** hd_get_node_context: undefined when the node is not the job's account's. */
  getNodeContext(
    jobId: string,
    leaseToken: string,
    nodeId: string,
    limits: { maxEdges: number; maxEvidence: number },
  ): Promise<NodeContext | undefined>;
  /** hd_record_synthesis: next version + hd_dynamics row + canonical_description. */
  recordSynthesis(
    jobId: string,
    leaseToken: string,
    nodeId: string,
    synthesis: SynthesisInput,
  ): Promise<SynthesisResult>;
  /** Subscribes to queue wake-ups; resolves to an unsubscribe function. */
  listen(onWake: (reason: WakeReason) => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
}
