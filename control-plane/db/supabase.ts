import type { SupabaseClient } from '@supabase/supabase-js';
import type { ClaimedJob, Job } from '../../contract/jobs.ts';
import { createServiceClient } from '../supabase-client.ts';
import { classifyPostgrestError } from './postgrest-errors.ts';
import { SupabaseOutputCalls } from './supabase-outputs.ts';
import type {
  ClaimOptions,
  ControlPlaneDb,
  EnqueueRequest,
  Failure,
  JobLogLine,
  ListJobsFilter,
  SchedulerReport,
  StoredUrlInput,
  WakeReason,
} from './transport.ts';

export { classifyPostgrestError, PostgrestCallError } from './postgrest-errors.ts';

const TIMESTAMPS = [
  'run_after',
  'lease_expires_at',
  'created_at',
  'updated_at',
  'started_at',
  'finished_at',
] as const;

/** PostgREST sends timestamptz as ISO text; the postgres transport hands out Dates. */
function withDates(row: Record<string, unknown>): Record<string, unknown> {
  const job: Record<string, unknown> = { ...row };
  for (const key of TIMESTAMPS) {
    const value = row[key];
    if (typeof value === 'string') job[key] = new Date(value);
  }
  return job;
}

export function toJob(row: Record<string, unknown>): Job {
  return {
    ...withDates(row),
    progress_percent: Number(row.progress_percent ?? 0),
  } as unknown as Job;
}

/** Maps a Realtime change on hd_ingestion_jobs to the wake-up the scheduler acts on. */
export function wakeFromChange(change: {
  eventType: string;
  new: Record<string, unknown>;
}): WakeReason | undefined {
  const row = change.new;
  if (row.status === 'queued' && (change.eventType === 'INSERT' || change.eventType === 'UPDATE'))
    return { kind: 'queued', jobType: String(row.job_type ?? '') };
  if (change.eventType === 'UPDATE' && row.status === 'failed' && row.error_code === 'CANCELLED')
    return { kind: 'cancelled', jobId: String(row.id ?? '') };
  return undefined;
}

export interface SupabaseDbOptions {
  url: string;
  /** The service-role key; a runner with `accessToken` sends the public anon key instead. */
  serviceRoleKey: string;
  /** A runner's job-scoped JWT (role hd_runner): reaches the lease-checked functions of its job. */
  accessToken?: string | undefined;
  /** Subscribe to Realtime changes of hd_ingestion_jobs for instant wake-ups. Default false. */
  realtime?: boolean;
  /** Longest one call may take, in ms. Default 30000. */
  timeoutMs?: number;
  /** How long listen() waits for the Realtime subscription before relying on polling, in ms. */
  realtimeSubscribeMs?: number;
  /** Told when Realtime subscribes, fails or closes (for logs and `doctor`). */
  onRealtimeStatus?: (status: string, error?: Error) => void;
  /** A ready client (tests); by default one is created from url and key. */
  client?: SupabaseClient;
}

/**
 * The `supabase` transport: every queue method is one `rpc()` to the same SQL function
 * the postgres transport calls (POST, so PostgREST runs it read-write); the output
 * writes are in SupabaseOutputCalls; job reads are plain table selects. There is no
 * LISTEN over HTTP: the scheduler polls at HD_POLL_INTERVAL_MS, and with `realtime`
 * Supabase Realtime wakes it on new jobs and cancellations. PostgREST caps result sets
 * at its max-rows (Supabase: 1000), above every limit hd-runner asks for.
 */
export class SupabaseDb extends SupabaseOutputCalls implements ControlPlaneDb {
  readonly client: SupabaseClient;
  readonly #options: SupabaseDbOptions;

  constructor(options: SupabaseDbOptions) {
    super();
    this.#options = options;
    this.client =
      options.client ??
      createServiceClient({
        url: options.url,
        serviceRoleKey: options.serviceRoleKey,
        accessToken: options.accessToken,
        timeoutMs: options.timeoutMs ?? 30_000,
      });
  }

  async rpc<T>(fn: string, args: Record<string, unknown>): Promise<T> {
    const { data, error, status } = await this.client.rpc(fn, args);
    if (error) throw classifyPostgrestError(fn, error, status);
    return data as T;
  }

