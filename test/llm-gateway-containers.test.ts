import { randomBytes, randomUUID } from 'node:crypto';
import { chmod } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createScheduler } from '../cli/commands/scheduler.ts';
import type { Job, LeasedJob } from '../contract/jobs.ts';
import type { Config } from '../control-plane/config.ts';
import { createLogger } from '../control-plane/logger.ts';
import { LABELS } from '../scheduler/launchers/docker.ts';
import { chatTokenCeiling } from '../scheduler/llm-gateway/budgets.ts';
import type { LlmGateway } from '../scheduler/llm-gateway/server.ts';
import { startLlmGateway } from '../scheduler/llm-gateway/start.ts';
import type { Scheduler } from '../scheduler/scheduler.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import {
  containersOf,
  removeContainersOf,
  requireDocker,
  runNodeScript,
  skipNote,
  testImage,
} from './helpers/docker.ts';
import { insertChunks } from './helpers/llm-stages.ts';
import { startOpenAiStandIn, waitUntil, type OpenAiStandIn } from './helpers/openai-server.ts';
import { ACCOUNT_A, ACCOUNT_B, tempDir, testConfig } from './helpers/runtime.ts';

// Issue 19's proof, from the runners' side: six extract_interpretations jobs run in six
// real runner containers, started by the real scheduler wiring (createScheduler with the
// docker launcher and the LLM gateway of startLlmGateway), against the stand-in OpenAI
// server (test/helpers/openai-server.ts), which STANDS IN FOR THE PROVIDER (OpenAI cannot
// be reached here) and counts the requests it has in flight and when each arrived.
// Containers share the host network (embedded PostgreSQL listens on 127.0.0.1 only), so
// the gateway listens on loopback, as it does for host networking in production.

const d = await requireDocker();
const docker = d.docker!;
const SCHEDULER_ID = `hd-gw-${randomBytes(4).toString('hex')}`;
const PROVIDER_KEY = `sk-provider-${randomBytes(12).toString('hex')}`;
const LIMIT = 3;
const CHUNKS_PER_JOB = 4;
const silent = createLogger({ level: 'silent' });

let t: TestDatabase;
let server: OpenAiStandIn;
let gateway: LlmGateway;
let scheduler: Scheduler;
let config: Config;
/** Each runner container's environment, read with `docker inspect` while it ran. */
const inspected = new Map<string, string[]>();

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
  config = testConfig(t.url, root, {
    HD_WORKER_ID: SCHEDULER_ID,
    HD_LAUNCHER: 'docker',
    HD_DOCKER_IMAGE: image,
    HD_DOCKER_NETWORK: 'host',
    HD_RUNNER_DATABASE_URL: t.runnerUrl,
    HD_SLOTS: '6',
    HD_POLL_INTERVAL_MS: '200',
    HD_JOB_TYPES: 'extract_interpretations',
    HD_LLM_BASE_URL: server.url,
    HD_LLM_API_KEY: PROVIDER_KEY,
    HD_LLM_MODEL: 'stand-in',
    // Each runner may send 4 at once: 24 together, against a limit of 3 for all of them.
    HD_LLM_CONCURRENCY: '4',
    HD_LLM_MAX_OUTPUT_TOKENS: '200',
    HD_LLM_LIMITS: JSON.stringify({ 'stand-in': { concurrency: LIMIT } }),
    HD_LOG_LEVEL: 'silent',
  });
  gateway = (await startLlmGateway(config, t.db, silent))!;
  scheduler = createScheduler(config, t.db, silent, {}, undefined, undefined, gateway);
  await scheduler.start();
}, 900_000);

afterAll(async () => {
  if (!d.available) return;
  await scheduler?.stop(0);
  await gateway?.close();
  const left = await containersOf(docker, [SCHEDULER_ID]);
  await removeContainersOf(docker, [SCHEDULER_ID]);
  await server?.close();
  await t?.drop();
  expect(left.map((c) => c.Names[0])).toEqual([]);
});

/** An extract_interpretations job over chunks that name it (`doc<n>`), for the stand-in's log. */
async function enqueueDocument(
  account: string,
  n: number,
  chunks = CHUNKS_PER_JOB,
  filler = '',
): Promise<Job> {
  const doc = randomUUID();
  await insertChunks(
    t,
    account,
    doc,
    Array.from(
      { length: chunks },
      (_, i) =>
        `doc${n} part ${i}: Acme Corp audits Müller GmbH. Ana Lopez reports to Ben.${filler}`,
    ),
  );
  return t.db.enqueueJob({
    accountId: account,
    jobType: 'extract_interpretations',
    documentId: doc,
    debug: {},
  });
}

