import { describe, expect, it } from 'vitest';
import { toHdError } from '../contract/errors.ts';
import type { Job } from '../contract/jobs.ts';
import { configToEnv, type Config } from '../control-plane/config.ts';
import { createLogger } from '../control-plane/logger.ts';
import { ProcessLauncher } from '../scheduler/launchers/process.ts';
import { Scheduler } from '../scheduler/scheduler.ts';
import type { TestDatabase } from './helpers/database.ts';
import {
  enqueueStage,
  insertChunks,
  newDocument,
  runStage,
  runToCompletion,
  useStandInStages,
} from './helpers/llm-stages.ts';
import { waitUntil, type OpenAiStandIn } from './helpers/openai-server.ts';
import { ACCOUNT_A, ACCOUNT_B } from './helpers/runtime.ts';

// The model endpoint is a local stand-in server speaking the OpenAI chat-completions
// wire format (test/helpers/openai-server.ts), standing in for OpenAI/vLLM/Ollama.
let t: TestDatabase;
let server: OpenAiStandIn;
let config: Config;
useStandInStages((env) => ({ t, server, config } = env));

const jobsOf = async (documentId: string, jobType: string): Promise<Job[]> =>
  (
    await t.sql.query(`select * from hd_ingestion_jobs where document_id = $1 and job_type = $2`, [
      documentId,
      jobType,
    ])
  ).rows as Job[];

describe('pipelines', () => {
  it('enqueue the next stage once for the same account and document, even when completion is retried', async () => {
    const doc = newDocument();
    await insertChunks(t, ACCOUNT_A, doc, ['Kappa GmbH builds Lambda.']);
    const first = await enqueueStage(t, 'extract_interpretations', ACCOUNT_A, doc, {
      next_stages: ['text2kg', 'synthesize_node'],
    });
    const done = await runToCompletion(t, config, first.id);
    const [kg] = await jobsOf(doc, 'text2kg');
    expect(kg).toMatchObject({
      account_id: ACCOUNT_A,
      document_id: doc,
      status: 'queued',
      debug: {
        next_stages: ['synthesize_node'],
        pipeline: { root_job_id: first.id, parent_job_id: first.id },
      },
    });
    expect(done.debug.stats).toMatchObject({ next_job: { id: kg!.id, job_type: 'text2kg' } });

    await t.db.requeueJob(first.id);
    const again = await runToCompletion(t, config, first.id);
    expect(await jobsOf(doc, 'text2kg')).toHaveLength(1);
    expect(again.debug.stats).toMatchObject({ next_job: { id: kg!.id } });

    await runToCompletion(t, config, kg!.id);
    const [synth] = await jobsOf(doc, 'synthesize_node');
    expect(synth!.debug).toMatchObject({
      next_stages: [],
      pipeline: { root_job_id: first.id, parent_job_id: kg!.id },
    });
    const last = await runToCompletion(t, config, synth!.id);
    expect(last.debug.stats).toMatchObject({ nodes: 2, synthesized: 2 });
    expect(last.debug.stats).not.toHaveProperty('next_job');
  });

  it('run end to end under the scheduler with child runners', async () => {
    const doc = newDocument();
    await insertChunks(t, ACCOUNT_B, doc, ['Mu Systems acquires Nu Data.', 'Nu Data hosts Xi.']);
    const cfg = { ...config, HD_POLL_INTERVAL_MS: 100 };
    const scheduler = new Scheduler({
      db: t.db,
      launcher: new ProcessLauncher({ env: { PATH: process.env.PATH ?? '', ...configToEnv(cfg) } }),
      config: cfg,
      log: createLogger({ level: 'silent' }),
    });
    await scheduler.start();
    try {
      await enqueueStage(t, 'extract_interpretations', ACCOUNT_B, doc, {
        next_stages: ['text2kg', 'synthesize_node'],
      });
      await waitUntil(
        'the synthesize_node stage to complete',
        async () => (await jobsOf(doc, 'synthesize_node'))[0]?.status === 'completed',
        30_000,
      );
    } finally {
      await scheduler.stop(0);
    }
    const { rows } = await t.sql.query(
      `select label, canonical_description from hd_kg_nodes where account_id = $1 and label in ('Mu Systems', 'Nu Data', 'Xi') order by label`,
      [ACCOUNT_B],
    );
    expect(rows).toHaveLength(3);
    for (const row of rows) expect(row.canonical_description).toMatch(/^\[stand-in\] /);
  });
});

