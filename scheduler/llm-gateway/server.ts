import { EventEmitter } from 'node:events';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { ClaimedJob } from '../../contract/jobs.ts';
import type { Admission, LlmLedger, LlmUsageRecord } from '../../control-plane/db/llm-ledger.ts';
import type { Logger } from '../../control-plane/logger.ts';
import { retryAfterMs } from '../../runner/llm/retry.ts';
import {
  chatTokenCeiling,
  costUsd,
  credentialHash,
  newCredential,
  reportedUsage,
  UsageRecorder,
  type Price,
  type TokenUsage,
} from './budgets.ts';
import { LlmLimiter } from './limiter.ts';
import { readBody } from '../http-body.ts';

/** An endpoint the gateway forwards to, with the key that stays in the scheduler. */
export interface Upstream {
  /** OpenAI-compatible base URL (…/v1). */
  baseURL: string;
  apiKey: string | undefined;
}

export interface LlmGatewayOptions {
  ledger: LlmLedger;
  log: Logger;
  /** Where chat completions go (HD_LLM_BASE_URL + HD_LLM_API_KEY). */
  chat: Upstream | undefined;
  /** Where audio transcriptions go (HD_TRANSCRIBE_BASE_URL + its key). */
  transcribe: Upstream | undefined;
  transcribeModel: string;
  /** The models runners may name: what the scheduler's own settings name (offeredModels). */
  models: ReadonlySet<string>;
  limiter: LlmLimiter;
  prices: Record<string, Price>;
  /** Output tokens reserved for a request that names no limit (HD_LLM_MAX_OUTPUT_TOKENS). */
  defaultOutputTokens: number;
  /** Budget of accounts without a row in hd_llm_budgets (HD_LLM_DAILY_TOKEN_BUDGET). */
  defaultDailyTokens: number | undefined;
  /** Longest one forwarded request may take (HD_LLM_TIMEOUT_MS). */
  timeoutMs: number;
}

export interface LlmGatewayEvents {
  /** Tokens a provider reported for one request through the gateway. */
  usage: [model: string, usage: TokenUsage];
}

const MAX_BODY_BYTES = { chat: 16 << 20, audio: 32 << 20 } as const; // OpenAI's audio limit: 25 MB
// Response headers a client may act on (rate-limit hints, request ids); the rest stay here.
const PASSED_HEADERS = /^(content-type|retry-after|retry-after-ms|x-ratelimit-.*|x-request-id)$/i;
const agents = {
  http: new http.Agent({ keepAlive: true, maxSockets: Infinity }),
  https: new https.Agent({ keepAlive: true, maxSockets: Infinity }),
};

/**
 * The scheduler's OpenAI-compatible gateway (POST /v1/chat/completions, structured output
 * included, and POST /v1/audio/transcriptions): runners send their job's credential
 * instead of the provider's key. Each request is admitted in SQL (credential bound to the
 * job's current lease, the account's daily budget: hd_llm_admit), waits for its place
 * under the limits of its provider + model (limiter.ts), goes to the provider with the
 * scheduler's key, and comes back as the provider sent it (status, body, Retry-After), so
 * the runner's client adapts as it would talking to the provider itself. Bodies are
 * forwarded byte for byte.
 */
export class LlmGateway extends EventEmitter<LlmGatewayEvents> {
  readonly #o: LlmGatewayOptions;
  readonly #server: http.Server;
  readonly #usage: UsageRecorder<LlmUsageRecord>;
  #url: string | undefined;

