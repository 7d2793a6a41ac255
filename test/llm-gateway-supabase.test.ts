import { randomBytes, randomUUID } from 'node:crypto';
import { chmod } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createScheduler } from '../cli/commands/scheduler.ts';
import type { Job } from '../contract/jobs.ts';
import { SupabaseDb } from '../control-plane/db/supabase.ts';
import { createLogger } from '../control-plane/logger.ts';
import { LABELS } from '../scheduler/launchers/docker.ts';
import type { LlmGateway } from '../scheduler/llm-gateway/server.ts';
import { startLlmGateway } from '../scheduler/llm-gateway/start.ts';
import type { Scheduler } from '../scheduler/scheduler.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import {
  containersOf,
  removeContainersOf,
  requireDocker,
  skipNote,
  testImage,
} from './helpers/docker.ts';
import { insertChunks } from './helpers/llm-stages.ts';
import { startOpenAiStandIn, waitUntil, type OpenAiStandIn } from './helpers/openai-server.ts';
import { startLocalSupabase, type LocalSupabase } from './helpers/supabase-proxy.ts';
import { tempDir, testConfig } from './helpers/runtime.ts';

// The LLM gateway on the supabase transport: the scheduler (createScheduler as hd-runner
// scheduler builds it) claims over a real PostgREST (helpers/supabase-proxy.ts) as the
// service role, its gateway admits and records over PostgREST too, and a real runner
// container reaches PostgREST with its job's JWT and the models through the gateway with
// its job's credential. The stand-in OpenAI server (test/helpers/openai-server.ts) STANDS
// IN FOR THE PROVIDER (OpenAI cannot be reached here). Containers share the host network:
// the local Supabase listens on 127.0.0.1 only.

const d = await requireDocker();
const docker = d.docker!;
const SCHEDULER_ID = `hd-gws-${randomBytes(4).toString('hex')}`;
const PROVIDER_KEY = `sk-provider-${randomBytes(12).toString('hex')}`;
const silent = createLogger({ level: 'silent' });

let t: TestDatabase;
let supabase: LocalSupabase;
let db: SupabaseDb;
let server: OpenAiStandIn;
let gateway: LlmGateway;
let scheduler: Scheduler;

beforeAll(async () => {
  if (!d.available) return;
  let image: string;
  let root: string;
  [image, t, server, root] = await Promise.all([
    testImage(docker),
    createTestDatabase(),
    startOpenAiStandIn(),
    tempDir(),
  ]);
  await chmod(root, 0o755);
  supabase = await startLocalSupabase(t.url);
  db = new SupabaseDb({ url: supabase.url, serviceRoleKey: supabase.serviceRoleKey });
  const config = testConfig(t.url, root, {
    HD_WORKER_ID: SCHEDULER_ID,
    HD_TRANSPORT: 'supabase',
    SUPABASE_URL: supabase.url,
    SUPABASE_SERVICE_ROLE_KEY: supabase.serviceRoleKey,
    SUPABASE_ANON_KEY: supabase.anonKey,
    SUPABASE_JWT_SECRET: supabase.postgrest.jwtSecret,
    HD_LAUNCHER: 'docker',
    HD_DOCKER_IMAGE: image,
    HD_DOCKER_NETWORK: 'host',
    HD_SLOTS: '1',
    HD_POLL_INTERVAL_MS: '200',
    HD_JOB_TYPES: 'extract_interpretations',
    HD_LLM_BASE_URL: server.url,
    HD_LLM_API_KEY: PROVIDER_KEY,
    HD_LLM_MODEL: 'stand-in',
    HD_LLM_MAX_OUTPUT_TOKENS: '200',
    HD_LLM_CONCURRENCY: '1',
  });
  gateway = (await startLlmGateway(config, db, silent))!;
  scheduler = createScheduler(config, db, silent, {}, undefined, undefined, gateway);
  await scheduler.start();
}, 900_000);

afterAll(async () => {
  if (!d.available) return;
  await scheduler?.stop(0);
  await gateway?.close();
  const left = await containersOf(docker, [SCHEDULER_ID]);
  await removeContainersOf(docker, [SCHEDULER_ID]);
  await db?.close();
  await supabase?.stop();
  await server?.close();
  await t?.drop();
  expect(left.map((c) => c.Names[0])).toEqual([]);
});

describe.skipIf(!d.available)(`llm gateway on the supabase transport${skipNote(d)}`, () => {
  it("runs a runner container's LLM job through PostgREST and the gateway, within the account's budget", async () => {
    const account = randomUUID();
    await t.sql.query('select public.hd_set_llm_budget($1, 1000000)', [account]);
    const doc = randomUUID();
    await insertChunks(t, account, doc, [
      'part 0: Acme Corp audits Müller GmbH.',
      'part 1: Ana Lopez reports to Ben.',
    ]);
    // The first request is held at the provider until the runner's environment was read.
    server.respond((r) => (r.index === 0 ? { kind: 'hang' } : undefined));
    const job = await db.enqueueJob({
      accountId: account,
      jobType: 'extract_interpretations',
      documentId: doc,
      debug: {},
    });
    const finished = new Promise<Job>((resolve) => {
      const on = (j: Job) => {
        if (j.id !== job.id) return;
        scheduler.off('job:finished', on);
        resolve(j);
      };
      scheduler.on('job:finished', on);
    });
    await waitUntil('the runner at the provider', () => server.inFlight() === 1, 300_000);
    const [container] = (await containersOf(docker, [SCHEDULER_ID])).filter(
      (c) => c.Labels[LABELS.jobId] === job.id,
    );
    const env = (await docker.getContainer(container!.Id).inspect()).Config.Env;
    const reserved = await t.sql.query<{ n: string }>(
      'select sum(reserved_tokens) as n from hd_llm_usage where job_id = $1',
      [job.id],
    );
    expect(Number(reserved.rows[0]!.n)).toBeGreaterThan(0); // admitted over PostgREST
    server.releaseHanging();

    const done = await finished;
    expect(`${done.status} ${done.error_code ?? ''}`).toBe('completed ');
    // The runner held its job's JWT and gateway credential: no provider or service key.
    const value = (name: string) => env.find((e) => e.startsWith(`${name}=`))?.split('=')[1];
    expect(value('HD_TRANSPORT')).toBe('supabase');
    expect(value('HD_JOB_TOKEN')).toMatch(/^ey/);
    expect(value('HD_LLM_BASE_URL')).toBe(gateway.url);
    expect(value('HD_LLM_API_KEY')).toMatch(/^hdgw_/);
    expect(env.join('\n')).not.toContain(PROVIDER_KEY);
    expect(env.join('\n')).not.toContain(supabase.serviceRoleKey);
    expect(server.requests).toHaveLength(2);
    expect(new Set(server.requests.map((r) => r.authorization))).toEqual(
      new Set([`Bearer ${PROVIDER_KEY}`]),
    );
    // Recorded over PostgREST: both requests counted, every reservation released.
    const { rows } = await t.sql.query<{ requests: number; prompt: string; reserved: string }>(
      `select sum(requests)::int as requests, sum(prompt_tokens) as prompt,
              sum(reserved_tokens) as reserved
         from hd_llm_usage where job_id = $1`,
      [job.id],
    );
    expect(rows[0]).toMatchObject({ requests: 2, reserved: '0' });
    expect(Number(rows[0]!.prompt)).toBeGreaterThan(0);
  }, 600_000);
});
