import { randomUUID } from 'node:crypto';
import { createServer, type AddressInfo } from 'node:net';
import { execa } from 'execa';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { HdError } from '../contract/errors.ts';
import type { LeasedJob } from '../contract/jobs.ts';
import { ConfigError, configToEnv } from '../control-plane/config.ts';
import { createLogger } from '../control-plane/logger.ts';
import { LlmClient, llmSettings } from '../runner/llm/client.ts';
import { SchedulerMetrics } from '../scheduler/metrics.ts';
import { BodyBuffer } from '../scheduler/llm-gateway/body-buffer.ts';
import { CredentialTable } from '../scheduler/llm-gateway/credentials.ts';
import { LlmLimiter } from '../scheduler/llm-gateway/limiter.ts';
import type { LlmGateway } from '../scheduler/llm-gateway/server.ts';
import { startLlmGateway } from '../scheduler/llm-gateway/start.ts';
import { SupabaseDb } from '../control-plane/db/supabase.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { startLocalSupabase, type LocalSupabase } from './helpers/supabase-proxy.ts';
import { insertChunks } from './helpers/llm-stages.ts';
import { startOpenAiStandIn, waitUntil, type OpenAiStandIn } from './helpers/openai-server.ts';
import { ACCOUNT_A, ACCOUNT_B, tempDir, testConfig } from './helpers/runtime.ts';
import { z } from 'zod';

// The scheduler's LLM gateway against real PostgreSQL (credentials, budgets: 00015) and the
// stand-in OpenAI server (test/helpers/openai-server.ts), which STANDS IN FOR THE PROVIDER
// (OpenAI cannot be reached here). Requests are sent as a runner sends them: HTTP with its
// credential as the bearer token. The containers' side: test/llm-gateway-containers.test.ts.

const silent = createLogger({ level: 'silent' });
const PROVIDER_KEY = 'sk-provider-key-held-by-the-scheduler';
let t: TestDatabase;
let server: OpenAiStandIn;
let supabase: LocalSupabase;
let supabaseDb: SupabaseDb;
/** The transport the gateway's SQL goes through in the running describe block. */
let transport: 'postgres' | 'supabase' = 'postgres';
const gateways: LlmGateway[] = [];

beforeAll(async () => {
  [t, server] = await Promise.all([createTestDatabase(), startOpenAiStandIn()]);
  supabase = await startLocalSupabase(t.url);
  supabaseDb = new SupabaseDb({ url: supabase.url, serviceRoleKey: supabase.serviceRoleKey });
});
afterAll(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  await server?.close();
  await supabaseDb?.close();
  await supabase?.stop();
  await t?.drop();
});
beforeEach(() => server.reset());

async function gateway(env: Record<string, string> = {}): Promise<LlmGateway> {
  const config = testConfig(t.url, await tempDir(), {
    HD_LLM_BASE_URL: server.url,
    HD_LLM_API_KEY: PROVIDER_KEY,
    HD_LLM_MODEL: 'stand-in',
    HD_TRANSCRIBE_BASE_URL: server.url,
    ...env,
  });
  const g = (await startLlmGateway(config, transport === 'supabase' ? supabaseDb : t.db, silent))!;
  gateways.push(g);
  return g;
}

/** A running job of `account` with the lease a scheduler's claim gives it. */
async function leasedJob(account = ACCOUNT_A): Promise<LeasedJob> {
  const queued = await t.db.enqueueJob({
    accountId: account,
    jobType: 'extract_interpretations',
    debug: {},
  });
  const [job] = await t.db.claimJobs({ workerId: 'gw-test', leaseSeconds: 60, jobId: queued.id });
  return job as LeasedJob;
}

const inAnHour = () => new Date(Date.now() + 3600_000);

