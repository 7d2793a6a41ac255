import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { multipartField } from '../../scheduler/llm-gateway/server.ts';
import {
  readJsonBody,
  sendJson,
  standInAnswer,
  standInCompletion,
} from '../../runner/llm/stand-in-model.ts';

/**
 * A small local HTTP server that speaks the OpenAI chat-completions API (POST
 * /v1/chat/completions, structured output included). It STANDS IN FOR THE REAL SERVICE
 * (OpenAI, vLLM, Ollama), which tests cannot reach: by default it answers like the
 * deterministic stand-in model, and a test scripts what a real endpoint does on a bad
 * day: 429 with Retry-After, 500s, malformed JSON, slow or hanging responses. It records
 * every request (body, Authorization header, when it arrived, whether the client aborted
 * it) and the most requests it had in flight at once. POST /v1/audio/transcriptions
 * (multipart) records the raw body and answers as OpenAI documents it: `{ text }`, or for
 * `response_format=verbose_json` the transcript with its timed `segments`; it cannot hear,
 * so its text is made up (`content` of an answer replaces it) and each sentence is
 * said to take 0.4 s from the start of the upload.
 *
 * With `family`, it first checks a request the way that server family is DOCUMENTED to
 * (see FAMILY_RULES below): what it refuses with 400 and in which words, and what it
 * silently ignores. Without, it takes every request (what tests before families expect).
 */

export interface RecordedRequest {
  index: number;
  body: {
    model?: string;
    messages?: { role?: string; content?: unknown }[];
    response_format?: { type?: string; json_schema?: { name?: string; schema?: unknown } };
    temperature?: number;
    max_tokens?: number;
    max_completion_tokens?: number;
  };
  authorization: string | undefined;
  /** Date.now() when the request arrived. */
  receivedAt: number;
  /** The raw body of an audio transcription (multipart/form-data); undefined for chat. */
  audio?: { contentType: string | undefined; raw: Buffer } | undefined;
  /** All message contents, joined: what the model was shown. */
  text: string;
  aborted: boolean;
  answered: boolean;
}

export type Reply =
  /** A completion; `content` replaces the stand-in's answer (e.g. malformed JSON). */
  | { kind: 'answer'; content?: string; delayMs?: number; usage?: boolean }
  | { kind: 'status'; status: number; headers?: Record<string, string>; body?: unknown }
  /** Never answers until released or the client gives up. */
  | { kind: 'hang' };

export type Responder = (request: RecordedRequest) => Reply | undefined;

export interface OpenAiStandIn {
  /** Base URL for HD_LLM_BASE_URL. */
  url: string;
  requests: RecordedRequest[];
  /** Replies used in order, one per request, before the responder. */
  enqueue(...replies: Reply[]): void;
  /** Decides replies when the queue is empty; undefined gives the stand-in answer. */
  respond(responder: Responder | undefined): void;
  /** Answers every hanging request normally (those `which` picks, where given). */
  releaseHanging(which?: (request: RecordedRequest) => boolean): void;
  inFlight(): number;
  /** The most requests in flight at once since the start (or reset). */
  maxInFlight(): number;
  /** Requests the client closed before an answer came. */
  abortedCount(): number;
  reset(): void;
  close(): Promise<void>;
}

export type StandInFamily = keyof typeof FAMILY_RULES;

type Refusal = { status: number; body: unknown } | undefined;
type Body = RecordedRequest['body'];

const openAiRefusal = (param: string, message: string, code = 'unsupported_parameter') => ({
  status: 400,
  body: { error: { message, type: 'invalid_request_error', param, code } },
});

/**
 * What each family refuses, as its documentation and its servers' answers say.
 * - openai-reasoning: OpenAI's reasoning guide and API reference (o1/o3/o4-mini/gpt-5):
 *   `max_tokens` "is not compatible with o-series models" (400 unsupported_parameter, "Use
 *   'max_completion_tokens' instead"); only the default temperature (400 unsupported_value).
 * - vllm: vLLM's OpenAI-compatible server (docs, v0.6+): takes max_tokens,
 *   max_completion_tokens, temperature and response_format json_schema (guided decoding)
 *   and json_object; fields it does not know are ignored with a warning, not refused.
 * - vllm-legacy: vLLM before json_schema support (vllm-project/vllm#7654, v0.5.x): its
 *   pydantic request model allows response_format type 'text' or 'json_object' only and
 *   answers a literal_error in its own shape `{"object": "error", "message", …}` (no
 *   OpenAI `error` key).
 * - ollama: Ollama's OpenAI compatibility page: supported request fields include
 *   max_tokens, temperature and response_format (JSON mode; json_schema since 0.5.0);
 *   max_completion_tokens is not among them and, like any unknown field, is dropped
 *   silently by its JSON decoder.
 * - no-response-format: no particular product: a strict server that refuses
 *   response_format altogether, in OpenAI's error shape; it guards the last step down
 *   (schema in the prompt, answer validated).
 */
