// A process of its own for bench/llm-gateway.ts (forked with IPC), as in production, where
// the gateway runs in the scheduler's process and the provider and runners elsewhere:
//   node bench/llm-gateway-serve.ts gateway   the real gateway (startLlmGateway, its SQL on
//                                             BENCH_GW_DATABASE_URL), and the same gateway
//                                             with its SQL stubbed (the HTTP path alone);
//   node bench/llm-gateway-serve.ts stand-in  the stand-in OpenAI server
//                                             (test/helpers/openai-server.ts).
// Each says {ready: {...urls}} once listening, then answers the parent's messages.
import type { ClaimedJob } from '../contract/jobs.ts';
import { loadConfig } from '../control-plane/config.ts';
import { PostgresDb } from '../control-plane/db/postgres.ts';
import { createLogger } from '../control-plane/logger.ts';
import { LlmLimiter } from '../scheduler/llm-gateway/limiter.ts';
import { LlmGateway } from '../scheduler/llm-gateway/server.ts';
import { startLlmGateway } from '../scheduler/llm-gateway/start.ts';
import { startOpenAiStandIn } from '../test/helpers/openai-server.ts';

export type ServeRequest =
  | { id: number; issue: ClaimedJob; stubbed: boolean }
  | { id: number; reset: true; delayMs?: number }
  | { id: number; cpu: true }
  | { id: number; stop: true };
export interface ServeReply {
  id: number;
  credential?: string;
  /** CPU time of this process so far (user + system), in µs. */
  cpuMicros?: number;
}

const role = process.argv[2];
const reply = (message: ServeReply | { ready: Record<string, string> }) => process.send!(message);
const silent = createLogger({ level: 'silent' });

if (role === 'stand-in') {
  const server = await startOpenAiStandIn();
  process.on('message', (m: ServeRequest) => {
    if ('reset' in m) {
      server.reset(); // its request list would grow over the rounds
      const delayMs = m.delayMs;
      if (delayMs) server.respond(() => ({ kind: 'answer', delayMs }));
    }
    if ('stop' in m) void server.close().then(() => process.exit(0));
    reply({ id: m.id });
  });
  reply({ ready: { url: server.url } });
} else if (role === 'gateway') {
  const url = process.env.BENCH_GW_DATABASE_URL!;
  const config = loadConfig({
    HD_DATABASE_URL: url,
    HD_STORAGE_ROOT: '/nonexistent',
    HD_LLM_BASE_URL: process.env.BENCH_GW_PROVIDER_URL!,
    HD_LLM_API_KEY: process.env.BENCH_GW_PROVIDER_KEY!,
    HD_LLM_MODEL: 'stand-in',
    HD_LLM_CONCURRENCY: '8',
    HD_LLM_MAX_OUTPUT_TOKENS: '300',
    HD_LOG_LEVEL: 'silent',
  });
  const db = new PostgresDb({ connectionString: url, poolSize: 8 });
  const gateway = (await startLlmGateway(config, db, silent))!;
  // The same gateway without the database: credentials in memory, every one admitted,
  // nothing recorded.
  const stubbed = new LlmGateway({
    ledger: {
      grantCredential: async () => {},
      dropCredentials: async () => 0,
      credential: async () => null,
      admit: async () =>
        ({ verdict: 'admitted', job_id: '', account_id: '', day: '', reserved: false }) as const,
      record: async () => {},
    },
    log: silent,
    chat: { baseURL: config.HD_LLM_BASE_URL!, apiKey: config.HD_LLM_API_KEY },
    transcribe: undefined,
    transcribeModel: 'whisper-1',
    models: new Set(['stand-in']),
    limiter: new LlmLimiter(),
    prices: {},
    defaultOutputTokens: 300,
    defaultDailyTokens: undefined,
    timeoutMs: 60_000,
    runnerRequests: 16,
    bufferBytes: config.HD_LLM_GATEWAY_BUFFER_BYTES,
  });
  await stubbed.listen('127.0.0.1', 0);
  process.on('message', (m: ServeRequest) => {
    if ('issue' in m) {
      const until = new Date(Date.now() + 3600_000);
      void (m.stubbed ? stubbed : gateway)
        .issue(m.issue, until)
        .then((credential) => reply({ id: m.id, credential }));
    } else if ('cpu' in m) {
      const { user, system } = process.cpuUsage();
      reply({ id: m.id, cpuMicros: user + system });
    } else if ('stop' in m) {
      void Promise.all([gateway.close(), stubbed.close(), db.close()]).then(() => process.exit(0));
    }
  });
  reply({ ready: { gateway: gateway.url, stubbed: stubbed.url } });
} else {
  throw new Error(`usage: node bench/llm-gateway-serve.ts gateway|stand-in (got ${role})`);
}
