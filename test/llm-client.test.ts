import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { HdError } from '../contract/errors.ts';
import { loadConfig } from '../control-plane/config.ts';
import { createLogger } from '../control-plane/logger.ts';
import { LlmClient, llmSettings } from '../runner/llm/client.ts';
import { responseJsonSchema } from '../runner/llm/json-schema.ts';
import { INTERPRETATION_PROMPT, synthesisSchema } from '../runner/llm/prompts.ts';
import { retryAfterMs } from '../runner/llm/retry.ts';
import { startOpenAiStandIn, waitUntil, type OpenAiStandIn } from './helpers/openai-server.ts';
import { memoryLogger } from './helpers/runtime.ts';

// The OpenAI service is met by a local stand-in server speaking its wire format
// (test/helpers/openai-server.ts); nothing here talks to a real model.
let server: OpenAiStandIn;
beforeAll(async () => {
  server = await startOpenAiStandIn();
});
afterAll(() => server.close());
beforeEach(() => server.reset());

const API_KEY = 'sk-test-0123456789-SECRET';
const silent = createLogger({ level: 'silent' });

function client(
  env: Record<string, string> = {},
  signal = new AbortController().signal,
  log = silent,
) {
  const config = loadConfig({
    HD_LLM_BASE_URL: server.url,
    HD_LLM_API_KEY: API_KEY,
    HD_LLM_MODEL: 'test-model',
    HD_LLM_RETRY_BASE_MS: '5',
    HD_LLM_TIMEOUT_MS: '2000',
    ...env,
  });
  return new LlmClient(llmSettings(config), { log, signal });
}

const P = INTERPRETATION_PROMPT;
const ask = (c: LlmClient, text = 'Acme Corp supplies Globex. Staff must wear helmets.') =>
  c.structured({
    task: P.task,
    schema: P.schema,
    system: P.system,
    user: P.user({ content: text, page_start: 1, page_end: 1 }),
  });

async function failure(promise: Promise<unknown>): Promise<HdError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof HdError)) throw new Error(`expected an HdError, got ${String(error)}`);
  return error;
}

