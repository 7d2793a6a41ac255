// LLM gateway: what going through the scheduler's gateway (scheduler/llm-gateway/) costs,
// against the direct call to the same endpoint, in the same run.
// 1. Overhead per request: chat completions at a given concurrency to the stand-in OpenAI
//    server (test/helpers/openai-server.ts, answering at once), direct with the key vs
//    through the gateway with a job's credential (SQL admission + usage record per
//    request), and through a gateway whose SQL is stubbed (the HTTP proxying alone).
//    Rounds interleaved; latency percentiles over all rounds.
// 2. End to end: extract_interpretations jobs run in this process (runJob, as `hd-runner run`
//    does) against the stand-in answering after a fixed latency, direct vs gateway: model
//    tokens per second of wall time.
// Usage: node bench/llm-gateway.ts. BENCH_GW_REQUESTS (400 per round), BENCH_GW_LATENCY_MS (50).
import { randomUUID } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LeasedJob } from '../contract/jobs.ts';
import { loadConfig, type Config } from '../control-plane/config.ts';
import { PostgresDb } from '../control-plane/db/postgres.ts';
import { createLogger } from '../control-plane/logger.ts';
import { FsStorage } from '../control-plane/storage/fs.ts';
import { runJob } from '../runner/run-job.ts';
import { LlmLimiter } from '../scheduler/llm-gateway/limiter.ts';
import { LlmGateway } from '../scheduler/llm-gateway/server.ts';
import { startLlmGateway } from '../scheduler/llm-gateway/start.ts';
import { startOpenAiStandIn } from '../test/helpers/openai-server.ts';
import * as b from './lib.ts';

const REQUESTS = b.envInt('BENCH_GW_REQUESTS', 400);
const LATENCY_MS = b.envInt('BENCH_GW_LATENCY_MS', 50);
const ROUNDS = 3;
const ACCOUNT = 'bbbbbbbb-0000-4000-8000-0000000011a0';
const KEY = 'sk-bench-provider-key';
const silent = createLogger({ level: 'silent' });

console.log(`llm-gateway: ${b.machineLine()}`);
const database = await b.startBenchDatabase();
const db = new PostgresDb({ connectionString: database.url, poolSize: 8 });
const server = await startOpenAiStandIn();
const root = await mkdtemp(join(tmpdir(), 'hd-bench-gw-'));
const config: Config = loadConfig({
  HD_DATABASE_URL: database.url,
  HD_STORAGE_ROOT: root,
  HD_LLM_BASE_URL: server.url,
  HD_LLM_API_KEY: KEY,
  HD_LLM_MODEL: 'stand-in',
  HD_LLM_CONCURRENCY: '8',
  HD_LLM_MAX_OUTPUT_TOKENS: '300',
  HD_LOG_LEVEL: 'silent',
});
const gateway = (await startLlmGateway(config, db, silent))!;
// The same gateway without the database: every credential admitted, nothing recorded.
const proxyOnly = new LlmGateway({
  ledger: {
    grantCredential: async () => {},
    dropCredentials: async () => 0,
    admit: async () =>
      ({ verdict: 'admitted', job_id: '', account_id: '', day: '', reserved: false }) as const,
    record: async () => {},
  },
  log: silent,
  chat: { baseURL: server.url, apiKey: KEY },
  transcribe: undefined,
  transcribeModel: 'whisper-1',
  models: new Set(['stand-in']),
  limiter: new LlmLimiter(),
  prices: {},
  defaultOutputTokens: 300,
  defaultDailyTokens: undefined,
  timeoutMs: 60_000,
});
await proxyOnly.listen('127.0.0.1', 0);

async function leased(jobType: string, documentId?: string): Promise<LeasedJob> {
  const job = await db.enqueueJob({ accountId: ACCOUNT, jobType, documentId, debug: {} });
  const [claimed] = await db.claimJobs({ workerId: 'bench', jobId: job.id, leaseSeconds: 600 });
  return claimed as LeasedJob;
}

const BODY = JSON.stringify({
  model: 'stand-in',
  messages: [
    { role: 'system', content: 'Extract statements as JSON. '.repeat(20) },
    { role: 'user', content: 'Acme Corp audits Müller GmbH. Ana Lopez reports to Ben Okafor.' },
  ],
  max_tokens: 300,
  response_format: { type: 'json_object' },
});

/** `REQUESTS` requests, `concurrency` at a time; each one's latency in ms. */
async function round(url: string, key: string, concurrency: number): Promise<number[]> {
  const latencies: number[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next++ < REQUESTS) {
        const started = performance.now();
        const res = await fetch(`${url}/chat/completions`, {
          method: 'POST',
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
          body: BODY,
        });
        await res.arrayBuffer();
        if (res.status !== 200) throw new Error(`HTTP ${res.status}`);
        latencies.push(performance.now() - started);
      }
    }),
  );
  return latencies;
}

