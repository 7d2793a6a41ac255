import { z } from 'zod';
import { webhookUrlSchema } from './webhook-url.ts';

/** Job types this version of hd-runner handles, in pipeline order. */
export const JOB_TYPES = [
  'import_assets_jsonl',
  'extract_text',
  'extract_interpretations',
  'text2kg',
  'synthesize_node',
] as const;
export type JobType = (typeof JOB_TYPES)[number];

/** Job types of the worker contract that later versions add (see the issues). */
export const PLANNED_JOB_TYPES = [] as const;

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

/**
 * What a scheduler's claim returns (hd_claim_leases, migration 00021): the columns it needs
 * to start and fence a runner, not the whole row; the runner reads its job itself.
 */
export type ClaimedJob = Pick<
  LeasedJob,
  | 'id'
  | 'account_id'
  | 'document_id'
  | 'job_type'
  | 'attempts'
  | 'max_attempts'
  | 'priority'
  | 'debug'
  | 'run_after'
  | 'started_at'
  | 'lease_token'
  | 'lease_expires_at'
>;

/**
 * Pipelines: a payload may name the stages that follow it. On completion the queue
 * (hd_complete_job, migration 00007) enqueues the first of them once for the same
 * account and document, passing the rest on.
 */
export const PIPELINE_STAGES = ['extract_interpretations', 'text2kg', 'synthesize_node'] as const;
export const nextStagesSchema = z
  .array(z.enum(PIPELINE_STAGES))
  .max(PIPELINE_STAGES.length)
  .optional();

/**
 * The storage objects a job type reads: the payload's `bucket`/`path`, or the files of
 * its document (hd_document_files). A scheduler grants a runner these and no others.
 */
export const JOB_INPUTS: { [K in JobType]: 'payload_object' | 'document_files' | 'none' } = {
  import_assets_jsonl: 'payload_object',
  extract_text: 'document_files',
  extract_interpretations: 'none',
  text2kg: 'none',
  synthesize_node: 'none',
};

/**
 * Inputs by URL: a job may name `url` instead of a storage `path`. The scheduler fetches it
 * (scheduler/url-input.ts: public addresses only, size and time limits) and stores it under
 * the account's prefix first, recording where in `url_input` (hd_record_url_input,
 * migration 00018); the runner then reads that stored object like any other.
 */
// The same rule as a tenant's webhook URL: http(s), no credentials or spaces, ≤ 2048.
export const inputUrlSchema = webhookUrlSchema;

/** Where the scheduler stored a URL input, and what it found (debug.url_input). */
export const storedUrlInputSchema = z.looseObject({
  bucket: z.string().min(1),
  path: z.string().min(1),
  bytes: z.number().int().nonnegative(),
  sha256: z.string(),
  content_type: z.string(),
});

/** A URL as logs and errors show it: without query and fragment (they may carry a token). */
export function urlForLog(url: string | URL): string {
  const u = new URL(url);
  return `${u.origin}${u.pathname}`;
}

/** Job types whose input may be a URL: those that read storage objects (JOB_INPUTS). */
export function takesUrlInput(type: JobType): boolean {
  return JOB_INPUTS[type] !== 'none';
}

/** The stored object a payload names: its own path, or where its URL input was stored. */
export function payloadObject(payload: {
  bucket: string;
  path?: string | undefined;
  url_input?: { bucket: string; path: string } | undefined;
}): { bucket: string; key: string } | undefined {
  if (payload.path !== undefined) return { bucket: payload.bucket, key: payload.path };
  if (payload.url_input) return { bucket: payload.url_input.bucket, key: payload.url_input.path };
  return undefined;
}

/** The chunker would cut an overlap to half the target: refused instead, to say so. */
function overlapAtMostHalf<
  T extends z.ZodType<{ chunk_target_chars?: number; chunk_overlap_chars?: number }>,
>(schema: T) {
  return schema.refine(
    (p) =>
      p.chunk_target_chars === undefined ||
      p.chunk_overlap_chars === undefined ||
      p.chunk_overlap_chars <= p.chunk_target_chars / 2,
    { path: ['chunk_overlap_chars'], message: 'at most half of chunk_target_chars' },
  );
}

