import { EventEmitter } from 'node:events';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { ClaimedJob } from '../../contract/jobs.ts';
import type { Admission, LlmLedger, LlmUsageRecord } from '../../control-plane/db/llm-ledger.ts';
import type { Logger } from '../../control-plane/logger.ts';
import { retryAfterMs } from '../../runner/llm/retry.ts';
import { readBody } from '../http-body.ts';
import {
  capPeerConnections,
  RUNNER_FACING,
  type PeerConnectionStats,
} from '../peer-connections.ts';
import { BodyBuffer, type BodyBufferStats, type BodyPlace } from './body-buffer.ts';
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
import { CredentialTable } from './credentials.ts';
import { LlmLimiter } from './limiter.ts';
import { forward, passedHeaders, type Answer, type Upstream } from './upstream.ts';

export type { Upstream } from './upstream.ts';

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
  /** Requests one credential may have in the gateway at once (HD_LLM_GATEWAY_RUNNER_REQUESTS). */
  runnerRequests: number;
  /** Bytes of request bodies held at once, all runners (HD_LLM_GATEWAY_BUFFER_BYTES). */
  bufferBytes: number;
}

export interface LlmGatewayEvents {
  /** Tokens a provider reported for one request through the gateway. */
  usage: [model: string, usage: TokenUsage];
}

/** What the gateway holds and has read of requests: BodyBuffer's counts, and the wire's. */
export interface GatewayIntake extends BodyBufferStats, PeerConnectionStats {
  /** Bytes read off its connections since the start (headers and bodies). */
  receivedBytes: number;
  /** Requests in the gateway now (read, waiting or at the provider), all credentials. */
  requests: number;
  /** Requests refused 429 unread since the start: a runner's or an account's share was held. */
  sharesRefused: number;
}

// How long a refused connection stays open, unread, after its answer (refuse()).
const LINGER_MS = 2000;
export const MAX_BODY_BYTES = { chat: 16 << 20, audio: 32 << 20 } as const; // OpenAI's audio limit: 25 MB

/**
 * Body bytes one account's runners may hold or wait for at once: a quarter of the buffer,
 * at least two of the largest bodies. Without it one runner (8 requests of 32 MiB declared,
 * their bodies trickled) held the whole default buffer and every other tenant's requests
 * waited behind it (red team, test/llm-gateway-red-team.test.ts).
 */
export function accountShare(bufferBytes: number): number {
  return Math.max(Math.floor(bufferBytes / 4), 2 * MAX_BODY_BYTES.audio);
}

/** A request past the admission that comes before its body: whose it is, and its body. */
interface Admitted {
  tokenSha256: string;
  body: Buffer;
}

/**
 * The scheduler's OpenAI-compatible gateway (POST /v1/chat/completions, structured output
 * included, and POST /v1/audio/transcriptions): runners send their job's credential
 * instead of the provider's key. Before a byte of a body is read, the credential must be
 * one the gateway knows (credentials.ts), the body within its limit by Content-Length,
 * the credential under its requests in flight and the body within the room left for
 * bodies (body-buffer.ts); a refusal there closes the connection with the body unread.
 * Then each request is admitted in SQL (credential bound to the job's current lease, the
 * account's daily budget: hd_llm_admit), waits for its place under the limits of its
 * provider + model (limiter.ts), goes to the provider with the scheduler's key, and comes
 * back as the provider sent it (status, body, Retry-After), so the runner's client adapts
 * as it would talking to the provider itself. Bodies are forwarded byte for byte.
 */
