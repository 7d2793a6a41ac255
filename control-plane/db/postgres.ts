import pg from 'pg';
import type { ClaimedJob, Job } from '../../contract/jobs.ts';
import type {
  AssetRow,
  ChunkRow,
  ChunkWriteCounts,
  ClaimOptions,
  ChunkToInterpret,
  DocumentGraph,
  DocumentInterpretation,
  GraphWriteCounts,
  InterpretationRow,
  NodeContext,
  SynthesisInput,
  SynthesisResult,
  DocumentFile,
  ControlPlaneDb,
  EnqueueRequest,
  Failure,
  JobLogLine,
  ListJobsFilter,
  NewJobLogLine,
  SchedulerReport,
  UpsertCounts,
  WakeReason,
  StoredUrlInput,
} from './transport.ts';

/** The scheduler's claim: worker, job types, limit, lease seconds, default account limit. */
export const CLAIM_LEASES_SQL = 'select * from public.hd_claim_leases($1, $2, $3, $4, $5)';

const CHANNEL_QUEUED = 'hd_jobs_queued';
const CHANNEL_CANCELLED = 'hd_jobs_cancelled';
const RELISTEN_DELAY_MS = 1000;
/**
 * A connection that has not opened and logged in by then is given up (DATABASE_UNAVAILABLE).
 * Without it, a connect across a network that drops packets waits for TCP to give up
 * (~2 min on Linux): a stopping scheduler or a runner's heartbeat would hang that long.
 */
export const CONNECT_TIMEOUT_MS = 15_000;

/** pg returns numeric as string; the one numeric column we read is a percentage. */
export function toJob(row: Record<string, unknown>): Job {
  return { ...(row as unknown as Job), progress_percent: Number(row.progress_percent ?? 0) };
}

/**
 * The `postgres` transport: every method is one call of a SQL function from
 * supabase/migrations, over a pg pool. LISTEN/NOTIFY gives instant wake-ups.
 */
export class PostgresDb implements ControlPlaneDb {
  readonly pool: pg.Pool;
  readonly #listenConnectionString: string | null;
  readonly #listeners = new Set<pg.Client>();
  readonly #connectTimeoutMs: number;

  /**
   * `listenConnectionString`: where LISTEN runs, on a session of its own (default: the
   * pool's database). A transaction pooler (PgBouncer, Supabase's port 6543) hands each
   * transaction another server session, so a LISTEN there hears nothing: give a direct or
   * session-mode URL, or null to rely on polling.
   */
  constructor(options: {
    connectionString: string;
    poolSize?: number;
    pool?: pg.Pool;
    listenConnectionString?: string | null;
    /** How long an idle connection is kept; 0: for as long as the process lives (a runner). */
    idleTimeoutMs?: number;
    /** How long a new connection may take to open and log in (CONNECT_TIMEOUT_MS). */
    connectTimeoutMs?: number;
  }) {
    this.#connectTimeoutMs = options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS;
    this.#listenConnectionString =
      options.listenConnectionString === undefined
        ? options.connectionString
        : options.listenConnectionString;
    this.pool =
      options.pool ??
      new pg.Pool({
        connectionString: options.connectionString,
        max: options.poolSize ?? 4,
        idleTimeoutMillis: options.idleTimeoutMs ?? 10_000,
        // On the client, not the pool: the pool's would also fail a call that only waits
        // for a busy pool's next free connection.
        Client: clientWithConnectTimeout(this.#connectTimeoutMs),
        // A connection kept idle for minutes (a warm runner's, a job's between heartbeats):
        // probed, so that a NAT or balancer that dropped the idle flow is found by TCP, not
        // by the next call hanging until the kernel gives up.
        ...(options.idleTimeoutMs === 0 && {
          keepAlive: true,
          keepAliveInitialDelayMillis: 30_000,
        }),
        application_name: 'hd-runner',
      });
    // An idle client losing its connection must not crash the process; the next query
    // reconnects and fails with a classified error if the database is still gone.
    this.pool.on('error', () => {});
  }

  /**
   * Opens one connection now and keeps it idle for the first query (a warm runner, while
   * it waits for its job), its server process warmed for the job's calls
   * (hd_warm_up_session, migration 00036: the functions a job calls compiled, its memory
   * grown by a sample of a 200-page PDF's chunks, bench/warm-session.ts): resolves when
   * done, or failed, which the first query then reports itself. Behind a transaction
   * pooler the job's calls may get another server process: nothing gained, nothing lost.
   */
  async connectAhead(): Promise<void> {
    let client;
    try {
      client = await this.pool.connect();
    } catch {
      return; // the job's first call connects again, and says why it cannot
    }
    try {
      await client.query('select public.hd_warm_up_session($1::jsonb)', [warmUpSample()]);
    } catch {
      // A database without 00036: the job runs on a cold session, as before.
    } finally {
      // Released without the error: pool.query would close a connection whose query failed.
      client.release();
    }
  }

  async #rows(sql: string, params: unknown[]): Promise<Job[]> {
    const { rows } = await this.pool.query(sql, params);
    return rows.map(toJob);
  }

