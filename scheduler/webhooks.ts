import { EventEmitter } from 'node:events';
import { Webhook } from 'standardwebhooks';
import type { Config } from '../control-plane/config.ts';
import type { ControlPlaneDb } from '../control-plane/db/transport.ts';
import {
  webhookOutboxOf,
  type DueWebhook,
  type WebhookOutbox,
} from '../control-plane/db/webhooks.ts';
import type { Logger } from '../control-plane/logger.ts';
import type { AddressGuard } from './public-http.ts';
import { postWebhook, webhookGuard, type PostResult } from './webhook-post.ts';

/** How one delivery attempt ended: a 2xx, another answer, or none (and why). */
export type WebhookOutcome = 'delivered' | 'http_error' | 'refused' | 'timeout' | 'network';

export function outcomeOf(result: PostResult): WebhookOutcome {
  if (result.statusCode === undefined) return result.failure ?? 'network';
  return result.statusCode >= 200 && result.statusCode < 300 ? 'delivered' : 'http_error';
}

export interface WebhookDeliveryEvents {
  /** One POST (redirects included) answered or given up, and recorded. */
  attempt: [outcome: WebhookOutcome, event: DueWebhook];
}

export interface WebhookDeliveryOptions {
  outbox: WebhookOutbox;
  /** Which addresses deliveries may reach (public ones, and HD_WEBHOOK_ALLOW_CIDRS). */
  guard: AddressGuard;
  /** Per delivery, redirects included, in ms. */
  timeoutMs: number;
  /** How often due deliveries are looked for, in ms. */
  pollMs: number;
  /** Deliveries in flight at once. */
  concurrency?: number;
  logger: Logger;
  /** The clock of the webhook-timestamp header (tests pass one). */
  now?: () => Date;
}

/**
 * Delivers the webhook outbox (00013): claims due events, signs each per the Standard
 * Webhooks spec (webhook-id, webhook-timestamp, webhook-signature: HMAC-SHA256 by the
 * `standardwebhooks` package, which receivers' libraries verify) and records the answer;
 * the SQL decides retry and backoff. At least once: a scheduler that dies after the POST
 * and before the record sends the event again, with the same webhook-id.
 */
export class WebhookDelivery extends EventEmitter<WebhookDeliveryEvents> {
  readonly #o: WebhookDeliveryOptions;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<unknown> = Promise.resolve();

  constructor(options: WebhookDeliveryOptions) {
    super();
    this.#o = options;
  }

  start(): void {
    const tick = () => {
      this.#running = this.deliverDue()
        .catch((error: unknown) => {
          this.#o.logger.warn({ err: error }, 'webhook delivery pass failed');
          return 0;
        })
        .then((sent) => {
          // A full pass means more are due: go on at once rather than after the poll.
          const full = sent >= (this.#o.concurrency ?? 8);
          if (this.#timer) this.#timer = setTimeout(tick, full ? 0 : this.#o.pollMs);
        });
    };
    this.#timer = setTimeout(tick, 0);
  }

  async stop(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }

  /** One pass: delivers what is due now; resolves to the number of attempts made. */
  async deliverDue(): Promise<number> {
    const limit = this.#o.concurrency ?? 8;
    // The hold outlasts the delivery's own time limit, so no other scheduler sends it meanwhile.
    const leaseSeconds = Math.ceil(this.#o.timeoutMs / 1000) + 30;
    const due = await this.#o.outbox.claim(limit, leaseSeconds);
    await Promise.all(due.map((event) => this.#deliver(event)));
    return due.length;
  }

  async #deliver(event: DueWebhook): Promise<void> {
    const body = JSON.stringify(event.payload);
    const timestamp = this.#o.now?.() ?? new Date();
    const headers = {
      'content-type': 'application/json',
      'user-agent': 'hd-runner-webhooks',
      'webhook-id': event.event_id,
      'webhook-timestamp': Math.floor(timestamp.getTime() / 1000).toString(),
      'webhook-signature': new Webhook(event.secret).sign(event.event_id, timestamp, body),
    };
    const result = await postWebhook(event.url, headers, body, {
      guard: this.#o.guard,
      timeoutMs: this.#o.timeoutMs,
    });
    await this.#o.outbox.record(event.id, result);
    const outcome = outcomeOf(result);
    this.emit('attempt', outcome, event);
    const ok = outcome === 'delivered';
    // The URL's host only: a path or query may carry the tenant's own token.
    this.#o.logger[ok ? 'debug' : 'warn'](
      {
        event_id: event.event_id,
        event_type: event.event_type,
        host: new URL(event.url).host,
        attempt: event.attempts,
        status_code: result.statusCode,
        error: result.error,
        latency_ms: result.latencyMs,
      },
      ok ? 'webhook delivered' : 'webhook delivery failed',
    );
  }
}

/** The scheduler's delivery, configured by HD_WEBHOOK_* (started and stopped with it). */
export function webhookDeliveryFor(
  config: Pick<Config, 'HD_WEBHOOK_ALLOW_CIDRS' | 'HD_WEBHOOK_TIMEOUT_MS' | 'HD_WEBHOOK_POLL_MS'>,
  db: ControlPlaneDb,
  logger: Logger,
): WebhookDelivery {
  return new WebhookDelivery({
    outbox: webhookOutboxOf(db),
    guard: webhookGuard(config.HD_WEBHOOK_ALLOW_CIDRS),
    timeoutMs: config.HD_WEBHOOK_TIMEOUT_MS,
    pollMs: config.HD_WEBHOOK_POLL_MS,
    logger,
  });
}
