import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT_CODES } from '../contract/errors.ts';
import { configToEnv, type Config } from '../control-plane/config.ts';
import type { TestDatabase } from './helpers/database.ts';
import { enqueueStage, insertChunks, newDocument, useStandInStages } from './helpers/llm-stages.ts';
import type { OpenAiStandIn } from './helpers/openai-server.ts';
import { startDbRelay, type OutageRelay } from './helpers/outage-relay.ts';
import { ACCOUNT_A } from './helpers/runtime.ts';

// Real PostgreSQL behind a relay the test cuts; `hd-runner run` as a child process. The model
// endpoint is a local stand-in for OpenAI (test/helpers/openai-server.ts) that never answers,
// so while the database is gone the runner makes no call of its own: only heartbeats fail.
let t: TestDatabase;
let server: OpenAiStandIn;
let config: Config;
useStandInStages((env) => ({ t, server, config } = env));
let relay: OutageRelay & { url: string };
beforeAll(async () => {
  relay = await startDbRelay(t.url);
});
afterAll(async () => {
  await relay?.close();
});

describe('a runner whose heartbeats cannot reach the database', () => {
  it('stops while its lease still holds, exits 14 and records nothing', async () => {
    const doc = newDocument();
    await insertChunks(t, ACCOUNT_A, doc, ['Kappa GmbH builds Lambda.']);
    const job = await enqueueStage(t, 'extract_interpretations', ACCOUNT_A, doc);
    server.respond(() => ({ kind: 'hang' }));
    // Heartbeats every 5 s; the runner gives up after two thirds of the lease without one.
    const env = configToEnv({ ...config, HD_LEASE_SECONDS: 15, HD_LOG_LEVEL: 'info' });
    const runner = execa(process.execPath, ['cli/main.ts', 'run', '--job-id', job.id], {
      env: { PATH: process.env.PATH ?? '', ...env, HD_DATABASE_URL: relay.url },
      extendEnv: false,
      reject: false,
    });
    try {
      await expect
        .poll(() => server.inFlight(), { timeout: 60_000, interval: 50 })
        .toBeGreaterThan(0);
      await relay.down();
      const result = await runner;
      expect(result.exitCode, result.stderr).toBe(EXIT_CODES.databaseLost);
      expect(result.stderr).toContain('no heartbeat reached the database');
    } finally {
      runner.kill('SIGKILL');
      await relay.up();
    }
    expect(await t.db.getJob(job.id)).toMatchObject({
      status: 'running',
      attempts: 1,
      error_code: null,
    });
    // It stopped before its lease ran out, so a scheduler can still hand the job back.
    const { rows } = await t.sql.query<{ held: boolean }>(
      'select lease_expires_at > now() as held from hd_ingestion_jobs where id = $1',
      [job.id],
    );
    expect(rows[0]?.held).toBe(true);
  }, 120_000);
});