describe('tenant separation', () => {
  it("never puts one account's content in a prompt with another's, even for the same document id", async () => {
    const doc = newDocument();
    // The tags are lower case so the stand-in does not take them for names.
    const texts = (tag: string) =>
      Array.from({ length: 4 }, (_, i) => `Zeta Corp supplies Omega Inc for ${tag} ${i}.`);
    await insertChunks(t, ACCOUNT_A, doc, texts('tenant-a-secret'));
    await insertChunks(t, ACCOUNT_B, doc, texts('tenant-b-secret'));
    const jobs = await Promise.all(
      [ACCOUNT_A, ACCOUNT_B].map((a) => enqueueStage(t, 'extract_interpretations', a, doc)),
    );
    await Promise.all(jobs.map((j) => runToCompletion(t, config, j.id)));
    for (const account of [ACCOUNT_A, ACCOUNT_B]) {
      await runToCompletion(t, config, (await enqueueStage(t, 'text2kg', account, doc)).id);
      await runToCompletion(t, config, (await enqueueStage(t, 'synthesize_node', account, doc)).id);
    }
    expect(server.requests.length).toBe(8 + 4);
    for (const request of server.requests) {
      const a = request.text.includes('tenant-a-secret');
      const b = request.text.includes('tenant-b-secret');
      expect(a !== b, `request ${request.index} mixes or lacks tenants`).toBe(true);
    }
    const { rows } = await t.sql.query(
      `select n.account_id, count(*)::int n from hd_kg_nodes n where normalized_label in ('zeta corp', 'omega inc')
        group by 1 order by 1`,
    );
    expect(rows).toEqual([
      { account_id: ACCOUNT_A, n: 2 },
      { account_id: ACCOUNT_B, n: 2 },
    ]);
  });

  it("refuses in SQL an interpretation for another account's chunk", async () => {
    const doc = newDocument();
    const [foreignChunk] = await insertChunks(t, ACCOUNT_B, doc, ['B only']);
    const job = await enqueueStage(t, 'extract_interpretations', ACCOUNT_A, doc);
    const [leased] = await t.db.claimJobs({ workerId: 'w', jobId: job.id, leaseSeconds: 60 });
    const write = t.db.upsertInterpretations(job.id, leased!.lease_token!, [
      {
        chunk_id: foreignChunk!,
        chunk_sha256: 'x',
        prompt_version: 'v',
        model: 'm',
        payload: {},
        usage: {},
      },
    ]);
    await expect(write).rejects.toMatchObject({ code: 'HDT01' });
    await expect(t.db.countChunksToInterpret(job.id, leased!.lease_token!, 'v')).resolves.toEqual({
      total: 0,
      pending: 0,
    });
  });
});

describe('cancellation', () => {
  it('aborts the requests in flight when the job is cancelled, keeping what was stored', async () => {
    const doc = newDocument();
    await insertChunks(t, ACCOUNT_A, doc, ['One A meets B.', 'Two C meets D.', 'Three E meets F.']);
    const job = await enqueueStage(t, 'extract_interpretations', ACCOUNT_A, doc);
    server.respond((r) => (r.index === 0 ? undefined : { kind: 'hang' }));
    // A 3 s lease heartbeats every second: that is how the runner learns of the cancel.
    const running = runStage(t, { ...config, HD_LEASE_SECONDS: 3 }, job.id);
    const stored = async () =>
      (
        await t.sql.query(`select count(*)::int n from hd_interpretations where document_id = $1`, [
          doc,
        ])
      ).rows[0].n as number;
    await waitUntil('two requests stalled', () => server.inFlight() === 2);
    // The first answer is written after its response: cancel only once it is stored.
    await waitUntil('the first answer stored', async () => (await stored()) === 1);
    await t.db.cancelJob(job.id, 'stopped by the test');
    const outcome = await running;
    expect(outcome.outcome).toBe('lease_lost');
    expect('error' in outcome && toHdError(outcome.error).code).toBe('CANCELLED');
    await waitUntil('both stalled requests aborted', () => server.abortedCount() === 2);
    expect(await t.db.getJob(job.id)).toMatchObject({ status: 'failed', error_code: 'CANCELLED' });
    expect(await stored()).toBe(1);
  });
});