const FAMILY_RULES = {
  'openai-reasoning': (body: Body): Refusal => {
    if (body.max_tokens !== undefined)
      return openAiRefusal(
        'max_tokens',
        "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
      );
    if (body.temperature !== undefined && body.temperature !== 1)
      return openAiRefusal(
        'temperature',
        `Unsupported value: 'temperature' does not support ${body.temperature} with this model. Only the default (1) value is supported.`,
        'unsupported_value',
      );
    return undefined;
  },
  vllm: (): Refusal => undefined,
  'vllm-legacy': (body: Body): Refusal => {
    const type = body.response_format?.type;
    if (type === undefined || type === 'text' || type === 'json_object') return undefined;
    return {
      status: 400,
      body: {
        object: 'error',
        message: `[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': "Input should be 'text' or 'json_object'", 'input': '${type}', 'ctx': {'expected': "'text' or 'json_object'"}}]`,
        type: 'BadRequestError',
        param: null,
        code: 400,
      },
    };
  },
  // Takes what the client sends; a max_completion_tokens would be dropped unread, which
  // the tests catch by looking at the request.
  ollama: (): Refusal => undefined,
  'no-response-format': (body: Body): Refusal =>
    body.response_format === undefined
      ? undefined
      : {
          status: 400,
          body: {
            error: {
              message: 'response_format is not supported by this server',
              type: 'invalid_request_error',
              param: 'response_format',
              code: null,
            },
          },
        },
} satisfies Record<string, (body: Body) => Refusal>;

export async function startOpenAiStandIn(
  options: { family?: StandInFamily } = {},
): Promise<OpenAiStandIn> {
  const requests: RecordedRequest[] = [];
  const queue: Reply[] = [];
  const hanging = new Map<RecordedRequest, () => void>();
  let responder: Responder | undefined;
  let peak = 0;
  const inFlight = () => requests.filter((r) => !r.answered && !r.aborted).length;

  const answer = (res: ServerResponse, request: RecordedRequest, reply: Reply) => {
    if (res.destroyed) return;
    if (reply.kind === 'status') {
      res.writeHead(reply.status, { 'content-type': 'application/json', ...reply.headers });
      res.end(
        JSON.stringify(reply.body ?? { error: { message: `stand-in status ${reply.status}` } }),
      );
    } else {
      const content =
        reply.kind === 'answer' && reply.content !== undefined
          ? reply.content
          : standInAnswer(request.body);
      const completion: Record<string, unknown> = standInCompletion(
        request.body,
        content,
        request.index,
      );
      if (reply.kind === 'answer' && reply.usage === false) delete completion.usage;
      const heard = reply.kind === 'answer' ? reply.content : undefined;
      sendJson(res, 200, request.audio ? transcription(request, heard) : completion);
    }
    request.answered = true;
  };

  const server = createServer((req, res) => {
    const audio = req.url?.endsWith('/audio/transcriptions');
    if (req.method !== 'POST' || !(req.url?.endsWith('/chat/completions') || audio)) {
      sendJson(res, 404, { error: { message: 'not found' } });
      return;
    }
    const receivedAt = Date.now();
    const read = audio
      ? readRaw(req).then((raw) => ({ raw, body: {} as RecordedRequest['body'] }))
      : readJsonBody(req).then((body) => ({ raw: undefined as Buffer | undefined, body }));
    void read.then(({ raw, body }) => {
      const request: RecordedRequest = {
        index: requests.length,
        body,
        authorization: req.headers.authorization,
        receivedAt,
        audio: raw && { contentType: req.headers['content-type'], raw },
        text: (body.messages ?? []).map((m) => String(m.content ?? '')).join('\n'),
        aborted: false,
        answered: false,
      };
      requests.push(request);
      peak = Math.max(peak, inFlight());
      res.on('close', () => {
        if (!res.writableFinished) request.aborted = true;
        hanging.delete(request);
      });
      const refusal = options.family ? FAMILY_RULES[options.family](body) : undefined;
      const reply: Reply = refusal
        ? { kind: 'status', status: refusal.status, body: refusal.body }
        : (queue.shift() ?? responder?.(request) ?? { kind: 'answer' });
      if (reply.kind === 'hang') {
        hanging.set(request, () => answer(res, request, { kind: 'answer' }));
      } else if (reply.kind === 'answer' && reply.delayMs) {
        const timer = setTimeout(() => answer(res, request, reply), reply.delayMs);
        res.on('close', () => clearTimeout(timer));
      } else {
        answer(res, request, reply);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}/v1`,
    requests,
    enqueue: (...replies) => void queue.push(...replies),
    respond: (fn) => void (responder = fn),
    releaseHanging(which) {
      for (const [request, release] of [...hanging])
        if (!which || which(request)) {
          hanging.delete(request);
          release();
        }
    },
    inFlight,
    maxInFlight: () => peak,
    abortedCount: () => requests.filter((r) => r.aborted).length,
    reset() {
      requests.length = 0;
      queue.length = 0;
      responder = undefined;
      peak = 0;
    },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((error) => (error ? reject(error) : resolve()));
      }),
  };
}

/** OpenAI's answer to a transcription (API reference: the transcription, verbose_json). */
function transcription(request: RecordedRequest, heard?: string): Record<string, unknown> {
  const text = heard ?? 'stand-in transcript';
  if (multipartField(request.audio!.raw, 'response_format') !== 'verbose_json') return { text };
  const sentences = text.match(/[^.!?]+[.!?]*/g) ?? [text];
  return {
    task: 'transcribe',
    language: 'german',
    duration: 0.4 * sentences.length,
    text,
    segments: sentences.map((sentence, i) => ({
      id: i,
      seek: 0,
      start: 0.4 * i,
      end: 0.4 * (i + 1),
      // Whisper's segment texts start with a space.
      text: ` ${sentence.trim()}`,
      tokens: [50364, 1044],
      temperature: 0,
      avg_logprob: -0.25,
      compression_ratio: 1.2,
      no_speech_prob: 0.01,
    })),
  };
}

async function readRaw(req: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of req) parts.push(part as Buffer);
  return Buffer.concat(parts);
}

/** Polls `predicate` every 10 ms until it holds; fails after `timeoutMs` saying what. */
export async function waitUntil(
  what: string,
  predicate: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