function chat(g: LlmGateway, credential: string, body: Record<string, unknown>) {
  return fetch(`${g.url}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${credential}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
}

const question = (text = 'hello', extra: Record<string, unknown> = {}) => ({
  model: 'stand-in',
  messages: [{ role: 'user', content: text }],
  max_tokens: 50,
  ...extra,
});

// The gateway's SQL (credentials, admissions, usage) through either transport: a pool, or
// supabase-js → a real PostgREST (helpers/supabase-proxy.ts) as the service role.
describe.each(['postgres', 'supabase'] as const)('llm gateway (%s transport)', (name) => {
  beforeAll(() => void (transport = name));
  it("forwards a chat request byte for byte with the scheduler's key, and the answer back", async () => {
    const g = await gateway();
    const metrics = new SchedulerMetrics(() => Promise.reject(new Error('not scraped here')));
    metrics.attachGateway(g);
    const job = await leasedJob();
    const credential = await g.issue(job, inAnHour());
    const body = question('ünïcode ✓', {
      response_format: {
        type: 'json_schema',
        json_schema: { name: 'x', schema: {}, strict: true },
      },
    });
    const res = await chat(g, credential, body);
    expect(res.status).toBe(200);
    const answer = (await res.json()) as { usage: { prompt_tokens: number } };
    expect(server.requests).toHaveLength(1);
    const seen = server.requests[0]!;
    expect(seen.authorization).toBe(`Bearer ${PROVIDER_KEY}`);
    expect(seen.body).toEqual(body);
    expect(answer.usage.prompt_tokens).toBeGreaterThan(0);
    // Counted for the job and its account, on the day of the request.
    // Without a budget the usage is recorded just after the answer: polled.
    await expect
      .poll(() => usageOf(job.id))
      .toMatchObject({
        requests: 1,
        prompt_tokens: answer.usage.prompt_tokens,
        reserved_tokens: 0,
      });
    // Counted in the scheduler's metrics by model and kind.
    const text = await metrics.registry.getSingleMetricAsString('hd_llm_tokens_total');
    expect(text).toContain(
      `hd_llm_tokens_total{model="stand-in",kind="prompt"} ${answer.usage.prompt_tokens}`,
    );
  });

  it('refuses a credential once its lease has ended, and one never issued, before the provider', async () => {
    const g = await gateway();
    const job = await leasedJob();
    const credential = await g.issue(job, inAnHour());
    expect((await chat(g, credential, question())).status).toBe(200);
    await t.db.completeJob(job.id, job.lease_token, {});
    const after = await chat(g, credential, question());
    expect(after.status).toBe(401);
    expect(((await after.json()) as { error: { code: string } }).error.code).toBe(
      'invalid_api_key',
    );
    expect((await chat(g, 'hdgw_made-up', question())).status).toBe(401);
    expect((await chat(g, PROVIDER_KEY, question())).status).toBe(401);
    expect(server.requests).toHaveLength(1);
  });

  it('accepts a credential it did not issue once SQL shows its lease current (a restarted scheduler), refuses it unread once ended', async () => {
    const before = await gateway();
    const job = await leasedJob();
    const credential = await before.issue(job, inAnHour());
    // The gateway of the scheduler started next: it never saw the credential issued.
    const g = await gateway();
    expect((await chat(g, credential, question())).status).toBe(200);
    expect((await chat(g, credential, question())).status).toBe(200);
    await t.db.completeJob(job.id, job.lease_token, {});
    expect((await chat(g, credential, question())).status).toBe(401);
    // From now on it is refused before its body is read: 8 MiB sent, not read.
    const read = g.intake.receivedBytes;
    const big = await chat(g, credential, question('x'.repeat(8 << 20)));
    expect(big.status).toBe(401);
    expect(g.intake.receivedBytes - read).toBeLessThan(1 << 20);
    expect(server.requests).toHaveLength(2);
  });

  it("refuses the credential of a runner that ended unread, before the lease's end reaches SQL", async () => {
    const g = await gateway();
    const job = await leasedJob();
    const credential = await g.issue(job, inAnHour());
    expect((await chat(g, credential, question())).status).toBe(200);
    await g.dropEnded(job); // what the scheduler does once the job's runner ended
    const read = g.intake.receivedBytes;
    const res = await chat(g, credential, question('x'.repeat(8 << 20)));
    expect(res.status).toBe(401);
    expect(g.intake.receivedBytes - read).toBeLessThan(1 << 20);
    expect(server.requests).toHaveLength(1);
  });

  it("passes the provider's refusal through unchanged (a 400 for an unsupported parameter)", async () => {
    const g = await gateway();
    const credential = await g.issue(await leasedJob(), inAnHour());
    const refusal = {
      error: {
        message:
          "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
        type: 'invalid_request_error',
        param: 'max_tokens',
        code: 'unsupported_parameter',
      },
    };
    server.enqueue({ kind: 'status', status: 400, body: refusal });
    const res = await chat(g, credential, question());
    expect(res.status).toBe(400);
    expect(await res.json()).toEqual(refusal);
  });

  it('charges an answer without usage what was reserved for it, and refuses streaming', async () => {
    const g = await gateway();
    const job = await leasedJob();
    const credential = await g.issue(job, inAnHour());
    server.enqueue({ kind: 'answer', usage: false });
    expect((await chat(g, credential, question('x'))).status).toBe(200);
    // The whole body (79 bytes of JSON, tools and the rest count too): 20 tokens, and
    // max_tokens 50.
    await expect.poll(() => usageOf(job.id)).toMatchObject({ prompt_tokens: 70 });
    const streamed = await chat(g, credential, question('x', { stream: true }));
    expect(streamed.status).toBe(400);
    expect(server.requests).toHaveLength(1);
  });

  it('forwards an audio transcription (multipart) as sent', async () => {
    const g = await gateway();
    const credential = await g.issue(await leasedJob(), inAnHour());
    const form = new FormData();
    form.append('model', 'whisper-1');
    form.append('file', new Blob([Buffer.from('ID3 not really audio')]), 'a.mp3');
    const res = await fetch(`${g.url}/audio/transcriptions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${credential}` },
      body: form,
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ text: 'stand-in transcript' });
    const seen = server.requests[0]!;
    expect(seen.authorization).toBe(`Bearer ${PROVIDER_KEY}`);
    expect(seen.audio?.contentType).toMatch(/^multipart\/form-data; boundary=/);
    expect(seen.audio?.raw.toString('latin1')).toContain('ID3 not really audio');
  });

  it('stops an account at its daily token budget before the provider; the runner fails LLM_BUDGET_EXCEEDED', async () => {
    const g = await gateway();
    const account = randomUUID();
    await t.sql.query('select public.hd_set_llm_budget($1, 300)', [account]);
    const job = await leasedJob(account);
    const credential = await g.issue(job, inAnHour());
    // Each request reserves its prompt estimate + max_tokens 50: some fit, then none.
    const statuses: number[] = [];
    for (let i = 0; i < 12; i++) statuses.push((await chat(g, credential, question())).status);
    const sent = statuses.filter((s) => s === 200).length;
    expect(sent).toBeGreaterThan(0);
    expect(statuses.slice(sent).every((s) => s === 402)).toBe(true);
    expect(server.requests).toHaveLength(sent);
    const used = await usageOf(job.id);
    expect(Number(used.prompt_tokens) + Number(used.completion_tokens)).toBeLessThanOrEqual(300);
    expect(used.refused).toBe(12 - sent);

    // The runner's own client, through the gateway, names the code.
    const client = new LlmClient(
      {
        ...llmSettings(testConfig(t.url, '/x')),
        baseURL: g.url,
        apiKey: credential,
        model: 'stand-in',
        maxOutputTokens: 50,
      },
      { log: silent, signal: new AbortController().signal },
    );
    const refused = await client
      .structured({ task: 't', schema: z.object({ a: z.string() }), system: 's', user: 'u' })
      .catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(HdError);
    expect((refused as HdError).code).toBe('LLM_BUDGET_EXCEEDED');
    expect(server.requests).toHaveLength(sent);

    // Failing with that code queues the job again for the next UTC day, when the budget resets.
    const nextMidnight = () => new Date().setUTCHours(24, 0, 0, 0);
    const before = nextMidnight();
    const failed = await t.db.failJob(job.id, job.lease_token, {
      code: 'LLM_BUDGET_EXCEEDED',
      message: (refused as HdError).message,
      retryable: true,
    });
    expect(failed.status).toBe('queued');
    // The midnight after the failure, whichever day it fell on (the test may cross one).
    expect([before, nextMidnight()]).toContain(new Date(failed.run_after!).getTime());
  });

  it('holds all runners to the concurrency limit of a model together', async () => {
    const g = await gateway({ HD_LLM_LIMITS: '{"stand-in":{"concurrency":2}}' });
    const credentials = await Promise.all(
      [1, 2, 3, 4].map(async () => g.issue(await leasedJob(), inAnHour())),
    );
    // The first two are held at the provider until the other ten wait at the limiter: the
    // limit is shown reached and held, whatever the machine's speed.
    server.respond((r) => (r.index < 2 ? { kind: 'hang' } : undefined));
    const res = Promise.all(
      Array.from({ length: 12 }, (_, i) => chat(g, credentials[i % 4]!, question())),
    );
    await waitUntil(
      'two at the provider and ten waiting',
      () => (queuedAt(g) === 10 && server.requests.length === 2) || server.requests.length > 2,
      20_000,
    );
    expect(server.requests).toHaveLength(2);
    server.releaseHanging();
    expect((await res).map((r) => r.status)).toEqual(Array(12).fill(200));
    expect(server.maxInFlight()).toBe(2);
  });

  it('pauses every runner of the model after a 429 with Retry-After', async () => {
    const g = await gateway();
    const credentials = await Promise.all(
      [1, 2, 3].map(async () => g.issue(await leasedJob(), inAnHour())),
    );
    server.enqueue({ kind: 'status', status: 429, headers: { 'retry-after': '1' } });
    const first = await chat(g, credentials[0]!, question());
    expect(first.status).toBe(429);
    expect(first.headers.get('retry-after')).toBe('1');
    const limitedAt = server.requests[0]!.receivedAt;
    await Promise.all(credentials.map((c) => chat(g, c, question())));
    const later = server.requests.slice(1).map((r) => r.receivedAt - limitedAt);
    expect(later).toHaveLength(3);
    for (const gap of later) expect(gap).toBeGreaterThanOrEqual(990);
  });

  it('takes accounts in turns when the limit is the bottleneck', async () => {
    const g = await gateway({ HD_LLM_LIMITS: '{"*":{"concurrency":1}}' });
    const [a, b] = await Promise.all([
      g.issue(await leasedJob(ACCOUNT_A), inAnHour()),
      g.issue(await leasedJob(ACCOUNT_B), inAnHour()),
    ]);
    // A's first request is held at the provider until all of A's other seven, then B's two,
    // wait at the limiter: the order is the limiter's choice, not how fast each was admitted.
    server.respond((r) => (r.index === 0 ? { kind: 'hang' } : undefined));
    const busy = Array.from({ length: 8 }, (_, i) => chat(g, a!, question(`a${i}`)));
    await waitUntil(
      "A's seven waiting",
      () => (queuedAt(g) === 7 && server.requests.length === 1) || server.requests.length > 1,
      20_000,
    );
    expect(server.requests).toHaveLength(1);
    const small = [chat(g, b!, question('b0')), chat(g, b!, question('b1'))];
    await waitUntil("B's two waiting behind A's", () => queuedAt(g) === 9, 20_000);
    server.releaseHanging();
    const statuses = (await Promise.all([...busy, ...small])).map((r) => r.status);
    expect(statuses).toEqual(Array(10).fill(200));
    // B's two go between A's, one each turn, not after all of A's (aaaaaaaabb, first in first out).
    expect(server.requests.map((r) => r.text[0]).join('')).toBe('aababaaaaa');
  });
});

it("`hd-runner scheduler` (process launcher) sends its runners' model requests through its gateway", async () => {
  server.reset();
  const doc = randomUUID();
  await insertChunks(t, ACCOUNT_A, doc, ['Acme Corp audits Müller GmbH.', 'Ana reports to Ben.']);
  const job = await t.db.enqueueJob({
    accountId: ACCOUNT_A,
    jobType: 'extract_interpretations',
    documentId: doc,
    debug: {},
  });
  const config = testConfig(t.url, await tempDir(), {
    HD_LLM_BASE_URL: server.url,
    HD_LLM_API_KEY: PROVIDER_KEY,
    HD_LLM_MODEL: 'stand-in',
    HD_POLL_INTERVAL_MS: '200',
    HD_JOB_TYPES: 'extract_interpretations',
    HD_LOG_LEVEL: 'info',
  });
  const scheduler = execa(process.execPath, ['cli/main.ts', 'scheduler', '--slots', '1'], {
    env: { PATH: process.env.PATH ?? '', ...configToEnv(config) },
    extendEnv: false,
    reject: false,
  });
  try {
    await expect
      .poll(async () => (await t.db.getJob(job.id))?.status, { timeout: 100_000 })
      .toBe('completed');
  } finally {
    scheduler.kill('SIGTERM');
  }
  const result = await scheduler;
  expect(result.exitCode).toBe(0);
  expect(result.stderr).toMatch(
    /"url":"http:\/\/127\.0\.0\.1:\d+\/v1".*"msg":"llm gateway listening"/,
  );
  expect(server.requests).toHaveLength(2);
  for (const r of server.requests) expect(r.authorization).toBe(`Bearer ${PROVIDER_KEY}`);
  // Counted by the gateway for the job: the requests went through it.
  await expect.poll(() => usageOf(job.id)).toMatchObject({ requests: 2 });
  expect(result.stderr).not.toContain(PROVIDER_KEY);
}, 120_000);

describe('llm limiter', () => {
  it('keeps requests and tokens per minute over a sliding minute', async () => {
    let now = 0;
    const limiter = new LlmLimiter(
      { m: { requests_per_minute: 2, tokens_per_minute: 1000 } },
      () => now,
    );
    const never = new AbortController().signal;
    const granted: string[] = [];
    const take = (name: string, tokens: number) =>
      limiter.acquire('p', 'm', ACCOUNT_A, tokens, never).then((p) => {
        granted.push(name);
        return p;
      });
    const one = await take('one', 100);
    one.release(100);
    const pending = take('two', 950); // 100 + 950 > 1000 tokens in the minute
    await Promise.resolve();
    expect(granted).toEqual(['one']);
    now = 60_001;
    limiter.pause('p', 'm', 0); // looks at the lane again, as its timer would a minute on
    (await pending).release(900);
    expect(granted).toEqual(['one', 'two']);
  });
});

describe('llm gateway address', () => {
  it('a port another process holds is a configuration error naming it', async () => {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const { port } = holder.address() as AddressInfo;
    try {
      const taken = await gateway({ HD_LLM_GATEWAY_ADDRESS: `127.0.0.1:${port}` }).catch(
        (e: unknown) => e,
      );
      expect(taken).toBeInstanceOf(ConfigError);
      expect((taken as Error).message).toBe(
        `invalid configuration: HD_LLM_GATEWAY_ADDRESS: 127.0.0.1:${port} is in use by another process (another scheduler on this host?); give each scheduler its own port`,
      );
    } finally {
      holder.close();
    }
  });
});

describe('admission before the body', () => {
  it('looks up at most 2 credentials it did not issue at once, 64 waiting, and answers busy beyond', async () => {
    const pending: (() => void)[] = [];
    const lookups: string[] = [];
    const table = new CredentialTable(async (hash) => {
      lookups.push(hash);
      await new Promise<void>((resolve) => pending.push(resolve));
      return null;
    });
    const token = (i: number) => `hdgw_${String(i).padStart(43, '0')}`;
    const checks = Array.from({ length: 66 }, (_, i) => table.check(token(i), `h${i}`));
    expect(await table.check(token(66), 'h66')).toEqual({ verdict: 'busy' });
    expect(lookups).toEqual(['h0', 'h1']);
    // Not the shape of a credential: refused without a look-up.
    expect(await table.check('sk-provider', 'hx')).toEqual({ verdict: 'unknown' });
    while (lookups.length < 66 || pending.length > 0) {
      pending.splice(0).forEach((resolve) => resolve());
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect((await Promise.all(checks)).every((c) => c.verdict === 'unknown')).toBe(true);
    // Refused once, remembered: no second look-up.
    expect(await table.check(token(0), 'h0')).toEqual({ verdict: 'unknown' });
    expect(lookups).toHaveLength(66);
  });

  it('gives room to bodies first come first served; one that gives up lets the next in', async () => {
    const buffer = new BodyBuffer(100);
    const never = new AbortController().signal;
    const first = await buffer.reserve(60, never);
    const leaving = new AbortController();
    const large = buffer.reserve(50, leaving.signal);
    let small = false;
    const next = buffer.reserve(30, never).then((place) => ((small = true), place));
    await Promise.resolve();
    expect(buffer.stats).toEqual({ reservedBytes: 60, peakBytes: 60, waiting: 2 });
    expect(small).toBe(false); // it would fit, but waits behind the large one
    leaving.abort(new Error('gave up'));
    await expect(large).rejects.toThrow('gave up');
    (await next).shrink(10);
    expect(buffer.stats).toEqual({ reservedBytes: 70, peakBytes: 90, waiting: 0 });
    first.release();
    expect(buffer.stats.reservedBytes).toBe(10);
  });
});

async function usageOf(jobId: string) {
  const { rows } = await t.sql.query(
    `select requests, refused, prompt_tokens::int, completion_tokens::int, reserved_tokens::int
       from hd_llm_usage where job_id = $1`,
    [jobId],
  );
  return rows[0] as Record<string, number>;
}

/** Requests admitted by `g` and waiting under the stand-in model's limits. */
const queuedAt = (g: LlmGateway) => g.limiter.waiting(server.url, 'stand-in');
