import { randomBytes, randomUUID } from 'node:crypto';
import { execa } from 'execa';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { LeasedJob } from '../contract/jobs.ts';
import { configToEnv } from '../control-plane/config.ts';
import { llmLedgerOf } from '../control-plane/db/llm-ledger.ts';
import { createLogger } from '../control-plane/logger.ts';
import { credentialHash, newCredential } from '../scheduler/llm-gateway/budgets.ts';
import type { LlmGateway } from '../scheduler/llm-gateway/server.ts';
import { startLlmGateway } from '../scheduler/llm-gateway/start.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { startOpenAiStandIn, waitUntil, type OpenAiStandIn } from './helpers/openai-server.ts';
import { tempDir, testConfig } from './helpers/runtime.ts';

// Budget reservations end with their lease, and a budget refusal is no attempt (00027),
// against real PostgreSQL, a real `hd-runner scheduler` process (SIGKILLed mid-request)
// and the stand-in OpenAI server (test/helpers/openai-server.ts), which STANDS IN FOR THE
// PROVIDER (OpenAI cannot be reached here). Requests are sent as a runner sends them.

const PROVIDER_KEY = `sk-provider-${randomBytes(8).toString('hex')}`;
let t: TestDatabase;
let server: OpenAiStandIn;
let root: string;

beforeAll(async () => {
  [t, server, root] = await Promise.all([createTestDatabase(), startOpenAiStandIn(), tempDir()]);
});
afterAll(async () => {
  await server?.close();
  await t?.drop();
});
beforeEach(() => server.reset());

const settings = (env: Record<string, string> = {}) =>
  testConfig(t.url, root, {
    HD_LLM_BASE_URL: server.url,
    HD_LLM_API_KEY: PROVIDER_KEY,
    HD_LLM_MODEL: 'stand-in',
    ...env,
  });

/** An account with a daily budget, and a running job of it under a claim's lease. */
async function budgetedJob(maxAttempts = 3): Promise<LeasedJob> {
  const account = randomUUID();
  await t.sql.query('select public.hd_set_llm_budget($1, 100000)', [account]);
  const queued = await t.db.enqueueJob({
    accountId: account,
    jobType: 'extract_interpretations',
    debug: {},
    maxAttempts,
  });
  return claim(queued.id);
}

async function claim(jobId: string): Promise<LeasedJob> {
  const [job] = await t.db.claimJobs({ workerId: 'gw-reservations', leaseSeconds: 60, jobId });
  return job as LeasedJob;
}

/** What the account's requests in flight hold of its budget today (hd_llm_usage). */
async function reserved(accountId: string): Promise<number> {
  const { rows } = await t.sql.query<{ n: string }>(
    'select coalesce(sum(reserved_tokens), 0) as n from hd_llm_usage where account_id = $1',
    [accountId],
  );
  return Number(rows[0]!.n);
}

/** Ends the job's lease as the reaper does once it expired (the clock moved past it). */
async function reap(job: LeasedJob): Promise<void> {
  const { rows } = await t.sql.query<{ id: string }>(
    `select id from hd_reap_expired_leases(p_now => $1::timestamptz + interval '1 second')`,
    [job.lease_expires_at],
  );
  expect(rows.map((r) => r.id)).toContain(job.id);
}

