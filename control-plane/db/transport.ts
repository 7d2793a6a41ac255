import type { Job } from '../../contract/jobs.ts';

export interface ClaimOptions {
  workerId: string;
  jobTypes?: readonly string[] | undefined;
  limit?: number;
  leaseSeconds: number;
  /** Claim exactly this job (ignores run_after), for `hd-runner run --job-id`. */
  jobId?: string;
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

export interface ListJobsFilter {
  accountId?: string | undefined;
  status?: string | undefined;
  jobType?: string | undefined;
  limit?: number | undefined;
}

export type WakeReason = { kind: 'queued'; jobType: string } | { kind: 'cancelled'; jobId: string };

/**
 * Everything the worker does to the control plane, one method per SQL function.
 * Lease-checked calls throw an error with SQLSTATE HDL01 when the lease is gone
 * (toHdError turns it into LEASE_LOST or CANCELLED).
 */
export interface ControlPlaneDb {
  claimJobs(options: ClaimOptions): Promise<Job[]>;
  heartbeat(jobId: string, leaseToken: string, leaseSeconds: number): Promise<Date>;
  reportProgress(jobId: string, leaseToken: string, percent: number, step?: string): Promise<void>;
  completeJob(jobId: string, leaseToken: string, stats: Record<string, unknown>): Promise<Job>;
  failJob(jobId: string, leaseToken: string, failure: Failure): Promise<Job>;
  releaseJob(jobId: string, leaseToken: string): Promise<Job>;
  setContainerId(jobId: string, leaseToken: string, containerId: string): Promise<void>;
  reapExpiredLeases(): Promise<Job[]>;
  enqueueJob(request: EnqueueRequest): Promise<Job>;
  requeueJob(jobId: string): Promise<Job>;
  cancelJob(jobId: string, reason?: string): Promise<Job>;
  getJob(jobId: string): Promise<Job | undefined>;
  listJobs(filter: ListJobsFilter): Promise<Job[]>;
  upsertAssets(jobId: string, leaseToken: string, rows: readonly AssetRow[]): Promise<UpsertCounts>;
  /** Subscribes to queue wake-ups; resolves to an unsubscribe function. */
  listen(onWake: (reason: WakeReason) => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
}
