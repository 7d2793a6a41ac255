import type { SupabaseClient } from '@supabase/supabase-js';
import type pg from 'pg';
import { PostgresDb } from './postgres.ts';
import { classifyPostgrestError } from './postgrest-errors.ts';
import { SupabaseDb } from './supabase.ts';
import type { ControlPlaneDb } from './transport.ts';

/** A due delivery as hd_claim_webhook_deliveries hands it out (00013), secret included. */
export interface DueWebhook {
  id: number;
  event_id: string;
  event_type: string;
  payload: Record<string, unknown>;
  attempts: number;
  url: string;
  secret: string;
}

export interface WebhookAttempt {
  statusCode?: number | undefined;
  error?: string | undefined;
  latencyMs: number;
}

/** An endpoint as operators see it: never its secret (hd_add_webhook_endpoint returns it once). */
export interface WebhookEndpoint {
  id: string;
  account_id: string;
  url: string;
  events: string[];
  enabled: boolean;
  created_at: Date;
}

/** A row of the delivery log (hd_webhook_outbox), payload left out. */
export interface WebhookDeliveryRow {
  id: number;
  event_id: string;
  account_id: string;
  /** The endpoint, or null for a job's or batch's own URL (`url`). */
  endpoint_id: string | null;
  url: string | null;
  event_type: string;
  status: 'pending' | 'delivered' | 'failed';
  attempts: number;
  next_attempt_at: Date;
  last_status_code: number | null;
  last_error: string | null;
  last_latency_ms: number | null;
  created_at: Date;
  delivered_at: Date | null;
}

export interface DeliveriesFilter {
  accountId?: string | undefined;
  status?: string | undefined;
  limit: number;
}

/** The webhook functions and tables of 00013 on either transport. */
export interface WebhookOutbox {
  claim(limit: number, leaseSeconds: number): Promise<DueWebhook[]>;
  record(id: number, attempt: WebhookAttempt): Promise<void>;
  replay(id: number): Promise<void>;
  addEndpoint(
    accountId: string,
    url: string,
    events?: readonly string[],
  ): Promise<WebhookEndpoint & { secret: string }>;
  listEndpoints(accountId?: string): Promise<WebhookEndpoint[]>;
  /** The account's secret that signs its jobs' and batches' own URLs (made if missing). */
  signingSecret(accountId: string): Promise<string>;
  /** Newest first. */
  listDeliveries(filter: DeliveriesFilter): Promise<WebhookDeliveryRow[]>;
}

const ENDPOINT_COLUMNS = 'id, account_id, url, events, enabled, created_at';
const DELIVERY_COLUMNS =
  'id, event_id, account_id, endpoint_id, url, event_type, status, attempts, next_attempt_at, last_status_code, last_error, last_latency_ms, created_at, delivered_at';

/** PostgREST sends timestamps as text and bigint ids as numbers: one shape for both. */
function withDates<T>(row: Record<string, unknown>): T {
  const out: Record<string, unknown> = { ...row };
  for (const [key, value] of Object.entries(row))
    if (typeof value === 'string' && key.endsWith('_at')) out[key] = new Date(value);
  if ('last_status_code' in row) out.id = Number(row.id);
  return out as T;
}

export function webhookOutboxOf(db: ControlPlaneDb): WebhookOutbox {
  if (db instanceof PostgresDb) return new PostgresWebhookOutbox(db.pool);
  if (db instanceof SupabaseDb) return new SupabaseWebhookOutbox(db.client);
  throw new Error('webhooks: unknown database transport');
}

const toDue = (r: Record<string, unknown>) => ({ ...r, id: Number(r.id) }) as DueWebhook;

export class PostgresWebhookOutbox implements WebhookOutbox {
  readonly pool: pg.Pool;
  constructor(pool: pg.Pool) {
    this.pool = pool;
  }

  async claim(limit: number, leaseSeconds: number) {
    const { rows } = await this.pool.query(
      'select * from public.hd_claim_webhook_deliveries($1, $2)',
      [limit, leaseSeconds],
    );
    return rows.map(toDue);
  }

  async record(id: number, a: WebhookAttempt) {
    await this.pool.query('select public.hd_record_webhook_attempt($1, $2, $3, $4)', [
      id,
      a.statusCode ?? null,
      a.error ?? null,
      a.latencyMs,
    ]);
  }

