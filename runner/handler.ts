import type { Config } from '../control-plane/config.ts';
import type { Logger } from '../control-plane/logger.ts';
import type { TenantStorage } from '../control-plane/storage/storage.ts';
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
  NodeContext,
  SynthesisInput,
  SynthesisResult,
  UpsertCounts,
} from '../control-plane/db/transport.ts';
import type { ArtifactUploader } from './artifacts.ts';
import type { LlmClient } from './llm/client.ts';
import type { JobPayload, JobType, LeasedJob } from '../contract/jobs.ts';

/** What a job needs from the machine; the scheduler sizes slots and limits from it. */
export interface Resources {
  gpu: boolean;
  memoryMb: number;
  cpus: number;
  /** Wall-clock limit of one attempt. */
  timeoutMs: number;
}

/** Output writes bound to the job's lease; account_id comes from the job in SQL. */
export interface OutputWriter {
  upsertAssets(rows: readonly AssetRow[]): Promise<UpsertCounts>;
  /** The files of the job's document (its own account's rows only). */
  listDocumentFiles(): Promise<DocumentFile[]>;
  /** Replaces all chunks of the job's document at once (one transaction). */
  replaceChunks(chunks: readonly ChunkRow[]): Promise<ChunkWriteCounts>;
  // LLM stages (migration 00007); each is one SQL function, see ControlPlaneDb.
  countChunksToInterpret(promptVersion: string): Promise<{ total: number; pending: number }>;
  listChunksToInterpret(
    promptVersion: string,
    afterIndex: number,
    limit: number,
  ): Promise<ChunkToInterpret[]>;
  upsertInterpretations(rows: readonly InterpretationRow[]): Promise<UpsertCounts>;
  listDocumentInterpretations(afterIndex: number, limit: number): Promise<DocumentInterpretation[]>;
  writeDocumentGraph(graph: DocumentGraph): Promise<GraphWriteCounts>;
  listDocumentNodes(): Promise<string[]>;
  getNodeContext(
    nodeId: string,
    limits: { maxEdges: number; maxEvidence: number },
  ): Promise<NodeContext | undefined>;
  recordSynthesis(nodeId: string, synthesis: SynthesisInput): Promise<SynthesisResult>;
}

/**
 * The worker concept's steps, checked by hd_report_progress (00022). The runner reports
 * `initializing` before the handler starts; `completed` is set when the job completes.
 * `processing_pages` counts the pages of the file at hand, `processing` other units (files,
 * chunks, nodes), bare when no total is known.
 */
export type ProgressStep =
  | 'initializing'
  | 'downloading'
  | 'processing'
  | `processing_pages:${number}/${number}`
  | `processing:${number}/${number}`
  | 'postprocessing';

export interface HandlerContext<K extends JobType> {
  job: LeasedJob;
  payload: JobPayload<K>;
  storage: TenantStorage;
  /**
   * The job's scratch folder, removed after its outcome is recorded. Downloads land in it
   * under a UUID first (control-plane/storage), so the handler's own names never meet them.
   */
  workDir: string;
  outputs: OutputWriter;
  /** Stores result files under the job's own prefix of hd_outputs (runner/artifacts.ts). */
  artifacts: Pick<ArtifactUploader, 'upload'>;
  /**
   * Reports progress (rate-limited; a new step goes out at once), sent in the background
   * in order (runner/progress-sender.ts): a lease found gone (LEASE_LOST/CANCELLED) aborts
   * `signal`, another failure is thrown by the next call. The percent only rises within an
   * attempt: SQL ignores a lower one.
   */
  progress(percent: number, step?: ProgressStep): Promise<void>;
  log: Logger;
  /** Aborted on timeout, cancellation, lost lease or shutdown. */
  signal: AbortSignal;
  config: Config;
  /** Chat-completions client for this job (HD_LLM_*); its requests end with `signal`. */
  llm: LlmClient;
}

export type Stats = Record<string, unknown>;

export interface Handler<K extends JobType> {
  resources: Resources;
  run(ctx: HandlerContext<K>): Promise<Stats>;
}