  async #one(sql: string, params: unknown[]): Promise<Job> {
    const [job] = await this.#rows(sql, params);
    if (!job) throw new Error(`no row returned by: ${sql}`);
    return job;
  }

  claimJobs(o: ClaimOptions): Promise<Job[]> {
    return this.#rows(
      'select * from public.hd_claim_jobs($1, $2, $3, $4, $5, p_account_max_running => $6)',
      [
        o.workerId,
        o.jobTypes ?? null,
        o.limit ?? 1,
        o.leaseSeconds,
        o.jobId ?? null,
        o.accountMaxRunning ?? null,
      ],
    );
  }

  async claimLeases(o: Omit<ClaimOptions, 'jobId'>): Promise<ClaimedJob[]> {
    const { rows } = await this.pool.query<ClaimedJob>(CLAIM_LEASES_SQL, [
      o.workerId,
      o.jobTypes ?? null,
      o.limit ?? 1,
      o.leaseSeconds,
      o.accountMaxRunning ?? null,
    ]);
    return rows;
  }

  async heartbeat(jobId: string, leaseToken: string, leaseSeconds: number): Promise<Date> {
    const { rows } = await this.pool.query('select public.hd_heartbeat($1, $2, $3) as expires', [
      jobId,
      leaseToken,
      leaseSeconds,
    ]);
    return rows[0].expires as Date;
  }

  async createJobRole(jobId: string, leaseToken: string, password: string, validUntil: Date) {
    const { rows } = await this.pool.query<{ role: string }>(
      'select public.hd_create_job_role($1, $2, $3, $4) as role',
      [jobId, leaseToken, password, validUntil],
    );
    return rows[0]!.role;
  }

  async dropJobRoles(jobId?: string) {
    const { rows } = await this.pool.query<{ dropped: number }>(
      'select public.hd_drop_job_roles($1) as dropped',
      [jobId ?? null],
    );
    return rows[0]!.dropped;
  }

  async createWarmRole(password: string, validUntil: Date) {
    const { rows } = await this.pool.query<{ role: string }>(
      'select public.hd_create_warm_role($1, $2) as role',
      [password, validUntil],
    );
    return rows[0]!.role;
  }

  async bindWarmRole(role: string, jobId: string, leaseToken: string, validUntil: Date) {
    await this.pool.query('select public.hd_bind_warm_role($1, $2, $3, $4)', [
      role,
      jobId,
      leaseToken,
      validUntil,
    ]);
  }

  async dropWarmRole(role: string) {
    const { rows } = await this.pool.query<{ dropped: boolean }>(
      'select public.hd_drop_warm_role($1) as dropped',
      [role],
    );
    return rows[0]!.dropped;
  }

  adoptLease(jobId: string, leaseToken: string, leaseSeconds: number) {
    return this.#one('select * from public.hd_adopt_lease($1, $2, $3)', [
      jobId,
      leaseToken,
      leaseSeconds,
    ]);
  }

  async reportProgress(jobId: string, leaseToken: string, percent: number, step?: string) {
    await this.pool.query('select public.hd_report_progress($1, $2, $3, $4)', [
      jobId,
      leaseToken,
      percent,
      step ?? null,
    ]);
  }

  completeJob(jobId: string, leaseToken: string, stats: Record<string, unknown>) {
    return this.#one('select * from public.hd_complete_job($1, $2, $3)', [
      jobId,
      leaseToken,
      stats,
    ]);
  }

  async completeJobs(
    leases: readonly { jobId: string; leaseToken: string }[],
    stats: Record<string, unknown>,
  ) {
    const { rows } = await this.pool.query<{ job_id: string; completed: boolean }>(
      'select * from public.hd_complete_jobs($1::uuid[], $2::uuid[], $3)',
      [leases.map((l) => l.jobId), leases.map((l) => l.leaseToken), stats],
    );
    return rows.map((r) => ({ jobId: r.job_id, completed: r.completed }));
  }

  failJob(jobId: string, leaseToken: string, f: Failure) {
    return this.#one('select * from public.hd_fail_job($1, $2, $3, $4, $5, $6)', [
      jobId,
      leaseToken,
      f.code,
      f.message,
      f.retryable,
      f.details ?? null,
    ]);
  }

  releaseJob(jobId: string, leaseToken: string) {
    return this.#one('select * from public.hd_release_job($1, $2)', [jobId, leaseToken]);
  }

  recordUrlInput(jobId: string, leaseToken: string, info: StoredUrlInput) {
    return this.#one('select * from public.hd_record_url_input($1, $2, $3)', [
      jobId,
      leaseToken,
      info,
    ]);
  }

  async setContainerId(jobId: string, leaseToken: string, containerId: string) {
    await this.pool.query('select public.hd_set_container_id($1, $2, $3)', [
      jobId,
      leaseToken,
      containerId,
    ]);
  }

  reapExpiredLeases(reporter?: SchedulerReport) {
    return this.#rows(
      'select * from public.hd_reap_expired_leases(p_worker_id => $1, p_every_seconds => $2, p_lease_seconds => $3)',
      [reporter?.workerId ?? null, reporter?.everySeconds ?? null, reporter?.leaseSeconds ?? null],
    );
  }

  enqueueJob(r: EnqueueRequest) {
    return this.#one('select * from public.hd_enqueue_job($1, $2, $3, $4, $5, $6, $7)', [
      r.accountId,
      r.jobType,
      r.debug,
      r.documentId ?? null,
      r.priority ?? 0,
      r.maxAttempts ?? 3,
      r.runAfter ?? null,
    ]);
  }

  requeueJob(jobId: string) {
    return this.#one('select * from public.hd_requeue_job($1)', [jobId]);
  }

  cancelJob(jobId: string, reason?: string) {
    return this.#one('select * from public.hd_cancel_job($1, $2)', [
      jobId,
      reason ?? 'cancelled by operator',
    ]);
  }

  async getJob(jobId: string): Promise<Job | undefined> {
    const [job] = await this.#rows('select * from public.hd_ingestion_jobs where id = $1', [jobId]);
    return job;
  }

  listJobs(f: ListJobsFilter): Promise<Job[]> {
    return this.#rows(
      `select * from public.hd_ingestion_jobs
        where ($1::uuid is null or account_id = $1)
          and ($2::text is null or status = $2)
          and ($3::text is null or job_type = $3)
          and ($5::uuid is null or id between $5 and $6)
        order by created_at desc, id
        limit $4`,
      [
        f.accountId ?? null,
        f.status ?? null,
        f.jobType ?? null,
        f.limit ?? 20,
        f.idRange?.[0] ?? null,
        f.idRange?.[1] ?? null,
      ],
    );
  }

  async appendJobLogs(jobId: string, leaseToken: string, lines: readonly NewJobLogLine[]) {
    const { rows } = await this.pool.query<{ inserted: number }>(
      'select public.hd_append_job_logs($1, $2, $3::jsonb) as inserted',
      [jobId, leaseToken, JSON.stringify(lines)],
    );
    return rows[0]!.inserted;
  }

  listJobLogs(jobId: string, limit: number) {
    return this.#call<JobLogLine>(
      `select * from (
         select attempt, seq, logged_at, level, message, fields from public.hd_job_logs
          where job_id = $1 order by attempt desc, seq desc limit $2) last
        order by attempt, seq`,
      [jobId, limit],
    );
  }

  async upsertAssets(jobId: string, leaseToken: string, rows: readonly AssetRow[]) {
    const result = await this.pool.query<UpsertCounts>(
      'select * from public.hd_upsert_assets($1, $2, $3::jsonb)',
      [jobId, leaseToken, JSON.stringify(rows)],
    );
    return result.rows[0]!;
  }

  async listDocumentFiles(jobId: string, leaseToken: string): Promise<DocumentFile[]> {
    const { rows } = await this.pool.query<DocumentFile>(
      'select * from public.hd_list_document_files($1, $2)',
      [jobId, leaseToken],
    );
    // bigint arrives as a string; file sizes fit a double exactly.
    return rows.map((r) => ({
      ...r,
      size_bytes: r.size_bytes === null ? null : Number(r.size_bytes),
    }));
  }

  async replaceDocumentChunks(jobId: string, leaseToken: string, chunks: readonly ChunkRow[]) {
    const result = await this.pool.query<ChunkWriteCounts>(
      'select * from public.hd_replace_document_chunks($1, $2, $3::jsonb)',
      [jobId, leaseToken, JSON.stringify(chunks)],
    );
    return result.rows[0]!;
  }

  async #call<T>(sql: string, params: unknown[]): Promise<T[]> {
    return (await this.pool.query(sql, params)).rows as T[];
  }

  async countChunksToInterpret(jobId: string, leaseToken: string, promptVersion: string) {
    const [row] = await this.#call<{ total: number; pending: number }>(
      'select * from public.hd_count_chunks_to_interpret($1, $2, $3)',
      [jobId, leaseToken, promptVersion],
    );
    return row!;
  }

  listChunksToInterpret(
    jobId: string,
    leaseToken: string,
    promptVersion: string,
    afterIndex: number,
    limit: number,
  ) {
    return this.#call<ChunkToInterpret>(
      'select * from public.hd_list_chunks_to_interpret($1, $2, $3, $4, $5)',
      [jobId, leaseToken, promptVersion, afterIndex, limit],
    );
  }

  async upsertInterpretations(
    jobId: string,
    leaseToken: string,
    rows: readonly InterpretationRow[],
  ) {
    const [counts] = await this.#call<UpsertCounts>(
      'select * from public.hd_upsert_interpretations($1, $2, $3::jsonb)',
      [jobId, leaseToken, JSON.stringify(rows)],
    );
    return counts!;
  }

  listDocumentInterpretations(
    jobId: string,
    leaseToken: string,
    afterIndex: number,
    limit: number,
  ) {
    return this.#call<DocumentInterpretation>(
      'select * from public.hd_list_document_interpretations($1, $2, $3, $4)',
      [jobId, leaseToken, afterIndex, limit],
    );
  }

  async writeDocumentGraph(jobId: string, leaseToken: string, graph: DocumentGraph) {
    const [counts] = await this.#call<GraphWriteCounts>(
      'select * from public.hd_write_document_graph($1, $2, $3::jsonb, $4::jsonb, p_max_evidence => $5)',
      [
        jobId,
        leaseToken,
        JSON.stringify(graph.nodes),
        JSON.stringify(graph.edges),
        graph.max_evidence_per_edge ?? null,
      ],
    );
    return counts!;
  }

  async listDocumentNodes(jobId: string, leaseToken: string) {
    const rows = await this.#call<{ node_id: string }>(
      'select * from public.hd_list_document_nodes($1, $2)',
      [jobId, leaseToken],
    );
    return rows.map((r) => r.node_id);
  }

  async getNodeContext(
    jobId: string,
    leaseToken: string,
    nodeId: string,
    limits: { maxEdges: number; maxEvidence: number },
  ) {
    const [row] = await this.#call<{ context: NodeContext | null }>(
      'select public.hd_get_node_context($1, $2, $3, $4, $5) as context',
      [jobId, leaseToken, nodeId, limits.maxEdges, limits.maxEvidence],
    );
    return row?.context ?? undefined;
  }

  async recordSynthesis(jobId: string, leaseToken: string, nodeId: string, s: SynthesisInput) {
    const [row] = await this.#call<SynthesisResult>(
      'select * from public.hd_record_synthesis($1, $2, $3, $4::jsonb)',
      [jobId, leaseToken, nodeId, JSON.stringify(s)],
    );
    return row!;
  }

  async listen(onWake: (reason: WakeReason) => void): Promise<() => Promise<void>> {
    const connectionString = this.#listenConnectionString;
    if (connectionString === null) return async () => {}; // polling only
    let stopped = false;
    let client: pg.Client | undefined;
    let retry: NodeJS.Timeout | undefined;
    const connect = async () => {
      const c = new pg.Client({
        connectionString,
        application_name: 'hd-runner-listen',
        connectionTimeoutMillis: this.#connectTimeoutMs,
      });
      c.on('notification', (msg) => {
        if (msg.channel === CHANNEL_QUEUED) onWake({ kind: 'queued', jobType: msg.payload ?? '' });
        if (msg.channel === CHANNEL_CANCELLED)
          onWake({ kind: 'cancelled', jobId: msg.payload ?? '' });
      });
      // A lost LISTEN connection is re-established; polling covers the gap.
      c.on('error', () => {
        this.#listeners.delete(c);
        c.end().catch(() => {});
        scheduleRetry();
      });
      await c.connect();
      await c.query(`listen ${CHANNEL_QUEUED}; listen ${CHANNEL_CANCELLED}`);
      if (stopped) return c.end();
      client = c;
      this.#listeners.add(c);
    };
    const scheduleRetry = () => {
      if (!stopped)
        retry = setTimeout(() => void connect().catch(scheduleRetry), RELISTEN_DELAY_MS);
    };
    await connect();
    return async () => {
      stopped = true;
      clearTimeout(retry);
      if (client) {
        this.#listeners.delete(client);
        await client.end();
      }
    };
  }

  async close() {
    await Promise.all([...this.#listeners].map((c) => c.end()));
    this.#listeners.clear();
    await this.pool.end();
  }
}

/** pg's client, giving up a connection that has not opened and logged in after `ms`. */
function clientWithConnectTimeout(ms: number): typeof pg.Client {
  return class extends pg.Client {
    constructor(config?: string | pg.ClientConfig) {
      super({
        ...(typeof config === 'string' ? { connectionString: config } : config),
        connectionTimeoutMillis: ms,
      });
    }
  };
}

/** Chunk rows in a warm session's sample: a 200-page PDF's (~0.65 MB of JSON). */
export const WARM_UP_SAMPLE_ROWS = 400;

/**
 * Made-up rows shaped as a chunk write's, `rows` of ~1,430 characters each: a warm
 * session's sample (connectAhead), made once.
 */
const samples = new Map<number, string>();
export function warmUpSample(rows = WARM_UP_SAMPLE_ROWS): string {
  const content = 'Grüße aus München; the totals agree with the ledger. '.repeat(27);
  let sample = samples.get(rows);
  if (sample === undefined) {
    sample = JSON.stringify(
      Array.from({ length: rows }, (_, i) => ({
        chunk_index: i,
        content,
        page_start: (i >> 1) + 1,
        page_end: (i >> 1) + 2,
        char_start: i * content.length,
        char_end: (i + 1) * content.length,
        file_id: '00000000-0000-0000-0000-000000000000',
        content_sha256: '0'.repeat(64),
      })),
    );
    samples.set(rows, sample);
  }
  return sample;
}
