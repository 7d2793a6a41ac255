import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
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
 * every request (body, Authorization header, whether the client aborted it).
 */

export interface RecordedRequest {
  index: number;
  body: {
    model?: string;
    messages?: { role?: string; content?: unknown }[];
    response_format?: { type?: string; json_schema?: { name?: string; schema?: unknown } };
  };
  authorization: string | undefined;
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
  /** Answers every hanging request normally. */
  releaseHanging(): void;
  inFlight(): number;
  /** Requests the client closed before an answer came. */
  abortedCount(): number;
  reset(): void;
  close(): Promise<void>;
}

export async function startOpenAiStandIn(): Promise<OpenAiStandIn> {
  const requests: RecordedRequest[] = [];
  const queue: Reply[] = [];
  const hanging = new Map<RecordedRequest, () => void>();
  let responder: Responder | undefined;

  const answer = (res: ServerResponse, request: RecordedRequest, reply: Reply) => {
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
      sendJson(res, 200, completion);
    }
    request.answered = true;
  };

  const server = createServer((req, res) => {
    if (req.method !== 'POST' || !req.url?.endsWith('/chat/completions')) {
      sendJson(res, 404, { error: { message: 'not found' } });
      return;
    }
    void readJsonBody(req).then((body) => {
      const request: RecordedRequest = {
        index: requests.length,
        body,
        authorization: req.headers.authorization,
        text: (body.messages ?? []).map((m) => String(m.content ?? '')).join('\n'),
        aborted: false,
        answered: false,
      };
      requests.push(request);
      res.on('close', () => {
        if (!res.writableFinished) request.aborted = true;
        hanging.delete(request);
      });
      const reply = queue.shift() ?? responder?.(request) ?? { kind: 'answer' };
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
    releaseHanging() {
      for (const release of [...hanging.values()]) release();
      hanging.clear();
    },
    inFlight: () => requests.filter((r) => !r.answered && !r.aborted).length,
    abortedCount: () => requests.filter((r) => r.aborted).length,
    reset() {
      requests.length = 0;
      queue.length = 0;
      responder = undefined;
    },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((error) => (error ? reject(error) : resolve()));
      }),
  };
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
