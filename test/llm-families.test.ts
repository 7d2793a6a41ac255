import { afterAll, describe, expect, it } from 'vitest';
import type { LeasedJob } from '../contract/jobs.ts';
import { HdError } from '../contract/errors.ts';
import { ConfigError, loadConfig } from '../control-plane/config.ts';
import { createLogger } from '../control-plane/logger.ts';
import { LlmClient, llmSettings } from '../runner/llm/client.ts';
import { resolveCapabilities } from '../runner/llm/families.ts';
import { INTERPRETATION_PROMPT } from '../runner/llm/prompts.ts';
import { refusedParameter } from '../runner/llm/refusals.ts';
import { startLlmGateway } from '../scheduler/llm-gateway/start.ts';
import { RunnerAccess } from '../scheduler/runner-access.ts';
import { createTestDatabase } from './helpers/database.ts';
import {
  startOpenAiStandIn,
  type OpenAiStandIn,
  type StandInFamily,
} from './helpers/openai-server.ts';
import { ACCOUNT_A, memoryLogger, tempDir, testConfig } from './helpers/runtime.ts';

// OpenAI, vLLM and Ollama cannot run here: local stand-in servers speak their wire format
// and refuse what each family's documentation says it refuses (FAMILY_RULES in
// test/helpers/openai-server.ts names the documents). What the client learns is kept per
// base URL and model for the process, so every test uses its own server or model name.

const servers: OpenAiStandIn[] = [];
afterAll(() => Promise.all(servers.map((s) => s.close())));

async function standIn(family?: StandInFamily) {
  const server = await startOpenAiStandIn(family ? { family } : {});
  servers.push(server);
  return server;
}

const silent = createLogger({ level: 'silent' });

function client(server: OpenAiStandIn, env: Record<string, string>, log = silent) {
  const config = loadConfig({
    HD_LLM_BASE_URL: server.url,
    HD_LLM_API_KEY: 'sk-test-families',
    HD_LLM_RETRY_BASE_MS: '5',
    ...env,
  });
  return new LlmClient(llmSettings(config), { log, signal: new AbortController().signal });
}

const P = INTERPRETATION_PROMPT;
const ask = (c: LlmClient) =>
  c.structured({
    task: P.task,
    schema: P.schema,
    system: P.system,
    user: P.user({ content: 'Acme Corp supplies Globex.', page_start: 1, page_end: 1 }),
  });

const optional = (server: OpenAiStandIn) =>
  server.requests.map(({ body }) => ({
    temperature: body.temperature,
    max_tokens: body.max_tokens,
    max_completion_tokens: body.max_completion_tokens,
    response_format: body.response_format?.type,
  }));

/** A request as OpenAI's reasoning models take it. */
const asReasoning = (maxCompletionTokens: number) => ({
  temperature: undefined,
  max_tokens: undefined,
  max_completion_tokens: maxCompletionTokens,
  response_format: 'json_schema',
});