  constructor(options: LlmGatewayOptions) {
    super();
    this.#o = options;
    this.#usage = new UsageRecorder(
      (rows) => options.ledger.record(rows),
      (error, rows) =>
        options.log.error(
          { err: error, jobs: [...new Set(rows.map((r) => r.jobId))] },
          'llm usage not recorded',
        ),
    );
    this.#server = http.createServer((req, res) => {
      this.#handle(req, res).catch((error: unknown) => {
        this.#o.log.error({ err: error }, 'llm gateway: request failed');
        if (!res.headersSent) reply(res, 500, 'server_error', 'the gateway failed');
        else res.destroy();
      });
    });
    this.#server.keepAliveTimeout = 65_000;
  }

  /** The limits its requests wait under (their counts: limiter.inFlight, limiter.waiting). */
  get limiter(): LlmLimiter {
    return this.#o.limiter;
  }

  /** Base URL runners use (…/v1); set once listening. */
  get url(): string {
    if (!this.#url) throw new Error('llm gateway: not listening');
    return this.#url;
  }

  async listen(host: string, port: number): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, host, () => resolve());
    });
    const address = this.#server.address() as AddressInfo;
    const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    this.#url = `http://${shown}:${address.port}/v1`;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.#server.closeAllConnections();
      this.#server.close(() => resolve());
    });
  }

  /** A new credential for the job's runner, accepted while this lease is the job's. */
  async issue(job: ClaimedJob, validUntil: Date): Promise<string> {
    const token = newCredential();
    await this.#o.ledger.grantCredential(
      job.id,
      job.lease_token,
      credentialHash(token),
      validUntil,
    );
    return token;
  }

  /** Forgets the credentials of leases that ended. */
  async dropEnded(): Promise<void> {
    await this.#o.ledger.dropCredentials();
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '').split('?')[0];
    const kind =
      path === '/v1/chat/completions' ? 'chat' : path === '/v1/audio/transcriptions' ? 'audio' : '';
    if (req.method !== 'POST' || !kind)
      return reply(res, 404, 'invalid_request_error', `no route ${req.method} ${path}`);
    const upstream = kind === 'chat' ? this.#o.chat : this.#o.transcribe;
    if (!upstream)
      return reply(res, 404, 'invalid_request_error', `no ${kind} endpoint is configured`);
    const token = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '')?.[1];
    if (!token) return reply(res, 401, 'invalid_request_error', 'no credential', 'invalid_api_key');
    const body = await readBody(req, MAX_BODY_BYTES[kind]);
    if (!body) return reply(res, 413, 'invalid_request_error', 'request body too large');

    let model = this.#o.transcribeModel;
    let ceiling = 0; // a transcription's tokens are not known before it is made
    if (kind === 'chat') {
      const json = parseJson(body);
      if (typeof json?.model !== 'string' || !json.model)
        return reply(res, 400, 'invalid_request_error', 'the request names no model');
      // A streamed answer reports no usage (OpenAI's, without stream_options): a budget
      // could not count it. Runners never stream; the gateway reads answers whole anyway.
      if (json.stream !== undefined && json.stream !== false)
        return reply(
          res,
          400,
          'invalid_request_error',
          'stream is not supported through the gateway (its usage could not be counted)',
        );
      model = json.model;
      ceiling = chatTokenCeiling(json, this.#o.defaultOutputTokens);
    } else {
      const named = multipartFields(body, 'model', req.headers['content-type']);
      if (named.length > 1)
        return reply(res, 400, 'invalid_request_error', 'the request names more than one model');
      model = named[0] ?? model;
    }
    // The provider's key serves the models the operator chose, not any a runner names (a
    // pricier one, or one without a price, which a cost budget would count at 0).
    if (!this.#o.models.has(model))
      return reply(
        res,
        400,
        'invalid_request_error',
        `model '${model.slice(0, 100)}' is not offered through this gateway (HD_LLM_MODEL, HD_TRANSCRIBE_MODEL or a model of HD_LLM_PRICES)`,
        'model_not_found',
      );
    const price = this.#o.prices[model];
    const reservedCost = costUsd(price, { prompt: ceiling, completion: 0, cached: 0 });
    const admission = await this.#o.ledger.admit(
      credentialHash(token),
      model,
      ceiling,
      reservedCost,
      this.#o.defaultDailyTokens,
    );
    if (admission.verdict === 'refused')
      return reply(
        res,
        401,
        'invalid_request_error',
        'the credential is not valid: its job ended or its lease is no longer current',
        'invalid_api_key',
      );
    if (admission.verdict === 'budget') return reply(res, 402, ...budgetRefusal(admission));

    const gone = new AbortController();
    res.on('close', () => gone.abort(new Error('the runner closed the request')));
    let answer: Answer | undefined;
    let usage: TokenUsage | undefined;
    let permit;
    try {
      permit = await this.#o.limiter.acquire(
        upstream.baseURL,
        model,
        admission.account_id,
        ceiling,
        gone.signal,
      );
      answer = await forward(upstream, kind, req, body, this.#o.timeoutMs, gone.signal);
      if (answer.status === 429) {
        const waitMs = retryAfterMs(new Headers(passedHeaders(answer.headers)));
        if (waitMs !== undefined) this.#o.limiter.pause(upstream.baseURL, model, waitMs);
      }
      // An answer without usage is charged what was reserved for it (its most tokens).
      if (answer.status < 300)
        usage = reportedUsage(parseJson(answer.body)) ?? {
          prompt: ceiling,
          completion: 0,
          cached: 0,
        };
    } catch (error) {
      if (!gone.signal.aborted)
        reply(
          res,
          502,
          'server_error',
          `the model endpoint could not be reached: ${message(error)}`,
        );
    } finally {
      permit?.release(usage ? usage.prompt + usage.completion : 0);
    }
    if (usage) this.emit('usage', model, usage);
    const recorded = this.#record(admission, model, usage, ceiling, reservedCost, price);
    // Where the account has a budget, its next request must find this reservation swapped
    // for the real usage, or it could be refused for tokens never used: recorded first.
    if (admission.reserved) await recorded;
    if (answer && !gone.signal.aborted)
      res.writeHead(answer.status, passedHeaders(answer.headers)).end(answer.body);
  }

  #record(
    admission: Extract<Admission, { verdict: 'admitted' }>,
    model: string,
    usage: TokenUsage | undefined,
    ceiling: number,
    reservedCost: number,
    price: Price | undefined,
  ): Promise<void> {
    const used = usage ?? { prompt: 0, completion: 0, cached: 0 };
    return this.#usage.add({
      accountId: admission.account_id,
      day: admission.day,
      jobId: admission.job_id,
      model,
      reservedTokens: admission.reserved ? ceiling : 0,
      reservedCostUsd: admission.reserved ? reservedCost : 0,
      promptTokens: used.prompt,
      completionTokens: used.completion,
      cachedTokens: used.cached,
      costUsd: costUsd(price, used),
    });
  }
}

