import type pg from 'pg';
import type { SupabaseClient } from '@supabase/supabase-js';
import type { Job } from '../../contract/jobs.ts';
import { PostgresDb, toJob as pgJob } from './postgres.ts';
import { classifyPostgrestError } from './postgrest-errors.ts';
import { SupabaseDb, toJob as restJob } from './supabase.ts';
import type { ControlPlaneDb, EnqueueRequest } from './transport.ts';

export const BATCH_STATUSES = ['active', 'completed', 'failed', 'cancelled'] as const;
export type BatchStatus = (typeof BATCH_STATUSES)[number];

/** A hd_batches row: counts and status are kept exact by the database (00013). */
export interface Batch {
  id: string;
  account_id: string;
  name: string;
  idempotency_key: string | null;
  status: BatchStatus;
  total: number;
  queued: number;
  running: number;
  completed: number;
  failed: number;
  cancelled: number;
  percent: number;
  created_at: Date;
  updated_at: Date;
  finished_at: Date | null;
  /** The batch's own webhook URL (00022): its end event goes there too. */
  webhook_url: string | null;
}

export interface EnqueueBatchRequest {
  accountId: string;
  name: string;
  /** Same key again (same account): the first batch comes back, nothing is added. */
  idempotencyKey?: string | undefined;
  /** Where the batch's end event goes besides the account's endpoints (webhookUrlSchema). */
  webhookUrl?: string | undefined;
  jobs: readonly Omit<EnqueueRequest, 'accountId'>[];
}

export interface ListBatchesFilter {
  accountId?: string | undefined;
  status?: string | undefined;
  idRange?: readonly [string, string] | undefined;
  limit?: number | undefined;
}

/** The batch functions of 00013, one method each, on either transport. */
export interface BatchStore {
  enqueueBatch(request: EnqueueBatchRequest): Promise<Batch>;
  getBatch(batchId: string): Promise<Batch | undefined>;
  listBatches(filter: ListBatchesFilter): Promise<Batch[]>;
  /** The batch's jobs, oldest first. */
  listBatchJobs(batchId: string, limit: number): Promise<Job[]>;
  cancelBatch(batchId: string, reason?: string): Promise<Batch>;
  requeueBatch(batchId: string): Promise<Batch>;
}

/** The batch functions over the same connection as the transport's. */
export function batchesOf(db: ControlPlaneDb): BatchStore {
  if (db instanceof PostgresDb) return new PostgresBatches(db.pool);
  if (db instanceof SupabaseDb) return new SupabaseBatches(db.client);
  throw new Error('batches: unknown database transport');
}

/** pg and PostgREST return numeric as string, timestamps as text (PostgREST). */
function toBatch(row: Record<string, unknown>): Batch {
  const date = (v: unknown) => (v === null || v === undefined ? null : new Date(v as string));
  return {
    ...(row as unknown as Batch),
    percent: Number(row.percent ?? 0),
    created_at: date(row.created_at)!,
    updated_at: date(row.updated_at)!,
    finished_at: date(row.finished_at),
  };
}

function jobsJson(jobs: EnqueueBatchRequest['jobs']) {
  return jobs.map((j) => ({
    job_type: j.jobType,
    debug: j.debug,
    document_id: j.documentId ?? null,
    priority: j.priority ?? 0,
    max_attempts: j.maxAttempts ?? 3,
    run_after: j.runAfter?.toISOString() ?? null,
  }));
}

export class PostgresBatches implements BatchStore {
  readonly pool: pg.Pool;
  constructor(pool: pg.Pool) {
    this.pool = pool;
  }

