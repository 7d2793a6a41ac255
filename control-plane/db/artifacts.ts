import type pg from 'pg';
import type { SupabaseClient } from '@supabase/supabase-js';
import { HdError, toHdError } from '../../contract/errors.ts';
import { PostgresDb } from './postgres.ts';
import { classifyPostgrestError } from './postgrest-errors.ts';
import { SupabaseDb } from './supabase.ts';
import type { ControlPlaneDb } from './transport.ts';

/** A row of hd_artifacts (migration 00017). */
export interface Artifact {
  id: string;
  account_id: string;
  job_id: string;
  batch_id: string | null;
  kind: string;
  name: string;
  bucket: string;
  storage_path: string;
  content_type: string;
  size_bytes: number;
  sha256: string;
  attempt: number;
  created_at: Date;
}

/** What an upload is, before it is stored (hd_begin_artifact, hd_record_artifact). */
export interface ArtifactSpec {
  kind: string;
  name: string;
  contentType: string;
  sizeBytes: number;
  sha256: string;
}

/** Where hd_begin_artifact says the object goes (always the job's own prefix). */
export interface ArtifactTarget {
  bucket: string;
  storage_path: string;
}

/** The artifact functions of 00017 and the listings the CLI reads, on either transport. */
export interface ArtifactStore {
  begin(jobId: string, leaseToken: string, spec: ArtifactSpec): Promise<ArtifactTarget>;
  record(jobId: string, leaseToken: string, spec: ArtifactSpec): Promise<Artifact>;
  /**
   * hd_grant_artifact_upload (scheduler only, 00030): the declared size of the artifact this
   * lease began under `storagePath` and has not recorded, or undefined when there is none;
   * the key is then marked granted, so hd_record_artifact checks what is stored there.
   */
  grantUpload(jobId: string, leaseToken: string, storagePath: string): Promise<number | undefined>;
  /**
   * hd_take_unrecorded_uploads (scheduler only, 00030): keys granted to the job's ended
   * leases and never recorded, taken off the list for the caller to remove.
   */
  takeUnrecordedUploads(jobId: string): Promise<string[]>;
  /** A job's or a batch's artifacts, by job, kind and name (operator credentials). */
  list(filter: { jobId?: string; batchId?: string }): Promise<Artifact[]>;
}

export function artifactsOf(db: ControlPlaneDb): ArtifactStore {
  if (db instanceof PostgresDb) return new PostgresArtifacts(db.pool);
  if (db instanceof SupabaseDb) return new SupabaseArtifacts(db.client);
  throw new Error('artifacts: unknown database transport');
}

/**
 * HDA01 (over the job's max_output_bytes), HDA02 (the stored object is not what was
 * declared) and 22023 (a bad name) get their codes.
 */
function classify(error: unknown): Error {
  const code = (error as { code?: unknown }).code;
  const message = (error as Error).message;
  if (code === 'HDA01') return new HdError('OUTPUT_LIMIT_EXCEEDED', message, { cause: error });
  if (code === 'HDA02') return new HdError('ARTIFACT_SIZE_MISMATCH', message, { cause: error });
  if (code === '22023') return new HdError('INVALID_INPUT', message, { cause: error });
  return toHdError(error);
}

function toArtifact(row: Record<string, unknown>): Artifact {
  return {
    ...(row as unknown as Artifact),
    size_bytes: Number(row.size_bytes),
    created_at: new Date(row.created_at as string),
  };
}

const beginArgs = (jobId: string, leaseToken: string, s: ArtifactSpec) => [
  jobId,
  leaseToken,
  s.kind,
  s.name,
  s.sizeBytes,
];

export class PostgresArtifacts implements ArtifactStore {
  readonly pool: pg.Pool;
  constructor(pool: pg.Pool) {
    this.pool = pool;
  }

  async begin(jobId: string, leaseToken: string, spec: ArtifactSpec) {
    const { rows } = await this.pool
      .query<ArtifactTarget>(
        'select * from public.hd_begin_artifact($1, $2, $3, $4, $5)',
        beginArgs(jobId, leaseToken, spec),
      )
      .catch((error: unknown) => Promise.reject(classify(error)));
    return rows[0]!;
  }