/** Payload (`debug`) schemas, one per job type. Unknown keys (e.g. stats) pass through. */
export const PAYLOAD_SCHEMAS = {
  import_assets_jsonl: z
    .looseObject({
      bucket: z.string().min(1).default(DEFAULT_BUCKET),
      /** The JSONL object under the account's prefix; or `url` instead. */
      path: z.string().min(1, 'path must not be empty').optional(),
      url: inputUrlSchema.optional(),
      url_input: storedUrlInputSchema.optional(),
      format: z.literal('jsonl').default('jsonl'),
      /** Fail the whole job (writing nothing) on the first invalid line. */
      strict: z.boolean().default(false),
    })
    .refine((p) => (p.path === undefined) !== (p.url === undefined), {
      path: ['path'],
      message: 'path is required (or url instead; not both)',
    }),
  /** Files come from hd_document_files of the job's document_id; these only tune it. */
  extract_text: overlapAtMostHalf(
    z.looseObject({
      /** Tesseract languages, e.g. `deu+eng`; default HD_OCR_LANGUAGES. */
      ocr_languages: z
        .string()
        .regex(/^[A-Za-z_]{3,20}(\+[A-Za-z_]{3,20}){0,7}$/, 'must look like deu+eng')
        .optional(),
      /** `auto`: OCR pages and images without a text layer; `off`: never run OCR. */
      ocr: z.enum(['auto', 'off']).default('auto'),
      /**
       * Where a PDF page's text comes from: `native` its text layer only (as ocr off),
       * `ocr` OCR of every page, `both` the text layer with OCR where it has none (as ocr
       * auto, the default). Wins over `ocr`, which may not say `off` beside ocr or both.
       */
      extraction_method: z.enum(['native', 'ocr', 'both']).optional(),
      /** Stored results besides the chunks (artifacts in hd_outputs); none by default. */
      include_texts: z.boolean().default(false),
      include_images: z.boolean().default(false),
      include_previews: z.boolean().default(false),
      /** A zip of the job's other artifacts; default: when any of the above is asked for. */
      include_archive: z.boolean().optional(),
      /** Resolution of page images (include_images), lower for pages past 25 MP. */
      image_dpi: z.number().int().min(36).max(300).default(150),
      /** Most bytes the job's artifacts take together (SQL refuses more); default 1 GiB. */
      max_output_bytes: z
        .number()
        .int()
        .min(1)
        .max(100 * 1024 ** 3)
        .optional(),
      /** Target chunk length in characters; default HD_CHUNK_TARGET_CHARS. */
      chunk_target_chars: z.number().int().min(100).max(100_000).optional(),
      /** Characters repeated from the end of one chunk at the start of the next. */
      chunk_overlap_chars: z.number().int().min(0).max(50_000).optional(),
      /** A file of the document to fetch first (inputs by URL): stored, then a document file. */
      url: inputUrlSchema.optional(),
      url_input: storedUrlInputSchema.optional(),
      next_stages: nextStagesSchema,
    }),
  ).refine((p) => !(p.ocr === 'off' && p.extraction_method && p.extraction_method !== 'native'), {
    path: ['extraction_method'],
    message: 'asks for OCR, which ocr: off turns off',
  }),
  /** Interprets every chunk of the job's document_id not yet interpreted. */
  extract_interpretations: z.looseObject({ next_stages: nextStagesSchema }),
  /** Builds the graph of the job's document_id from its interpretations. */
  text2kg: z.looseObject({ next_stages: nextStagesSchema }),
  /** Synthesises `node_id`, or without it every node of the job's document_id. */
  synthesize_node: z.looseObject({
    node_id: z.uuid('node_id must be a UUID').optional(),
    next_stages: nextStagesSchema,
  }),
} satisfies { [K in JobType]: z.ZodType };

export type JobPayload<K extends JobType> = z.infer<(typeof PAYLOAD_SCHEMAS)[K]>;