function chat(baseUrl: string, credential: string, text: string) {
  return fetch(`${baseUrl}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${credential}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'stand-in', messages: [{ role: 'user', content: text }] }),
  });
}

describe('llm budget reservations', () => {
  it('a scheduler SIGKILLed mid-request: its reservation is released when the lease is reaped', async () => {
    const job = await budgetedJob();
    // The credential a scheduler issues its runner (any scheduler's gateway accepts it).
    const credential = newCredential();
    await llmLedgerOf(t.db).grantCredential(
      job.id,
      job.lease_token,
      credentialHash(credential),
      new Date(Date.now() + 3600_000),
    );
    const config = settings({
      HD_WORKER_ID: `gw-killed-${randomBytes(3).toString('hex')}`,
      HD_LOG_LEVEL: 'info',
      HD_JOB_TYPES: 'import_assets_jsonl', // none queued: this scheduler only serves its gateway
    });
    const scheduler = execa(process.execPath, ['cli/main.ts', 'scheduler'], {
      env: { PATH: process.env.PATH ?? '', ...configToEnv(config) },
      extendEnv: false,
      reject: false,
    });
    const url = await new Promise<string>((resolve, reject) => {
      let seen = '';
      scheduler.stderr.on('data', (chunk: Buffer) => {
        seen += String(chunk);
        const listening = /"url":"([^"]+)"[^\n]*"llm gateway listening"/.exec(seen);
        if (listening) resolve(listening[1]!);
      });
      void scheduler.then((r) => reject(new Error(`the scheduler exited: ${r.stderr}`)));
    });
    server.respond(() => ({ kind: 'hang' }));
    const answer = chat(url, credential, 'a question the scheduler dies under').catch(
      (e: unknown) => e,
    );
    await waitUntil('the request at the provider', () => server.requests.length === 1, 30_000);
    const held = await reserved(job.account_id);
    expect(held).toBeGreaterThan(0);

    scheduler.kill('SIGKILL');
    await scheduler;
    expect(await answer).toBeInstanceOf(Error); // the runner's connection dropped
    // Nothing recorded it: the reservation is still held, the budget still counts it.
    expect(await reserved(job.account_id)).toBe(held);

    await reap(job);
    expect(await reserved(job.account_id)).toBe(0);
    // Nothing of it is charged: no request was answered.
    const { rows } = await t.sql.query(
      'select requests, prompt_tokens, reserved_cost_usd from hd_llm_usage where job_id = $1',
      [job.id],
    );
    expect(rows).toEqual([{ requests: 0, prompt_tokens: '0', reserved_cost_usd: '0' }]);
  }, 120_000);

  it('an answer that comes after its lease ended takes back only what that lease held', async () => {
    const g: LlmGateway = (await startLlmGateway(
      settings(),
      t.db,
      createLogger({ level: 'silent' }),
    ))!;
    try {
      server.respond(() => ({ kind: 'hang' }));
      const first = await budgetedJob();
      const late = chat(g.url, await g.issue(first, new Date(Date.now() + 3600_000)), 'short');
      late.catch(() => {}); // awaited below; a failed assertion before must not leave it unhandled
      await waitUntil('the first request at the provider', () => server.requests.length === 1);
      expect(await reserved(first.account_id)).toBeGreaterThan(0);
      await reap(first); // its scheduler lost the lease; the request is still in flight
      expect(await reserved(first.account_id)).toBe(0);

      // The job's next attempt, on a new lease, has a request in flight of its own.
      const second = await claim(first.id);
      const live = chat(
        g.url,
        await g.issue(second, new Date(Date.now() + 3600_000)),
        'a longer question '.repeat(40),
      );
      await waitUntil('the second request at the provider', () => server.requests.length === 2);
      const secondHolds = await reserved(first.account_id);
      expect(secondHolds).toBeGreaterThan(0);

      // The first lease's answer comes back (recorded before it is passed on): the second
      // lease's reservation is untouched.
      server.releaseHanging((r) => r.index === 0);
      expect((await late).status).toBe(200);
      expect(await reserved(first.account_id)).toBe(secondHolds);

      server.releaseHanging();
      expect((await live).status).toBe(200);
      expect(await reserved(first.account_id)).toBe(0);
      const { rows } = await t.sql.query<{ requests: number }>(
        'select requests from hd_llm_usage where job_id = $1',
        [first.id],
      );
      expect(rows).toEqual([{ requests: 2 }]);
    } finally {
      await g.close();
    }
  }, 60_000);
});

describe("an admission that races its lease's end", () => {
  it('leaves a reservation that the next hd_drop_llm_credentials releases', async () => {
    const job = await budgetedJob();
    const ledger = llmLedgerOf(t.db);
    const credential = newCredential();
    await ledger.grantCredential(
      job.id,
      job.lease_token,
      credentialHash(credential),
      new Date(Date.now() + 3600_000),
    );
    const admit = () => ledger.admit(credentialHash(credential), 'stand-in', 1000, 0, undefined);
    expect((await admit()).verdict).toBe('admitted'); // a request in flight, 1000 reserved
    // The lease ends (the job completes) in a transaction that is still open: its trigger
    // holds the job's usage row. An admission meanwhile still sees the job running, and
    // waits on that row; it reserves once the lease's end committed.
    const ending = await t.sql.connect();
    try {
      await ending.query('begin');
      await ending.query('select hd_complete_job($1, $2)', [job.id, job.lease_token]);
      const racing = admit();
      await waitUntil('the admission waiting on the usage row', async () => {
        const { rows } = await t.sql.query(
          `select 1 from pg_stat_activity
            where datname = current_database() and query like '%hd_llm_admit%'
              and wait_event_type = 'Lock'`,
        );
        return rows.length > 0;
      });
      await ending.query('commit');
      expect((await racing).verdict).toBe('admitted');
    } finally {
      ending.release();
    }
    // The first reservation went with the lease; the racing one is left behind, held by a
    // lease that ended.
    expect(await reserved(job.account_id)).toBe(1000);
    // Every scheduler calls this after a runner ends (RunnerAccess.release).
    await ledger.dropCredentials();
    expect(await reserved(job.account_id)).toBe(0);
  });
});

describe('a budget refusal is no attempt', () => {
  const nextMidnight = () => new Date().setUTCHours(24, 0, 0, 0);

  it('queues the job for the next UTC day with its attempt refunded, on its last attempt too', async () => {
    const job = await budgetedJob(1);
    expect(job.attempts).toBe(1);
    const before = nextMidnight();
    // As the runner fails it on the gateway's 402 (runner/llm/budget-refusal.ts).
    const deferred = await t.db.failJob(job.id, job.lease_token, {
      code: 'LLM_BUDGET_EXCEEDED',
      message: "the account's language-model budget would be exceeded",
      retryable: true,
    });
    expect(deferred).toMatchObject({ status: 'queued', attempts: 0, finished_at: null });
    // The midnight after the failure, whichever day it fell on (the test may cross one).
    expect([before, nextMidnight()]).toContain(new Date(deferred.run_after!).getTime());
  });

  it('defers a job at most 7 times; the 8th refusal spends its attempt and fails it', async () => {
    const job = await budgetedJob(1);
    const refuse = (leased: LeasedJob) =>
      t.db.failJob(leased.id, leased.lease_token, {
        code: 'LLM_BUDGET_EXCEEDED',
        message: "the account's language-model budget would be exceeded",
        retryable: true,
      });
    let leased = job;
    for (let day = 1; day <= 7; day += 1) {
      const deferred = await refuse(leased);
      expect(deferred).toMatchObject({ status: 'queued', attempts: 0 });
      expect(deferred.debug).toMatchObject({ llm_budget_deferrals: day });
      // The next UTC day, without waiting for it.
      await t.sql.query('update hd_ingestion_jobs set run_after = now() where id = $1', [job.id]);
      leased = await claim(job.id);
    }
    expect(await refuse(leased)).toMatchObject({ status: 'failed', attempts: 1 });
  });

  it('other retryable failures still spend the attempt', async () => {
    const job = await budgetedJob(1);
    const failed = await t.db.failJob(job.id, job.lease_token, {
      code: 'LLM_FAILED',
      message: 'the model endpoint answered 500',
      retryable: true,
    });
    expect(failed).toMatchObject({ status: 'failed', attempts: 1 });
  });
});
