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

/** The webhook outbox functions of 00013 on either transport. */
export interface WebhookOutbox {
  claim(limit: number, leaseSeconds: number): Promise<DueWebhook[]>;
  record(id: number, attempt: WebhookAttempt): Promise<void>;
  replay(id: number): Promise<void>;
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
}
