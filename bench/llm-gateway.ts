// LLM gateway: what going through the scheduler's gateway (scheduler/llm-gateway/) costs,
// against the direct call to the same endpoint, in the same run. Three processes, as in
// production (the gateway lives in the scheduler, the provider and the runners elsewhere):
// this one (the client: the runners' side), the gateway (bench/llm-gateway-serve.ts
// gateway) and the stand-in OpenAI server (bench/llm-gateway-serve.ts stand-in).
// 1. Overhead per request: chat completions at a given concurrency to the stand-in,
//    answering at once (and, at concurrency 8, after BENCH_GW_LATENCY_MS), direct with the key vs through the gateway with a job's credential
//    (credential checked in memory, SQL admission + usage record per request), and through
//    the same gateway with its SQL stubbed (the HTTP path alone). Rounds interleaved;
//    latency percentiles over all rounds; ratio gateway / direct of the p50s.
// 2. End to end: extract_interpretations jobs run in this process (runJob, as `hd-runner run`
//    does) against the stand-in answering after a fixed latency, direct vs gateway: model
//    tokens per second of wall time.
// Usage: node bench/llm-gateway.ts. BENCH_GW_REQUESTS (400 per round), BENCH_GW_LATENCY_MS
// (50), BENCH_GW_CONCURRENCY (1,8).
import { fork, type ChildProcess } from 'node:child_process';
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
import type { ServeReply, ServeRequest } from './llm-gateway-serve.ts';
import * as b from './lib.ts';

const REQUESTS = b.envInt('BENCH_GW_REQUESTS', 400);
const LATENCY_MS = b.envInt('BENCH_GW_LATENCY_MS', 50);
const CONCURRENCIES = (process.env.BENCH_GW_CONCURRENCY ?? '1,8').split(',').map(Number);
const ROUNDS = 3;
const ACCOUNT = 'bbbbbbbb-0000-4000-8000-0000000011a0';
const KEY = 'sk-bench-provider-key';
const silent = createLogger({ level: 'silent' });