describe('LLM client against a stand-in OpenAI server', () => {
  it('asks for structured output with the JSON schema generated from zod, and validates the answer', async () => {
    const c = client({ HD_LLM_PRICE_INPUT_PER_MTOK: '1000', HD_LLM_PRICE_OUTPUT_PER_MTOK: '2000' });
    const result = await ask(c);
    expect(result.value.relations).toContainEqual(
      expect.objectContaining({ source: 'Acme Corp', relation: 'supplies', target: 'Globex' }),
    );
    expect(result.value.rules).toEqual(['Staff must wear helmets.']);
    const [request] = server.requests;
    expect(request!.authorization).toBe(`Bearer ${API_KEY}`);
    expect(request!.body.model).toBe('test-model');
    expect(request!.body.response_format).toEqual({
      type: 'json_schema',
      json_schema: { name: 'interpretation', schema: responseJsonSchema(P.schema), strict: true },
    });
    expect(result.usage).toMatchObject({ requests: 1, retries: 0, repaired: false });
    expect(result.usage.prompt_tokens).toBeGreaterThan(0);
    const stats = c.meter.stats();
    expect(stats).toMatchObject({ calls: 1, requests: 1, model: 'test-model' });
    const expected = (stats.prompt_tokens * 1000 + stats.completion_tokens * 2000) / 1e6;
    expect(stats.cost_usd_estimate).toBeCloseTo(expected, 6);
  });

  it('rejects zod schemas that strict structured output cannot express', () => {
    expect(() =>
      responseJsonSchema(
        synthesisSchema.extend({ x: synthesisSchema.shape.description.optional() }),
      ),
    ).toThrow(/optional: x/);
  });

  it('honours 429 Retry-After (seconds and retry-after-ms) before asking again', async () => {
    // The wait the client chose is read from its retry log line, not from the clock: a busy
    // machine makes any wait longer. Only "it did wait" is timed (a lower bound holds).
    const { log, lines } = memoryLogger('warn');
    const waits = () => lines.map((l) => (JSON.parse(l) as { wait_ms?: number }).wait_ms);
    server.enqueue({ kind: 'status', status: 429, headers: { 'retry-after': '1' } });
    const started = performance.now();
    const result = await ask(client({}, undefined, log));
    expect(performance.now() - started).toBeGreaterThanOrEqual(950);
    expect(result.usage).toMatchObject({ requests: 2, retries: 1 });
    expect(waits()).toEqual([1000]);

    server.enqueue({
      kind: 'status',
      status: 429,
      headers: { 'retry-after-ms': '30', 'retry-after': '60' },
    });
    await ask(client({}, undefined, log));
    expect(waits()).toEqual([1000, 30]);
    expect(
      retryAfterMs(new Headers({ 'retry-after': new Date(Date.now() + 5000).toUTCString() })),
    ).toBeGreaterThan(3000);
  });

  it('fails retryable, without waiting, when Retry-After is longer than HD_LLM_RETRY_MAX_MS', async () => {
    server.enqueue({ kind: 'status', status: 429, headers: { 'retry-after': '3600' } });
    const error = await failure(ask(client({ HD_LLM_RETRY_MAX_MS: '1000' })));
    expect(error).toMatchObject({ code: 'LLM_FAILED', retryable: true });
    expect(error.message).toMatch(/asked to wait 3600000 ms/);
    expect(server.requests).toHaveLength(1);
  });

  it('retries 500s with backoff, then gives up with a retryable LLM_FAILED', async () => {
    server.enqueue({ kind: 'status', status: 500 }, { kind: 'status', status: 503 });
    const c = client();
    expect((await ask(c)).usage).toMatchObject({ requests: 3, retries: 2 });
    server.reset();
    server.respond(() => ({ kind: 'status', status: 500 }));
    const error = await failure(ask(client({ HD_LLM_MAX_RETRIES: '2' })));
    expect(error).toMatchObject({ code: 'LLM_FAILED', retryable: true });
    expect(error.message).toMatch(/HTTP 500/);
    expect(server.requests).toHaveLength(3);
  });

  it('fails at once, permanently, on refused credentials, and never repeats the key', async () => {
    // A hostile or careless endpoint that echoes the Authorization header back.
    server.respond((r) => ({
      kind: 'status',
      status: 401,
      body: { error: { message: `bad key ${r.authorization}` } },
    }));
    const { log, lines } = memoryLogger('debug');
    const c = new LlmClient(
      llmSettings(loadConfig({ HD_LLM_BASE_URL: server.url, HD_LLM_API_KEY: API_KEY })),
      {
        log,
        signal: new AbortController().signal,
      },
    );
    const error = await failure(ask(c));
    expect(error).toMatchObject({ code: 'LLM_FAILED', retryable: false });
    expect(error.message).toMatch(/refused the credentials/);
    expect(error.message).not.toContain(API_KEY);
    expect(server.requests).toHaveLength(1);
    log.info({ config: loadConfig({ HD_LLM_API_KEY: API_KEY }) }, 'config');
    expect(lines.join('\n')).not.toContain(API_KEY);
  });

  it('repairs a malformed or off-schema answer once, then fails with LLM_FAILED', async () => {
    server.enqueue({ kind: 'answer', content: '{"statements": ["unterminated' });
    const repaired = await ask(client());
    expect(repaired.usage).toMatchObject({ requests: 2, repaired: true });
    const second = server.requests[1]!;
    expect(second.body.messages!.at(-2)).toMatchObject({
      role: 'assistant',
      content: '{"statements": ["unterminated',
    });
    expect(String(second.body.messages!.at(-1)!.content)).toMatch(/not valid JSON/);

    server.reset();
    server.enqueue(
      { kind: 'answer', content: '{"statements": "x"}' },
      { kind: 'answer', content: 'no json at all' },
    );
    const error = await failure(ask(client()));
    expect(error).toMatchObject({ code: 'LLM_FAILED', retryable: true });
    expect(error.message).toMatch(/unusable after one repair attempt: not valid JSON/);
    expect(String(server.requests[1]!.body.messages!.at(-1)!.content)).toMatch(/statements: /);
    expect(server.requests).toHaveLength(2);
  });

  it('times out a slow response and asks again', async () => {
    server.enqueue({ kind: 'answer', delayMs: 1500 });
    const result = await ask(client({ HD_LLM_TIMEOUT_MS: '300' }));
    expect(result.usage).toMatchObject({ requests: 2, retries: 1 });
    await waitUntil(
      'the stand-in to see the timed-out request closed',
      () => server.requests[0]!.aborted,
    );
  });

  it('keeps at most HD_LLM_CONCURRENCY requests in flight', async () => {
    server.respond(() => ({ kind: 'answer', delayMs: 50 }));
    const c = client({ HD_LLM_CONCURRENCY: '3' });
    let peak = 0;
    const watch = setInterval(() => (peak = Math.max(peak, server.inFlight())), 5);
    await Promise.all(Array.from({ length: 10 }, (_, i) => ask(c, `Text ${i} Alpha meets Beta.`)));
    clearInterval(watch);
    expect(server.requests).toHaveLength(10);
    expect(peak).toBeGreaterThan(1);
    expect(peak).toBeLessThanOrEqual(3);
  });

  it('cancels requests in flight when the job signal aborts', async () => {
    server.respond(() => ({ kind: 'hang' }));
    const job = new AbortController();
    const c = client({ HD_LLM_CONCURRENCY: '2' }, job.signal);
    const calls = [ask(c), ask(c), ask(c)];
    await waitUntil('two requests in flight', () => server.inFlight() === 2);
    const reason = new HdError('CANCELLED', 'the job was cancelled while it ran');
    job.abort(reason);
    for (const call of calls) await expect(call).rejects.toBe(reason);
    await waitUntil('the stand-in to see both requests aborted', () => server.abortedCount() === 2);
    expect(server.requests).toHaveLength(2);
  });

  it('works with endpoints without structured output (json_object + schema in the prompt)', async () => {
    const result = await ask(client({ HD_LLM_RESPONSE_FORMAT: 'json_object' }));
    expect(result.value.statements.length).toBeGreaterThan(0);
    const [request] = server.requests;
    expect(request!.body.response_format).toEqual({ type: 'json_object' });
    expect(request!.text).toContain('"relations"');
  });

  it('refuses to run without an endpoint, permanently, naming the variable', async () => {
    const c = new LlmClient(llmSettings(loadConfig({})), {
      log: silent,
      signal: new AbortController().signal,
    });
    const error = await failure(ask(c));
    expect(error).toMatchObject({ code: 'LLM_FAILED', retryable: false });
    expect(error.message).toMatch(/HD_LLM_BASE_URL/);
  });
});