  async #one(sql: string, params: unknown[]): Promise<Batch> {
    const { rows } = await this.pool.query(sql, params);
    if (!rows[0]) throw new Error(`no row returned by: ${sql}`);
    return toBatch(rows[0]);
  }

  enqueueBatch(r: EnqueueBatchRequest) {
    return this.#one('select * from public.hd_enqueue_batch($1, $2, $3, $4, p_webhook_url => $5)', [
      r.accountId,
      r.name,
      JSON.stringify(jobsJson(r.jobs)),
      r.idempotencyKey ?? null,
      r.webhookUrl ?? null,
    ]);
  }

  async getBatch(batchId: string) {
    const { rows } = await this.pool.query('select * from public.hd_batches where id = $1', [
      batchId,
    ]);
    return rows[0] ? toBatch(rows[0]) : undefined;
  }

  async listBatches(f: ListBatchesFilter) {
    const { rows } = await this.pool.query(
      `select * from public.hd_batches
        where ($1::uuid is null or account_id = $1)
          and ($2::text is null or status = $2)
          and ($4::uuid is null or id between $4 and $5)
        order by created_at desc, id
        limit $3`,
      [
        f.accountId ?? null,
        f.status ?? null,
        f.limit ?? 20,
        f.idRange?.[0] ?? null,
        f.idRange?.[1] ?? null,
      ],
    );
    return rows.map(toBatch);
  }

  async listBatchJobs(batchId: string, limit: number) {
    const { rows } = await this.pool.query(
      `select * from public.hd_ingestion_jobs where batch_id = $1
        order by created_at, id limit $2`,
      [batchId, limit],
    );
    return rows.map(pgJob);
  }

  cancelBatch(batchId: string, reason?: string) {
    return this.#one('select * from public.hd_cancel_batch($1, $2)', [
      batchId,
      reason ?? 'batch cancelled by operator',
    ]);
  }

  requeueBatch(batchId: string) {
    return this.#one('select * from public.hd_requeue_batch($1)', [batchId]);
  }
}

export class SupabaseBatches implements BatchStore {
  readonly client: SupabaseClient;
  constructor(client: SupabaseClient) {
    this.client = client;
  }

  async #rpc(fn: string, args: Record<string, unknown>): Promise<Batch> {
    const { data, error, status } = await this.client.rpc(fn, args).single();
    if (error) throw classifyPostgrestError(fn, error, status);
    return toBatch(data as Record<string, unknown>);
  }

  enqueueBatch(r: EnqueueBatchRequest) {
    return this.#rpc('hd_enqueue_batch', {
      p_account_id: r.accountId,
      p_name: r.name,
      p_jobs: jobsJson(r.jobs),
      p_idempotency_key: r.idempotencyKey ?? null,
      p_webhook_url: r.webhookUrl ?? null,
    });
  }

  async getBatch(batchId: string) {
    const { data, error, status } = await this.client
      .from('hd_batches')
      .select('*')
      .eq('id', batchId)
      .maybeSingle();
    if (error) throw classifyPostgrestError('hd_batches', error, status);
    return data ? toBatch(data as Record<string, unknown>) : undefined;
  }

  async listBatches(f: ListBatchesFilter) {
    let query = this.client.from('hd_batches').select('*');
    if (f.accountId) query = query.eq('account_id', f.accountId);
    if (f.status) query = query.eq('status', f.status);
    if (f.idRange) query = query.gte('id', f.idRange[0]).lte('id', f.idRange[1]);
    const { data, error, status } = await query
      .order('created_at', { ascending: false })
      .order('id', { ascending: true })
      .limit(f.limit ?? 20);
    if (error) throw classifyPostgrestError('hd_batches', error, status);
    return (data as Record<string, unknown>[]).map(toBatch);
  }

  async listBatchJobs(batchId: string, limit: number) {
    const { data, error, status } = await this.client
      .from('hd_ingestion_jobs')
      .select('*')
      .eq('batch_id', batchId)
      .order('created_at', { ascending: true })
      .order('id', { ascending: true })
      .limit(limit);
    if (error) throw classifyPostgrestError('hd_ingestion_jobs', error, status);
    return (data as Record<string, unknown>[]).map(restJob);
  }

  cancelBatch(batchId: string, reason?: string) {
    return this.#rpc('hd_cancel_batch', {
      p_batch_id: batchId,
      p_reason: reason ?? 'batch cancelled by operator',
    });
  }

  requeueBatch(batchId: string) {
    return this.#rpc('hd_requeue_batch', { p_batch_id: batchId });
  }
}