  async replay(id: number) {
    await this.pool.query('select public.hd_replay_webhook($1)', [id]);
  }

  async addEndpoint(accountId: string, url: string, events?: readonly string[]) {
    const { rows } = await this.pool.query(
      `select ${ENDPOINT_COLUMNS}, secret from public.hd_add_webhook_endpoint($1, $2, $3)`,
      [accountId, url, events ?? null],
    );
    return withDates<WebhookEndpoint & { secret: string }>(rows[0]);
  }

  async signingSecret(accountId: string) {
    const { rows } = await this.pool.query<{ secret: string }>(
      'select public.hd_webhook_signing_secret($1) as secret',
      [accountId],
    );
    return rows[0]!.secret;
  }

  async listEndpoints(accountId?: string) {
    const { rows } = await this.pool.query(
      `select ${ENDPOINT_COLUMNS} from public.hd_webhook_endpoints
        where ($1::uuid is null or account_id = $1) order by created_at, id`,
      [accountId ?? null],
    );
    return rows.map((r) => withDates<WebhookEndpoint>(r));
  }

  async listDeliveries(f: DeliveriesFilter) {
    const { rows } = await this.pool.query(
      `select ${DELIVERY_COLUMNS} from public.hd_webhook_outbox
        where ($1::uuid is null or account_id = $1) and ($2::text is null or status = $2)
        order by id desc limit $3`,
      [f.accountId ?? null, f.status ?? null, f.limit],
    );
    return rows.map((r) => withDates<WebhookDeliveryRow>(r));
  }
}

export class SupabaseWebhookOutbox implements WebhookOutbox {
  readonly client: SupabaseClient;
  constructor(client: SupabaseClient) {
    this.client = client;
  }

  async #rpc(fn: string, args: Record<string, unknown>): Promise<unknown> {
    const { data, error, status } = await this.client.rpc(fn, args);
    if (error) throw classifyPostgrestError(fn, error, status);
    return data;
  }

  async claim(limit: number, leaseSeconds: number) {
    const rows = await this.#rpc('hd_claim_webhook_deliveries', {
      p_limit: limit,
      p_lease_seconds: leaseSeconds,
    });
    return ((rows ?? []) as Record<string, unknown>[]).map(toDue);
  }

  async record(id: number, a: WebhookAttempt) {
    await this.#rpc('hd_record_webhook_attempt', {
      p_id: id,
      p_status_code: a.statusCode ?? null,
      p_error: a.error ?? null,
      p_latency_ms: a.latencyMs,
    });
  }

  async replay(id: number) {
    await this.#rpc('hd_replay_webhook', { p_id: id });
  }

  async addEndpoint(accountId: string, url: string, events?: readonly string[]) {
    const row = await this.#rpc('hd_add_webhook_endpoint', {
      p_account_id: accountId,
      p_url: url,
      p_events: events ?? null,
    });
    const {
      id,
      account_id,
      url: u,
      events: e,
      enabled,
      created_at,
      secret,
    } = row as Record<string, unknown>;
    return withDates<WebhookEndpoint & { secret: string }>({
      id,
      account_id,
      url: u,
      events: e,
      enabled,
      created_at,
      secret,
    });
  }

  async signingSecret(accountId: string) {
    return (await this.#rpc('hd_webhook_signing_secret', { p_account_id: accountId })) as string;
  }

  async listEndpoints(accountId?: string) {
    let query = this.client.from('hd_webhook_endpoints').select(ENDPOINT_COLUMNS);
    if (accountId) query = query.eq('account_id', accountId);
    const { data, error, status } = await query.order('created_at').order('id');
    if (error) throw classifyPostgrestError('hd_webhook_endpoints', error, status);
    return (data as unknown as Record<string, unknown>[]).map((r) => withDates<WebhookEndpoint>(r));
  }

  async listDeliveries(f: DeliveriesFilter) {
    let query = this.client.from('hd_webhook_outbox').select(DELIVERY_COLUMNS);
    if (f.accountId) query = query.eq('account_id', f.accountId);
    if (f.status) query = query.eq('status', f.status);
    const { data, error, status } = await query.order('id', { ascending: false }).limit(f.limit);
    if (error) throw classifyPostgrestError('hd_webhook_outbox', error, status);
    return (data as unknown as Record<string, unknown>[]).map((r) =>
      withDates<WebhookDeliveryRow>(r),
    );
  }
}
