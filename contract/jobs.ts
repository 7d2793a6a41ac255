import { z } from 'zod';

/** Job types this version of hd-runner handles, in pipeline order. */
export const JOB_TYPES = ['import_assets_jsonl'] as const;
export type JobType = (typeof JOB_TYPES)[number];

/** Job types of the worker contract that later versions add (see the issues). */
export const PLANNED_JOB_TYPES = [
  'extract_text',
  'extract_interpretations',
  'text2kg',
  'synthesize_node',
] as const;

export function isJobType(value: string): value is JobType {
  return (JOB_TYPES as readonly string[]).includes(value);
}

export const JOB_STATUSES = ['queued', 'running', 'completed', 'failed'] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];

export const DEFAULT_BUCKET = 'hd_uploads_raw';

/** A row of public.hd_ingestion_jobs as the queue functions return it. */
export interface Job {
  id: string;
  account_id: string;
  document_id: string | null;
  job_type: string;
  status: JobStatus;
  attempts: number;
  max_attempts: number;
  priority: number;
  error: string | null;
  error_code: string | null;
  error_details: Record<string, unknown> | null;
  debug: Record<string, unknown>;
  run_after: Date;
  lease_token: string | null;
  lease_expires_at: Date | null;
  locked_by: string | null;
  progress_percent: number;
  progress_step: string | null;
  container_id: string | null;
  created_at: Date;
  updated_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
}

/** A job together with the lease that lets us act on it. */
export interface LeasedJob extends Job {
  lease_token: string;
}

/** Payload (`debug`) schemas, one per job type. Unknown keys (e.g. stats) pass through. */
export const PAYLOAD_SCHEMAS = {
  import_assets_jsonl: z.looseObject({
    bucket: z.string().min(1).default(DEFAULT_BUCKET),
    path: z.string().min(1, 'path is required'),
    format: z.literal('jsonl').default('jsonl'),
    /** Fail the whole job (writing nothing) on the first invalid line. */
    strict: z.boolean().default(false),
  }),
} satisfies { [K in JobType]: z.ZodType };

export type JobPayload<K extends JobType> = z.infer<(typeof PAYLOAD_SCHEMAS)[K]>;