console.log(
  `\n1. overhead per request (${REQUESTS} requests × ${ROUNDS} rounds each, stand-in answers at once)`,
);
console.log(
  '| concurrency | direct p50 / p99 ms | gateway p50 / p99 ms | overhead p50 / p99 ms | proxying alone (SQL stubbed) p50 / p99 ms |',
);
console.log('| --- | --- | --- | --- | --- |');
for (const concurrency of [1, 8]) {
  const credential = await gateway.issue(
    await leased('extract_interpretations'),
    new Date(Date.now() + 3600_000),
  );
  await round(server.url, KEY, concurrency); // warm both paths
  await round(gateway.url, credential, concurrency);
  await round(proxyOnly.url, 'any', concurrency);
  const direct: number[] = [];
  const through: number[] = [];
  const proxied: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    server.reset();
    direct.push(...(await round(server.url, KEY, concurrency)));
    server.reset();
    through.push(...(await round(gateway.url, credential, concurrency)));
    server.reset();
    proxied.push(...(await round(proxyOnly.url, 'any', concurrency)));
  }
  const [d50, d99, g50, g99] = [
    b.percentile(direct, 50),
    b.percentile(direct, 99),
    b.percentile(through, 50),
    b.percentile(through, 99),
  ];
  console.log(
    `| ${concurrency} | ${d50.toFixed(2)} / ${d99.toFixed(2)} | ${g50.toFixed(2)} / ${g99.toFixed(2)} | ${(g50 - d50).toFixed(2)} / ${(g99 - d99).toFixed(2)} | ${b.percentile(proxied, 50).toFixed(2)} / ${b.percentile(proxied, 99).toFixed(2)} |`,
  );
}

console.log(
  `\n2. extract_interpretations end to end (stand-in answers after ${LATENCY_MS} ms; HD_LLM_CONCURRENCY 8)`,
);
server.reset();
server.respond(() => ({ kind: 'answer', delayMs: LATENCY_MS }));

/** Runs one job of `chunks` chunks; tokens the model reported, and wall seconds. */
async function pipeline(viaGateway: boolean, chunks: number) {
  const doc = randomUUID();
  const pool = db.pool;
  for (let i = 0; i < chunks; i++)
    await pool.query(
      `insert into hd_asset_chunks (account_id, document_id, chunk_index, content) values ($1, $2, $3, $4)`,
      [ACCOUNT, doc, i, `Part ${i}: Acme Corp audits Müller GmbH. Ana Lopez reports to Ben.`],
    );
  const job = await leased('extract_interpretations', doc);
  const runConfig = viaGateway
    ? {
        ...config,
        HD_LLM_BASE_URL: gateway.url,
        HD_LLM_API_KEY: await gateway.issue(job, new Date(Date.now() + 3600_000)),
      }
    : config;
  const started = performance.now();
  const outcome = await runJob({
    db,
    storage: new FsStorage(root),
    config: runConfig,
    log: silent,
    jobId: job.id,
    leaseToken: job.lease_token,
  });
  const seconds = (performance.now() - started) / 1000;
  if (outcome.outcome !== 'completed') throw new Error(`job ended ${outcome.outcome}`);
  const stats = outcome.job.debug.stats as { llm: { total_tokens: number } };
  return { tokens: stats.llm.total_tokens, seconds };
}

console.log('| path | chunks | tokens | seconds | tokens/s |');
console.log('| --- | --- | --- | --- | --- |');
const totals = { direct: { tokens: 0, seconds: 0 }, gateway: { tokens: 0, seconds: 0 } };
for (let i = 0; i < ROUNDS; i++) {
  for (const via of [false, true]) {
    const r = await pipeline(via, 80);
    const t = totals[via ? 'gateway' : 'direct'];
    t.tokens += r.tokens;
    t.seconds += r.seconds;
  }
}
for (const [path, t] of Object.entries(totals))
  console.log(
    `| ${path} | ${80 * ROUNDS} | ${t.tokens} | ${t.seconds.toFixed(2)} | ${(t.tokens / t.seconds).toFixed(0)} |`,
  );
console.log(
  `gateway / direct tokens/s: ${(totals.gateway.tokens / totals.gateway.seconds / (totals.direct.tokens / totals.direct.seconds)).toFixed(3)}; peak RSS ${b.peakRssMb().toFixed(0)} MB`,
);

await gateway.close();
await proxyOnly.close();
await server.close();
await db.close();
await database.stop();