describe('model families', () => {
  it('sends an OpenAI reasoning model max_completion_tokens and no temperature from the table', async () => {
    const server = await standIn('openai-reasoning');
    const result = await ask(
      client(server, { HD_LLM_MODEL: 'o4-mini', HD_LLM_MAX_OUTPUT_TOKENS: '900' }),
    );
    expect(result.value.relations).toHaveLength(1);
    expect(optional(server)).toEqual([asReasoning(900)]);
  });

  it('learns a reasoning model the table does not know from its 400s, once per model for the process', async () => {
    const server = await standIn('openai-reasoning');
    const { log, lines } = memoryLogger('warn');
    const c1 = client(server, { HD_LLM_MODEL: 'in-house-reasoner' }, log);
    const first = await ask(c1);
    expect(first.usage).toMatchObject({ requests: 3, retries: 0 });
    expect(optional(server)).toEqual([
      {
        temperature: 0,
        max_tokens: 4096,
        max_completion_tokens: undefined,
        response_format: 'json_schema',
      },
      {
        temperature: 0,
        max_tokens: undefined,
        max_completion_tokens: 4096,
        response_format: 'json_schema',
      },
      {
        temperature: undefined,
        max_tokens: undefined,
        max_completion_tokens: 4096,
        response_format: 'json_schema',
      },
    ]);
    expect(lines.join('\n')).toMatch(/refused max_tokens .*refused temperature/s);

    // What was learned shows in the job's stats (debug.stats.llm).
    expect(c1.meter.stats().request_shape).toEqual({
      family: 'generic',
      tokenLimit: 'max_completion_tokens',
      temperature: false,
      responseFormat: 'json_schema',
    });
    // A second client in the same process (the next stage's calls) starts from what was learned.
    server.reset();
    const second = await ask(client(server, { HD_LLM_MODEL: 'in-house-reasoner' }));
    expect(second.usage.requests).toBe(1);
    expect(optional(server)[0]).toMatchObject({
      temperature: undefined,
      max_completion_tokens: 4096,
    });

    // Per model: another model on the same endpoint starts from the table again.
    server.reset();
    await ask(client(server, { HD_LLM_MODEL: 'another-reasoner' }));
    expect(server.requests).toHaveLength(3);
  });

  it('converges when calls in flight together are refused together', async () => {
    const server = await standIn('openai-reasoning');
    const c = client(server, { HD_LLM_MODEL: 'parallel-reasoner', HD_LLM_CONCURRENCY: '6' });
    const results = await Promise.all(Array.from({ length: 6 }, () => ask(c)));
    expect(results.every((r) => r.value.relations.length === 1)).toBe(true);
    // Each call needs at most the two refusals the first one met.
    expect(server.requests.length).toBeLessThanOrEqual(18);
    server.reset();
    await ask(c);
    expect(optional(server)).toEqual([asReasoning(4096)]);
  });

  it('keeps max_tokens and temperature for vLLM and Ollama, and Ollama never gets max_completion_tokens', async () => {
    for (const family of ['vllm', 'ollama'] as const) {
      const server = await standIn(family);
      // The table tells them apart by base URL; the stand-in's is 127.0.0.1:port, so a
      // configured rule (the documented override) names the family.
      await ask(
        client(server, {
          HD_LLM_MODEL: 'llama3.1:8b',
          HD_LLM_MODEL_FAMILIES: JSON.stringify([{ base_url: server.url, family }]),
        }),
      );
      expect(optional(server)).toEqual([
        {
          temperature: 0,
          max_tokens: 4096,
          max_completion_tokens: undefined,
          response_format: 'json_schema',
        },
      ]);
    }
    expect(resolveCapabilities('llama3.1:8b', 'http://gpu-7:11434/v1')).toMatchObject({
      family: 'ollama',
      tokenLimit: 'max_tokens',
      temperature: true,
    });
    expect(resolveCapabilities('Qwen/Qwen2.5-72B', 'http://vllm.internal:8000/v1').family).toBe(
      'vllm',
    );
    expect(resolveCapabilities('gpt-4o-mini', 'https://api.openai.com/v1')).toMatchObject({
      family: 'openai',
      tokenLimit: 'max_completion_tokens',
      temperature: true,
    });
    for (const model of [
      'o1',
      'o3-mini',
      'gpt-5',
      'gpt-5.1-mini',
      'openai/o3',
      'o4-mini-2025-04-16',
    ])
      expect(resolveCapabilities(model, undefined).family, model).toBe('openai-reasoning');
    for (const model of ['gpt-4o', 'gpt-4.1-mini', 'llama3', 'o-custom', 'solo3'])
      expect(resolveCapabilities(model, undefined).family, model).not.toBe('openai-reasoning');
  });

  it('falls back from json_schema to json_object with the schema in the prompt where vLLM lacks it, and validates the answer', async () => {
    const server = await standIn('vllm-legacy');
    const first = await ask(client(server, { HD_LLM_MODEL: 'legacy-model' }));
    expect(first.value.relations[0]).toMatchObject({ source: 'Acme Corp', target: 'Globex' });
    expect(optional(server).map((r) => r.response_format)).toEqual(['json_schema', 'json_object']);
    expect(server.requests[0]!.text).not.toContain('must match this JSON schema');
    expect(server.requests[1]!.text).toContain('must match this JSON schema');

    // Remembered; and the answer is still checked against the schema (repaired once).
    server.reset();
    server.respond(({ index }) =>
      index === 0 ? { kind: 'answer', content: '{"statements": []}' } : undefined,
    );
    const second = await ask(client(server, { HD_LLM_MODEL: 'legacy-model' }));
    expect(second.usage).toMatchObject({ requests: 2, repaired: true });
    expect(optional(server).map((r) => r.response_format)).toEqual(['json_object', 'json_object']);
    expect(String(server.requests[1]!.body.messages!.at(-1)!.content)).toMatch(/rules: /);
  });

  it('ends at plain prompting when a server refuses response_format altogether', async () => {
    const server = await standIn('no-response-format');
    const result = await ask(client(server, { HD_LLM_MODEL: 'plain-model' }));
    expect(result.value.rules).toEqual([]);
    expect(optional(server).map((r) => r.response_format)).toEqual([
      'json_schema',
      'json_object',
      undefined,
    ]);
    expect(server.requests[2]!.text).toContain('must match this JSON schema');
  });

  it('keeps other 400s errors: permanent LLM_FAILED after one request', async () => {
    const server = await standIn();
    server.respond(() => ({
      kind: 'status',
      status: 400,
      body: {
        error: {
          message:
            "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
          type: 'invalid_request_error',
          param: 'messages',
          code: 'context_length_exceeded',
        },
      },
    }));
    const error = await ask(client(server, { HD_LLM_MODEL: 'small-context' })).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(HdError);
    expect(error).toMatchObject({ code: 'LLM_FAILED', retryable: false });
    expect(server.requests).toHaveLength(1);
  });

  it('reads refusals in each server family’s words', () => {
    const all = ['temperature', 'max_tokens', 'response_format'] as const;
    expect(
      refusedParameter(400, '{"error":"temperature is not supported for this model"}', all),
    ).toBe('temperature');
    expect(
      refusedParameter(
        422,
        '{"detail":[{"loc":["body","max_tokens"],"msg":"Extra inputs are not permitted"}]}',
        all,
      ),
    ).toBe('max_tokens');
    expect(refusedParameter(400, 'invalid response_format type: json_schema', all)).toBe(
      'response_format',
    );
    expect(refusedParameter(400, "'response_format.type' must be 'json_schema'", all)).toBe(
      'response_format',
    );
    // Not a refusal: a value out of range, a parameter we did not send, a server error, a
    // rate limit.
    expect(
      refusedParameter(
        400,
        '{"object":"error","message":"max_tokens must be at least 1, got 0."}',
        all,
      ),
    ).toBeUndefined();
    expect(
      refusedParameter(
        400,
        '{"error":{"message":"temperature must be <= 2","param":"temperature","code":"invalid_value"}}',
        all,
      ),
    ).toBeUndefined();
    expect(
      refusedParameter(400, '{"error":{"param":"stop","code":"unsupported_parameter"}}', all),
    ).toBeUndefined();
    expect(refusedParameter(500, 'temperature is not supported', all)).toBeUndefined();
    expect(refusedParameter(429, 'temperature is not supported', all)).toBeUndefined();
  });

  it('refuses a malformed HD_LLM_MODEL_FAMILIES naming the variable and the field', () => {
    expect(() => loadConfig({ HD_LLM_MODEL_FAMILIES: '[{"model":"^x","family":"gpt"}]' })).toThrow(
      ConfigError,
    );
    expect(() => loadConfig({ HD_LLM_MODEL_FAMILIES: '[{"model":"^x","family":"gpt"}]' })).toThrow(
      /HD_LLM_MODEL_FAMILIES: 0\.family: /,
    );
    expect(() => loadConfig({ HD_LLM_MODEL_FAMILIES: '[{"model":"(","family":"vllm"}]' })).toThrow(
      /0\.model: not a valid regular expression/,
    );
    expect(() => loadConfig({ HD_LLM_MODEL_FAMILIES: '{nope' })).toThrow(
      /HD_LLM_MODEL_FAMILIES: not JSON/,
    );
  });

  it("works through the scheduler's LLM gateway: refusals pass through, the provider's URL reaches the table", async () => {
    const provider = await standIn('openai-reasoning');
    const t = await createTestDatabase();
    try {
      const config = testConfig(t.url, await tempDir(), {
        HD_LLM_BASE_URL: provider.url,
        HD_LLM_API_KEY: 'sk-provider-key',
        HD_LLM_MODEL: 'gw-reasoner',
        // A rule on the provider's URL: only the hint tells the runner it is behind it.
        HD_LLM_MODEL_FAMILIES: JSON.stringify([
          { base_url: `^${provider.url.replace(/[.]/g, '\\.')}`, family: 'openai' },
        ]),
      });
      const gateway = (await startLlmGateway(config, t.db, silent))!;
      try {
        const queued = await t.db.enqueueJob({
          accountId: ACCOUNT_A,
          jobType: 'extract_interpretations',
          debug: {},
        });
        const [job] = await t.db.claimJobs({
          workerId: 'families',
          leaseSeconds: 60,
          jobId: queued.id,
        });
        const credential = await gateway.issue(job as LeasedJob, new Date(Date.now() + 3600_000));
        // The runner's environment as the scheduler makes it, with its job's credential.
        const env = new RunnerAccess(config, t.db, undefined, gateway).baseEnv;
        expect(env.HD_LLM_BASE_URL).toBe(gateway.url);
        expect(env.HD_LLM_PROVIDER_URL).toBe(provider.url);
        const runner = () =>
          new LlmClient(llmSettings(loadConfig({ ...env, HD_LLM_API_KEY: credential })), {
            log: silent,
            signal: new AbortController().signal,
          });
        // The openai row (from the provider's URL) sends max_completion_tokens from the first
        // request; temperature is refused by the provider through the gateway and dropped.
        const result = await ask(runner());
        expect(result.usage.requests).toBe(2);
        expect(optional(provider).map((r) => [r.max_tokens, r.temperature])).toEqual([
          [undefined, 0],
          [undefined, undefined],
        ]);
        expect(provider.requests.every((r) => r.authorization === 'Bearer sk-provider-key')).toBe(
          true,
        );
        provider.reset();
        await ask(runner());
        expect(provider.requests).toHaveLength(1);
      } finally {
        await gateway.close();
      }
    } finally {
      await t.drop();
    }
  });
});