  async #jobs(fn: string, args: Record<string, unknown>): Promise<Job[]> {
    const rows = await this.rpc<Record<string, unknown>[] | null>(fn, args);
    return (rows ?? []).map(toJob);
  }

  async #job(fn: string, args: Record<string, unknown>): Promise<Job> {
    const row = await this.rpc<Record<string, unknown> | null>(fn, args);
    if (!row || typeof row !== 'object') throw new Error(`no row returned by ${fn}`);
    return toJob(row);
  }

  claimJobs(o: ClaimOptions): Promise<Job[]> {
    return this.#jobs('hd_claim_jobs', {
      p_worker_id: o.workerId,
      p_job_types: o.jobTypes ?? null,
      p_limit: o.limit ?? 1,
      p_lease_seconds: o.leaseSeconds,
      p_job_id: o.jobId ?? null,
      p_account_max_running: o.accountMaxRunning ?? null,
    });
  }

  async claimLeases(o: Omit<ClaimOptions, 'jobId'>): Promise<ClaimedJob[]> {
    const rows = await this.rpc<Record<string, unknown>[] | null>('hd_claim_leases', {
      p_worker_id: o.workerId,
      p_job_types: o.jobTypes ?? null,
      p_limit: o.limit ?? 1,
      p_lease_seconds: o.leaseSeconds,
      p_account_max_running: o.accountMaxRunning ?? null,
    });
    return (rows ?? []).map((row) => withDates(row) as unknown as ClaimedJob);
  }

  async heartbeat(jobId: string, leaseToken: string, leaseSeconds: number): Promise<Date> {
    const expires = await this.rpc<string>('hd_heartbeat', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_lease_seconds: leaseSeconds,
    });
    return new Date(expires);
  }

  createJobRole(jobId: string, leaseToken: string, password: string, validUntil: Date) {
    return this.rpc<string>('hd_create_job_role', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_password: password,
      p_valid_until: validUntil.toISOString(),
    });
  }

  dropJobRoles(jobId?: string) {
    return this.rpc<number>('hd_drop_job_roles', { p_job_id: jobId ?? null });
  }

  createWarmRole(password: string, validUntil: Date) {
    return this.rpc<string>('hd_create_warm_role', {
      p_password: password,
      p_valid_until: validUntil.toISOString(),
    });
  }

  async bindWarmRole(role: string, jobId: string, leaseToken: string, validUntil: Date) {
    await this.rpc('hd_bind_warm_role', {
      p_role: role,
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_valid_until: validUntil.toISOString(),
    });
  }

  dropWarmRole(role: string) {
    return this.rpc<boolean>('hd_drop_warm_role', { p_role: role });
  }

  adoptLease(jobId: string, leaseToken: string, leaseSeconds: number) {
    return this.#job('hd_adopt_lease', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_lease_seconds: leaseSeconds,
    });
  }

  async reportProgress(jobId: string, leaseToken: string, percent: number, step?: string) {
    await this.rpc('hd_report_progress', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_percent: percent,
      p_step: step ?? null,
    });
  }

  completeJob(jobId: string, leaseToken: string, stats: Record<string, unknown>) {
    return this.#job('hd_complete_job', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_stats: stats,
    });
  }

  async completeJobs(
    leases: readonly { jobId: string; leaseToken: string }[],
    stats: Record<string, unknown>,
  ) {
    const rows = await this.rpc<{ job_id: string; completed: boolean }[]>('hd_complete_jobs', {
      p_job_ids: leases.map((l) => l.jobId),
      p_lease_tokens: leases.map((l) => l.leaseToken),
      p_stats: stats,
    });
    return rows.map((r) => ({ jobId: r.job_id, completed: r.completed }));
  }

  failJob(jobId: string, leaseToken: string, f: Failure) {
    return this.#job('hd_fail_job', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_error_code: f.code,
      p_error_message: f.message,
      p_retryable: f.retryable,
      p_details: f.details ?? null,
    });
  }

  releaseJob(jobId: string, leaseToken: string) {
    return this.#job('hd_release_job', { p_job_id: jobId, p_lease_token: leaseToken });
  }

  recordUrlInput(jobId: string, leaseToken: string, info: StoredUrlInput) {
    return this.#job('hd_record_url_input', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_info: info,
    });
  }

  async setContainerId(jobId: string, leaseToken: string, containerId: string) {
    await this.rpc('hd_set_container_id', {
      p_job_id: jobId,
      p_lease_token: leaseToken,
      p_container_id: containerId,
    });
  }

  reapExpiredLeases(reporter?: SchedulerReport) {
    return this.#jobs(
      'hd_reap_expired_leases',
      reporter
        ? {
            p_worker_id: reporter.workerId,
            p_every_seconds: reporter.everySeconds,
            p_lease_seconds: reporter.leaseSeconds,
          }
        : {},
    );
  }

  enqueueJob(r: EnqueueRequest) {
    return this.#job('hd_enqueue_job', {
      p_account_id: r.accountId,
      p_job_type: r.jobType,
      p_debug: r.debug,
      p_document_id: r.documentId ?? null,
      p_priority: r.priority ?? 0,
      p_max_attempts: r.maxAttempts ?? 3,
      p_run_after: r.runAfter?.toISOString() ?? null,
    });
  }

  requeueJob(jobId: string) {
    return this.#job('hd_requeue_job', { p_job_id: jobId });
  }

  cancelJob(jobId: string, reason?: string) {
    return this.#job('hd_cancel_job', {
      p_job_id: jobId,
      p_reason: reason ?? 'cancelled by operator',
    });
  }

  async getJob(jobId: string): Promise<Job | undefined> {
    const { data, error, status } = await this.client
      .from('hd_ingestion_jobs')
      .select('*')
      .eq('id', jobId)
      .maybeSingle();
    if (error) throw classifyPostgrestError('hd_ingestion_jobs', error, status);
    return data ? toJob(data as Record<string, unknown>) : undefined;
  }

  async listJobs(f: ListJobsFilter): Promise<Job[]> {
    let query = this.client.from('hd_ingestion_jobs').select('*');
    if (f.accountId) query = query.eq('account_id', f.accountId);
    if (f.status) query = query.eq('status', f.status);
    if (f.jobType) query = query.eq('job_type', f.jobType);
    if (f.idRange) query = query.gte('id', f.idRange[0]).lte('id', f.idRange[1]);
    const { data, error, status } = await query
      .order('created_at', { ascending: false })
      .order('id', { ascending: true })
      .limit(f.limit ?? 20);
    if (error) throw classifyPostgrestError('hd_ingestion_jobs', error, status);
    return (data as Record<string, unknown>[]).map(toJob);
  }

  async listJobLogs(jobId: string, limit: number): Promise<JobLogLine[]> {
    const { data, error, status } = await this.client
      .from('hd_job_logs')
      .select('attempt, seq, logged_at, level, message, fields')
      .eq('job_id', jobId)
      .order('attempt', { ascending: false })
      .order('seq', { ascending: false })
      .limit(limit);
    if (error) throw classifyPostgrestError('hd_job_logs', error, status);
    return (data as (Omit<JobLogLine, 'logged_at'> & { logged_at: string })[])
      .map((row) => ({ ...row, logged_at: new Date(row.logged_at) }))
      .reverse();
  }

  /** The read-only report behind `hd-runner doctor` (00006_postgrest.sql). */
  doctorReport(): Promise<Record<string, unknown>> {
    return this.rpc('hd_doctor_report', {});
  }

  async listen(onWake: (reason: WakeReason) => void): Promise<() => Promise<void>> {
    if (!this.#options.realtime) return async () => {};
    const report = this.#options.onRealtimeStatus ?? (() => {});
    const handle = (change: { eventType: string; new: Record<string, unknown> }) => {
      const reason = wakeFromChange(change);
      if (reason) onWake(reason);
    };
    const filter = { schema: 'public', table: 'hd_ingestion_jobs' } as const;
    const channel = this.client
      .channel(`hd-runner-jobs-${crypto.randomUUID()}`)
      .on('postgres_changes', { event: 'INSERT', ...filter }, handle)
      .on('postgres_changes', { event: 'UPDATE', ...filter }, handle);
    // Realtime is a speed-up, never a requirement: whatever happens within the wait,
    // the scheduler goes on, polling.
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, this.#options.realtimeSubscribeMs ?? 10_000);
      channel.subscribe((status, error) => {
        report(status, error);
        if (status !== 'CLOSED') {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    return async () => {
      await this.client.removeChannel(channel);
    };
  }

  async close() {
    await this.client.removeAllChannels();
  }
}
