import type { Config } from '../control-plane/config.ts';
import type { Logger } from '../control-plane/logger.ts';
import type { TenantStorage } from '../control-plane/storage/storage.ts';
import type { AssetRow, UpsertCounts } from '../control-plane/db/transport.ts';
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
}

export interface HandlerContext<K extends JobType> {
  job: LeasedJob;
  payload: JobPayload<K>;
  storage: TenantStorage;
  outputs: OutputWriter;
  /** Reports progress (rate-limited); throws LEASE_LOST/CANCELLED when the lease is gone. */
  progress(percent: number, step?: string): Promise<void>;
  log: Logger;
  /** Aborted on timeout, cancellation, lost lease or shutdown. */
  signal: AbortSignal;
  config: Config;
}

export type Stats = Record<string, unknown>;

export interface Handler<K extends JobType> {
  resources: Resources;
  run(ctx: HandlerContext<K>): Promise<Stats>;
}