  async record(jobId: string, leaseToken: string, spec: ArtifactSpec) {
    const { rows } = await this.pool
      .query('select * from public.hd_record_artifact($1, $2, $3, $4, $5, $6, $7)', [
        jobId,
        leaseToken,
        spec.kind,
        spec.name,
        spec.contentType,
        spec.sizeBytes,
        spec.sha256,
      ])
      .catch((error: unknown) => Promise.reject(classify(error)));
    return toArtifact(rows[0]);
  }

  async grantUpload(jobId: string, leaseToken: string, storagePath: string) {
    const { rows } = await this.pool.query<{ size: string | null }>(
      'select public.hd_grant_artifact_upload($1, $2, $3) as size',
      [jobId, leaseToken, storagePath],
    );
    return rows[0]?.size == null ? undefined : Number(rows[0].size);
  }

  async takeUnrecordedUploads(jobId: string) {
    const { rows } = await this.pool.query<{ storage_path: string }>(
      'select storage_path from public.hd_take_unrecorded_uploads($1)',
      [jobId],
    );
    return rows.map((r) => r.storage_path);
  }

  async list(filter: { jobId?: string; batchId?: string }) {
    const { rows } = await this.pool.query(
      `select * from public.hd_artifacts
        where ($1::uuid is null or job_id = $1) and ($2::uuid is null or batch_id = $2)
        order by job_id, kind, name`,
      [filter.jobId ?? null, filter.batchId ?? null],
    );
    return rows.map(toArtifact);
  }
}

export class SupabaseArtifacts implements ArtifactStore {
  readonly client: SupabaseClient;
  constructor(client: SupabaseClient) {
    this.client = client;
  }

  async #rpc(fn: string, args: Record<string, unknown>): Promise<Record<string, unknown>> {
    const { data, error, status } = await this.client.rpc(fn, args).single();
    if (error) throw classify(classifyPostgrestError(fn, error, status));
    return data as Record<string, unknown>;
  }

  async begin(jobId: string, leaseToken: string, s: ArtifactSpec) {
    const row = await this.#rpc('hd_begin_artifact', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_kind: s.kind,
      p_name: s.name,
      p_size_bytes: s.sizeBytes,
    });
    return row as unknown as ArtifactTarget;
  }

  async record(jobId: string, leaseToken: string, s: ArtifactSpec) {
    const row = await this.#rpc('hd_record_artifact', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_kind: s.kind,
      p_name: s.name,
      p_content_type: s.contentType,
      p_size_bytes: s.sizeBytes,
      p_sha256: s.sha256,
    });
    return toArtifact(row);
  }

  async grantUpload(jobId: string, leaseToken: string, storagePath: string) {
    const fn = 'hd_grant_artifact_upload';
    const { data, error, status } = await this.client.rpc(fn, {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_storage_path: storagePath,
    });
    if (error) throw classifyPostgrestError(fn, error, status);
    return data == null ? undefined : Number(data);
  }

  async takeUnrecordedUploads(jobId: string) {
    const fn = 'hd_take_unrecorded_uploads';
    const { data, error, status } = await this.client.rpc(fn, { p_job_id: jobId });
    if (error) throw classifyPostgrestError(fn, error, status);
    return (data as { storage_path: string }[]).map((r) => r.storage_path);
  }

  async list(filter: { jobId?: string; batchId?: string }) {
    let query = this.client.from('hd_artifacts').select('*');
    if (filter.jobId) query = query.eq('job_id', filter.jobId);
    if (filter.batchId) query = query.eq('batch_id', filter.batchId);
    const { data, error, status } = await query
      .order('job_id')
      .order('kind')
      .order('name')
      .limit(10_000);
    if (error) throw classifyPostgrestError('hd_artifacts', error, status);
    return (data as Record<string, unknown>[]).map(toArtifact);
  }
}