function budgetRefusal(a: Extract<Admission, { verdict: 'budget' }>) {
  const spent = [
    a.budget_tokens !== null ? `${a.used_tokens} of ${a.budget_tokens} tokens` : '',
    a.budget_cost_usd !== null ? `${a.used_cost_usd} of ${a.budget_cost_usd} USD` : '',
  ]
    .filter(Boolean)
    .join(', ');
  return [
    'budget_exceeded',
    `the account's language-model budget for ${a.day} (UTC) would be exceeded (${spent} used or reserved); retried after it resets`,
    'LLM_BUDGET_EXCEEDED',
  ] as const;
}

/** An error as OpenAI words it: `{ error: { message, type, code } }`. */
function reply(
  res: http.ServerResponse,
  status: number,
  type: string,
  text: string,
  code: string | null = null,
): void {
  res
    .writeHead(status, { 'content-type': 'application/json' })
    .end(JSON.stringify({ error: { message: text, type, param: null, code } }));
}

function parseJson(body: Buffer): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(body.toString('utf8'));
    return value && typeof value === 'object' ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** A text field of a multipart/form-data body (the transcription's `model`): its first value. */
export function multipartField(body: Buffer, name: string): string | undefined {
  return multipartFields(body, name)[0];
}

/**
 * Every value of a field of a multipart/form-data body, parts split at the boundary (of
 * `contentType` where given, else the body's first line) as a provider's parser splits
 * them: a second `model` after the file, or a name unquoted or RFC 5987-encoded, is seen
 * as the provider sees it.
 */
export function multipartFields(body: Buffer, name: string, contentType?: string): string[] {
  const given = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType ?? '');
  const firstLine = body.indexOf('\r\n');
  const boundary = given
    ? `--${given[1] ?? given[2]}`
    : firstLine > 2
      ? body.subarray(0, firstLine).toString('latin1')
      : '';
  if (!boundary) return [];
  const delimiter = Buffer.from(boundary, 'latin1');
  const values: string[] = [];
  for (let at = body.indexOf(delimiter); at >= 0;) {
    const headStart = at + delimiter.length + 2;
    const headEnd = body.indexOf('\r\n\r\n', headStart);
    if (headEnd < 0) break;
    const next = body.indexOf(Buffer.from(`\r\n${boundary}`, 'latin1'), headEnd);
    const disposition = /^content-disposition:(.*)$/im.exec(
      body.subarray(headStart, headEnd).toString('latin1'),
    )?.[1];
    const field = /(?:^|;)\s*name(\*?)\s*=\s*(?:"([^"]*)"|([^;\s]+))/i.exec(disposition ?? '');
    const raw = field?.[2] ?? field?.[3];
    // name*=utf-8''model (RFC 5987): the charset and language dropped, the rest unescaped.
    const fieldName = field?.[1] ? unescapeOr(raw?.replace(/^[^']*'[^']*'/, '')) : raw;
    if (fieldName === name)
      values.push(
        body
          .subarray(headEnd + 4, next < 0 ? body.length : next)
          .toString('utf8')
          .slice(0, 200),
      );
    if (next < 0) break;
    at = next + 2;
  }
  return values;
}

function unescapeOr(text: string | undefined): string | undefined {
  try {
    return text === undefined ? undefined : decodeURIComponent(text);
  } catch {
    return text;
  }
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** Sends the runner's body to the provider with the scheduler's key; reads the whole answer. */
function forward(
  upstream: Upstream,
  kind: 'chat' | 'audio',
  req: http.IncomingMessage,
  body: Buffer,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<Answer> {
  const url = new URL(
    `${upstream.baseURL.replace(/\/$/, '')}/${kind === 'chat' ? 'chat/completions' : 'audio/transcriptions'}`,
  );
  const secure = url.protocol === 'https:';
  return new Promise((resolve, reject) => {
    const outgoing = (secure ? https : http).request(
      url,
      {
        method: 'POST',
        agent: secure ? agents.https : agents.http,
        headers: {
          'content-type': req.headers['content-type'] ?? 'application/json',
          'content-length': body.length,
          accept: 'application/json',
          ...(upstream.apiKey && { authorization: `Bearer ${upstream.apiKey}` }),
        },
        timeout: timeoutMs,
        signal,
      },
      (incoming) => {
        const parts: Buffer[] = [];
        incoming.on('data', (part: Buffer) => parts.push(part));
        incoming.on('error', reject);
        incoming.on('end', () =>
          resolve({
            status: incoming.statusCode ?? 502,
            headers: incoming.headers,
            body: Buffer.concat(parts),
          }),
        );
      },
    );
    outgoing.on('timeout', () => outgoing.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    outgoing.on('error', reject);
    outgoing.end(body);
  });
}

function passedHeaders(headers: http.IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers))
    if (PASSED_HEADERS.test(name) && typeof value === 'string') out[name] = value;
  return out;
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