/** A bench/llm-gateway-serve.ts process: its URLs, and a call that waits for its answer. */
async function serve(role: string, env: Record<string, string> = {}) {
  const child: ChildProcess = fork(new URL('./llm-gateway-serve.ts', import.meta.url), [role], {
    env: { ...process.env, ...env },
    // BENCH_GW_PROFILE=<folder>: a CPU profile of the gateway process (node --cpu-prof).
    execArgv:
      role === 'gateway' && process.env.BENCH_GW_PROFILE
        ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_GW_PROFILE}`]
        : [],
  });
  const waiting = new Map<number, (reply: ServeReply) => void>();
  let next = 0;
  const urls = await new Promise<Record<string, string>>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`${role} exited ${code}`)));
    child.on('message', (m: ServeReply | { ready: Record<string, string> }) => {
      if ('ready' in m) resolve(m.ready);
      else waiting.get(m.id)?.(m);
    });
  });
  const call = (m: Record<string, unknown>) =>
    new Promise<ServeReply>((resolve) => {
      const id = next++;
      waiting.set(id, resolve);
      child.send({ ...m, id } as ServeRequest);
    });
  const stop = async () => {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.send({ id: -1, stop: true } satisfies ServeRequest);
    await exited;
  };
  return { urls, call, stop };
}

console.log(`llm-gateway: ${b.machineLine()}`);
const database = await b.startBenchDatabase();
const db = new PostgresDb({ connectionString: database.url, poolSize: 8 });
const standIn = await serve('stand-in');
const providerUrl = standIn.urls.url!;
const gatewayProcess = await serve('gateway', {
  BENCH_GW_DATABASE_URL: database.url,
  BENCH_GW_PROVIDER_URL: providerUrl,
  BENCH_GW_PROVIDER_KEY: KEY,
});
const gatewayUrl = gatewayProcess.urls.gateway!;
const stubbedUrl = gatewayProcess.urls.stubbed!;
const root = await mkdtemp(join(tmpdir(), 'hd-bench-gw-'));
const config: Config = loadConfig({
  HD_DATABASE_URL: database.url,
  HD_STORAGE_ROOT: root,
  HD_LLM_BASE_URL: providerUrl,
  HD_LLM_API_KEY: KEY,
  HD_LLM_MODEL: 'stand-in',
  HD_LLM_CONCURRENCY: '8',
  HD_LLM_MAX_OUTPUT_TOKENS: '300',
  HD_LOG_LEVEL: 'silent',
});
const resetStandIn = (delayMs?: number) => standIn.call({ reset: true, delayMs });
/** A credential of the gateway process for `job` (its SQL stubbed or not). */
const issue = async (job: LeasedJob, stubbed = false) =>
  (await gatewayProcess.call({ issue: job, stubbed })).credential!;

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
  `\n1. overhead per request (${REQUESTS} requests × ${ROUNDS} rounds per path and row, interleaved)`,
);
console.log(
  '| concurrency | stand-in answers after | direct p50 / p99 ms | gateway p50 / p99 ms | gateway / direct p50 | overhead p50 / p99 ms | SQL stubbed p50 / p99 ms | gateway CPU per request µs (SQL stubbed) |',
);
console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
const gatewayCpu = async () => (await gatewayProcess.call({ cpu: true })).cpuMicros!;
// At once: the gateway's cost when it is the bottleneck. After LATENCY_MS: as with a real
// provider, whose answers take 1-10 s, where requests rarely meet in the gateway.
const rows = [
  ...CONCURRENCIES.map((concurrency) => ({ concurrency, delayMs: 0 })),
  { concurrency: 8, delayMs: LATENCY_MS },
];
for (const { concurrency, delayMs } of rows) {
  const credential = await issue(await leased('extract_interpretations'));
  const stubbedCredential = await issue(await leased('extract_interpretations'), true);
  await resetStandIn(delayMs);
  await round(providerUrl, KEY, concurrency); // warm every path
  await round(gatewayUrl, credential, concurrency);
  await round(stubbedUrl, stubbedCredential, concurrency);
  const direct: number[] = [];
  const through: number[] = [];
  const stubbed: number[] = [];
  // The gateway process's CPU time over its rounds: its cost per request, whatever the
  // machine's load does to latencies (its usage records, written after the answers, too).
  const cpu = { gateway: 0, stubbed: 0 };
  for (let i = 0; i < ROUNDS; i++) {
    await resetStandIn(delayMs); // its list of requests would grow
    direct.push(...(await round(providerUrl, KEY, concurrency)));
    let before = await gatewayCpu();
    through.push(...(await round(gatewayUrl, credential, concurrency)));
    cpu.gateway += (await gatewayCpu()) - before;
    before = await gatewayCpu();
    stubbed.push(...(await round(stubbedUrl, stubbedCredential, concurrency)));
    cpu.stubbed += (await gatewayCpu()) - before;
  }
  const perRequest = (micros: number) => (micros / (REQUESTS * ROUNDS)).toFixed(0);
  const p = (values: number[], n: number) => b.percentile(values, n);
  const [d50, d99, g50, g99] = [p(direct, 50), p(direct, 99), p(through, 50), p(through, 99)];
  console.log(
    `| ${concurrency} | ${delayMs ? `${delayMs} ms` : 'at once'} | ${d50.toFixed(2)} / ${d99.toFixed(2)} | ${g50.toFixed(2)} / ${g99.toFixed(2)} | ${(g50 / d50).toFixed(2)} | ${(g50 - d50).toFixed(2)} / ${(g99 - d99).toFixed(2)} | ${p(stubbed, 50).toFixed(2)} / ${p(stubbed, 99).toFixed(2)} | ${perRequest(cpu.gateway)} (${perRequest(cpu.stubbed)}) |`,
  );
}

console.log(
  `\n2. extract_interpretations end to end (stand-in answers after ${LATENCY_MS} ms; HD_LLM_CONCURRENCY 8)`,
);
await resetStandIn(LATENCY_MS);

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
        HD_LLM_BASE_URL: gatewayUrl,
        HD_LLM_API_KEY: await issue(job),
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

await gatewayProcess.stop();
await standIn.stop();
await db.close();
await database.stop();