export class LlmGateway extends EventEmitter<LlmGatewayEvents> {
  readonly #o: LlmGatewayOptions;
  readonly #server: http.Server;
  readonly #usage: UsageRecorder<LlmUsageRecord>;
  readonly #credentials: CredentialTable;
  readonly #bodies: BodyBuffer;
  /** Requests in the gateway per credential (by hash): read, waiting or at the provider. */
  readonly #perCredential = new Map<string, number>();
  /** Body bytes per account: held, or waiting for room (accountShare). */
  readonly #perAccount = new Map<string, number>();
  #sharesRefused = 0;
  readonly #sockets = new Set<Socket>();
  readonly #peers: () => PeerConnectionStats;
  /** Bytes read by connections that closed. */
  #receivedClosed = 0;
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
    this.#credentials = new CredentialTable((hash) => options.ledger.credential(hash));
    this.#bodies = new BodyBuffer(options.bufferBytes);
    this.#server = http.createServer(RUNNER_FACING, (req, res) => {
      this.#handle(req, res).catch((error: unknown) => {
        this.#o.log.error({ err: error }, 'llm gateway: request failed');
        if (!res.headersSent) reply(res, 500, 'server_error', 'the gateway failed');
        else res.destroy();
      });
    });
    this.#server.keepAliveTimeout = 65_000;
    this.#peers = capPeerConnections(this.#server, (socket) => {
      this.#sockets.add(socket);
      socket.once('close', () => {
        this.#sockets.delete(socket);
        this.#receivedClosed += socket.bytesRead;
      });
    });
  }

  /** The limits its requests wait under (their counts: limiter.inFlight, limiter.waiting). */
  get limiter(): LlmLimiter {
    return this.#o.limiter;
  }

  /** Bodies held and bytes read: what a flood of requests costs it (and a test reads). */
  get intake(): GatewayIntake {
    let live = 0;
    for (const socket of this.#sockets) live += socket.bytesRead;
    return {
      ...this.#bodies.stats,
      receivedBytes: this.#receivedClosed + live,
      ...this.#peers(),
      requests: [...this.#perCredential.values()].reduce((sum, n) => sum + n, 0),
      sharesRefused: this.#sharesRefused,
    };
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
    const hash = credentialHash(token);
    await this.#o.ledger.grantCredential(job.id, job.lease_token, hash, validUntil);
    this.#credentials.remember(hash, {
      jobId: job.id,
      accountId: job.account_id,
      validUntil: validUntil.getTime(),
    });
    return token;
  }

  /** Forgets the credentials of leases that ended (`job`'s: its runner just ended). */
  async dropEnded(job?: Pick<ClaimedJob, 'id'>): Promise<void> {
    if (job) this.#credentials.forgetJob(job.id);
    this.#credentials.dropExpired();
    await this.#o.ledger.dropCredentials();
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '').split('?')[0];
    const kind =
      path === '/v1/chat/completions' ? 'chat' : path === '/v1/audio/transcriptions' ? 'audio' : '';
    if (req.method !== 'POST' || !kind)
      return refuse(req, 404, 'invalid_request_error', `no route ${req.method} ${path}`);
    const upstream = kind === 'chat' ? this.#o.chat : this.#o.transcribe;
    if (!upstream)
      return refuse(req, 404, 'invalid_request_error', `no ${kind} endpoint is configured`);
    const token = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '')?.[1];
    if (!token)
      return refuse(req, 401, 'invalid_request_error', 'no credential', 'invalid_api_key');
    const tokenSha256 = credentialHash(token);
    const known = await this.#credentials.check(token, tokenSha256);
    if (known.verdict === 'busy')
      return refuse(req, 503, 'server_error', 'the gateway is busy checking credentials', null, {
        'retry-after': '1',
      });
    if (known.verdict === 'unknown') return refuse(req, 401, ...invalidCredential);
    const declared = Number(req.headers['content-length']);
    if (declared > MAX_BODY_BYTES[kind])
      return refuse(req, 413, 'invalid_request_error', tooLarge(kind));
    const count = this.#perCredential.get(tokenSha256) ?? 0;
    if (count >= this.#o.runnerRequests) {
      this.#sharesRefused += 1;
      return refuse(
        req,
        429,
        'rate_limit_error',
        `this runner's credential has ${count} requests in the gateway, its most (HD_LLM_GATEWAY_RUNNER_REQUESTS); retry once one is answered`,
        'runner_requests_exceeded',
        { 'retry-after': '1' },
      );
    }
    const account = known.credential.accountId;
    // Room for the body before its first byte is read: its declared length, else its most.
    const expected = declared >= 0 ? declared : MAX_BODY_BYTES[kind];
    let accountHeld = expected;
    const accountBytes = this.#perAccount.get(account) ?? 0;
    if (accountBytes + accountHeld > accountShare(this.#o.bufferBytes)) {
      this.#sharesRefused += 1;
      return refuse(
        req,
        429,
        'rate_limit_error',
        `this runner's account has ${accountBytes} bytes of request bodies in the gateway, its share (a quarter of HD_LLM_GATEWAY_BUFFER_BYTES, at least 64 MiB); retry once one is answered`,
        'account_buffer_exceeded',
        { 'retry-after': '1' },
      );
    }
    addToCount(this.#perAccount, account, accountHeld);
    addToCount(this.#perCredential, tokenSha256, 1);
    const gone = new AbortController();
    // 'close' comes after every answer too: only one that was not sent is a runner giving up
    // (an Error and an abort per request: ~8% of the request path in a CPU profile).
    res.on('close', () => {
      if (!res.writableFinished) gone.abort(new Error('the runner closed the request'));
    });
    let place: BodyPlace | undefined;
    try {
      place = await this.#bodies.reserve(expected, gone.signal);
      const body = await readBody(req, MAX_BODY_BYTES[kind]);
      if (!body) return refuse(req, 413, 'invalid_request_error', tooLarge(kind));
      place.shrink(body.length);
      addToCount(this.#perAccount, account, body.length - accountHeld);
      accountHeld = body.length;
      await this.#serve(req, res, kind, upstream, { tokenSha256, body }, gone);
    } catch (error) {
      if (!gone.signal.aborted) throw error;
    } finally {
      place?.release();
      addToCount(this.#perAccount, account, -accountHeld);
      addToCount(this.#perCredential, tokenSha256, -1);
    }
  }

  /** A request whose body was read: checked, admitted in SQL, sent, answered, counted. */
  async #serve(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    kind: 'chat' | 'audio',
    upstream: Upstream,
    { tokenSha256, body }: Admitted,
    gone: AbortController,
  ): Promise<void> {
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
      ceiling = chatTokenCeiling(json, body.length, this.#o.defaultOutputTokens);
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
      tokenSha256,
      model,
      ceiling,
      reservedCost,
      this.#o.defaultDailyTokens,
    );
    if (admission.verdict === 'refused') {
      this.#credentials.forget(tokenSha256); // its next request is refused unread
      return reply(res, 401, ...invalidCredential);
    }
    if (admission.verdict === 'budget') return reply(res, 402, ...budgetRefusal(admission));

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
      leaseToken: admission.lease_token,
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

const invalidCredential = [
  'invalid_request_error',
  'the credential is not valid: its job ended or its lease is no longer current',
  'invalid_api_key',
] as const;

const tooLarge = (kind: 'chat' | 'audio') =>
  `request body too large (the most for ${kind === 'chat' ? 'a chat completion' : 'a transcription'}: ${MAX_BODY_BYTES[kind]} bytes)`;

/**
 * An error answered before the body was read, written on the socket itself with
 * `connection: close`: through the response object, Node would read the body off the wire
 * (to reuse the connection) or reset it at once, and a client still sending may then see
 * the reset instead of the answer. Here nothing more is read (Node's parser stops at its
 * buffer's high-water mark once nobody reads the request) and the connection is ended at
 * once, then destroyed after LINGER_MS, by when the client has read the answer.
 */
function refuse(
  req: http.IncomingMessage,
  status: number,
  type: string,
  text: string,
  code: string | null = null,
  headers: Record<string, string> = {},
): void {
  const body = JSON.stringify({ error: { message: text, type, param: null, code } });
  const head = Object.entries({
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(body)),
    connection: 'close',
    ...headers,
  })
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join('');
  const socket = req.socket;
  socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n${head}\r\n${body}`);
  setTimeout(() => socket.destroy(), LINGER_MS).unref();
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

/** Adds `delta` to `key`'s count; a count down to 0 leaves the map (it stays small). */
function addToCount(counts: Map<string, number>, key: string, delta: number): void {
  const count = (counts.get(key) ?? 0) + delta;
  if (count > 0) counts.set(key, count);
  else counts.delete(key);
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

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