function ended(jobId: string): Promise<Job> {
  return new Promise((resolve) => {
    const on = (job: Job) => {
      if (job.id !== jobId) return;
      scheduler.off('job:finished', on);
      resolve(job);
    };
    scheduler.on('job:finished', on);
  });
}

/** Reads each runner container's environment while it runs, until `done` settles. */
async function inspectWhileRunning(done: Promise<unknown>) {
  let over = false;
  void done.finally(() => (over = true));
  while (!over) {
    for (const c of await containersOf(docker, [SCHEDULER_ID])) {
      const jobId = c.Labels[LABELS.jobId]!;
      if (inspected.has(jobId)) continue;
      const info = await docker
        .getContainer(c.Id)
        .inspect()
        .catch(() => undefined);
      if (info) inspected.set(jobId, info.Config.Env);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

const envValue = (env: string[], name: string) =>
  env.find((e) => e.startsWith(`${name}=`))?.slice(name.length + 1);

/** Runs `script` with node in a runner-image container on the host network; its stdout. */
const runInContainer = (script: string) =>
  runNodeScript(docker, {
    image: config.HD_DOCKER_IMAGE,
    script,
    network: 'host',
    schedulerId: SCHEDULER_ID,
  });

/** A chat request exactly as a runner's client sends it, from inside a container. */
const attackScript = (url: string, credential: string) => `
  const res = await fetch(${JSON.stringify(`${url}/chat/completions`)}, {
    method: 'POST',
    headers: { authorization: 'Bearer ${credential}', 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'stand-in', messages: [{ role: 'user', content: 'attacker' }], max_tokens: 10 }),
  });
  console.log(JSON.stringify({ status: res.status, body: await res.text() }));
`;

describe.skipIf(!d.available)(`llm gateway with six runner containers${skipNote(d)}`, () => {
  it('holds six runners to one limit, pauses all of them on a 429, and gives none the key', async () => {
    // The first requests (as many as the limit lets through) are refused 429 Retry-After: 2.
    // The next ones are held there until every container was inspected and the limit's three
    // are at the provider at once: no runner ends unseen, however slow the machine (the
    // rest wait at the limiter meanwhile).
    server.respond((r) =>
      r.index < LIMIT
        ? { kind: 'status', status: 429, headers: { 'retry-after': '2' } }
        : { kind: 'hang' },
    );
    const jobs = await Promise.all(
      [0, 1, 2, 3, 4, 5].map((n) => enqueueDocument(n % 2 ? ACCOUNT_B : ACCOUNT_A, n)),
    );
    let endedEarly = 0;
    const endings = jobs.map((j) => ended(j.id).finally(() => void (endedEarly += 1)));
    const finished = Promise.all(endings);
    const inspecting = inspectWhileRunning(finished);
    await waitUntil(
      'six runners inspected and three requests at the provider',
      () => (inspected.size === 6 && server.inFlight() === LIMIT) || endedEarly > 0,
      300_000,
    );
    expect(endedEarly).toBe(0);
    server.respond(undefined);
    server.releaseHanging();
    const results = await finished;
    await inspecting;
    expect(results.map((j) => `${j.status} ${j.error_code ?? ''}`)).toEqual(
      Array(6).fill('completed '),
    );

    // Never more than the limit at the provider, and the limit was reached (not idle).
    expect(server.maxInFlight()).toBe(LIMIT);
    // After the first 429, nothing reached the provider for 2 s, from any of the six runners.
    const first429 = server.requests[0]!.receivedAt;
    const after = server.requests.slice(LIMIT);
    expect(after.length).toBeGreaterThanOrEqual(6 * CHUNKS_PER_JOB);
    const early = after.filter((r) => r.receivedAt - first429 < 2000);
    expect(early.map((r) => r.receivedAt - first429)).toEqual([]);
    const docsAfter = new Set(after.map((r) => /doc(\d)/.exec(r.text)?.[1]));
    expect(docsAfter.size).toBe(6);
    // The provider saw the scheduler's key on every request.
    expect(new Set(server.requests.map((r) => r.authorization))).toEqual(
      new Set([`Bearer ${PROVIDER_KEY}`]),
    );

    // `docker inspect`: no container held the provider key, each its own credential.
    expect([...inspected.keys()].sort()).toEqual(jobs.map((j) => j.id).sort());
    const credentials = new Set<string>();
    for (const env of inspected.values()) {
      expect(env.join('\n')).not.toContain(PROVIDER_KEY);
      expect(envValue(env, 'HD_LLM_BASE_URL')).toBe(gateway.url);
      credentials.add(envValue(env, 'HD_LLM_API_KEY')!);
    }
    expect(credentials.size).toBe(6);
    for (const c of credentials) expect(c).toMatch(/^hdgw_/);
  }, 600_000);

  it("refuses a job's credential from a container once the job's lease has ended", async () => {
    const [jobId, env] = [...inspected.entries()][0]!;
    const stale = envValue(env, 'HD_LLM_API_KEY')!;
    expect((await t.db.getJob(jobId))?.status).toBe('completed');
    // A control: a live lease's credential, sent the same way, is served.
    const live = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'probe', debug: {} });
    const [leased] = await t.db.claimJobs({
      workerId: SCHEDULER_ID,
      jobId: live.id,
      leaseSeconds: 60,
    });
    const fresh = await gateway.issue(leased as LeasedJob, new Date(Date.now() + 600_000));
    server.reset();
    expect(JSON.parse(await runInContainer(attackScript(gateway.url, fresh))).status).toBe(200);
    expect(server.requests).toHaveLength(1);

    const refused = JSON.parse(await runInContainer(attackScript(gateway.url, stale))) as {
      status: number;
      body: string;
    };
    expect(refused.status).toBe(401);
    expect(refused.body).toMatch(/lease is no longer current/);
    // The live one too, once its lease is gone (cancelled).
    await t.db.cancelJob(live.id);
    expect(JSON.parse(await runInContainer(attackScript(gateway.url, fresh))).status).toBe(401);
    expect(server.requests).toHaveLength(1);
  }, 300_000);

  it('stops the job that would exceed its account budget, and nothing reaches the provider after', async () => {
    const account = randomUUID();
    // Room for four or five of this job's requests (each reserves what the gateway's
    // chatTokenCeiling makes of it until it is answered: its whole body, json_schema
    // included, at 4 bytes a token, + its output limit); it has twelve. Their bodies are
    // read off the same job run first for an account without a budget.
    server.reset();
    const probe = await enqueueDocument(randomUUID(), 7, 12);
    expect((await ended(probe.id)).status).toBe('completed');
    const perRequest = Math.max(
      ...server.requests.map((r) =>
        chatTokenCeiling(r.body, Buffer.byteLength(JSON.stringify(r.body)), 200),
      ),
    );
    const budget = Math.round(4.5 * perRequest);
    await t.sql.query('select public.hd_set_llm_budget($1, $2)', [account, budget]);
    server.reset();
    const job = await enqueueDocument(account, 7, 12);
    const first = await ended(job.id);
    expect(first.error_code).toBe('LLM_BUDGET_EXCEEDED');
    expect(first.status).toBe('queued');
    const midnight = new Date();
    midnight.setUTCHours(24, 0, 0, 0);
    expect(new Date(first.run_after!).getTime()).toBeGreaterThanOrEqual(midnight.getTime());
    const sent = server.requests.length;
    expect(sent).toBeGreaterThanOrEqual(4);
    expect(sent).toBeLessThan(12);
    const usage = async () =>
      (
        await t.sql.query<{ tokens: number; refused: number }>(
          `select sum(prompt_tokens + completion_tokens)::int as tokens, sum(refused)::int as refused
             from hd_llm_usage where account_id = $1`,
          [account],
        )
      ).rows[0]!;
    expect((await usage()).tokens).toBeLessThanOrEqual(budget);
    expect((await usage()).refused).toBeGreaterThan(0);

    // The account's next job (requests larger than what is left, whatever the first left in
    // flight) is refused at its first request: the provider sees nothing more.
    const next = await enqueueDocument(account, 8, 2, ' Filler words.'.repeat(300));
    const second = await ended(next.id);
    expect(second.error_code).toBe('LLM_BUDGET_EXCEEDED');
    expect(server.requests).toHaveLength(sent);
    expect((await usage()).tokens).toBeLessThanOrEqual(budget);
  }, 300_000);
});
