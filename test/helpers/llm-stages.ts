import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, beforeEach } from 'vitest';
import type { Config } from '../../control-plane/config.ts';
import { createLogger } from '../../control-plane/logger.ts';
import { FsStorage } from '../../control-plane/storage/fs.ts';
import { runJob, type RunOutcome } from '../../runner/run-job.ts';
import { createTestDatabase, type TestDatabase } from './database.ts';
import { startOpenAiStandIn, type OpenAiStandIn } from './openai-server.ts';
import { tempDir, testConfig } from './runtime.ts';

/** A test database, fs storage and config pointed at the stand-in OpenAI server. */
export async function llmTestConfig(
  t: TestDatabase,
  server: OpenAiStandIn,
  env: Record<string, string> = {},
): Promise<Config> {
  return testConfig(t.url, await tempDir(), {
    HD_LLM_BASE_URL: server.url,
    HD_LLM_API_KEY: 'sk-stages-test-key',
    HD_LLM_MODEL: 'stand-in',
    HD_LLM_CONCURRENCY: '2',
    HD_LLM_RETRY_BASE_MS: '5',
    HD_LLM_PRICE_INPUT_PER_MTOK: '0.15',
    HD_LLM_PRICE_OUTPUT_PER_MTOK: '0.6',
    ...env,
  });
}

/**
 * Chunks as extract_text writes them (issue 7), inserted directly. `content_sha256` is
 * left null on purpose: the SQL then hashes the content itself.
 */
export async function insertChunks(
  t: TestDatabase,
  accountId: string,
  documentId: string,
  texts: string[],
): Promise<string[]> {
  const ids: string[] = [];
  for (const [i, content] of texts.entries()) {
    const { rows } = await t.sql.query<{ id: string }>(
      `insert into hd_asset_chunks (account_id, document_id, chunk_index, content, page_start, page_end)
       values ($1, $2, $3, $4, $5, $5)
       on conflict (account_id, document_id, chunk_index)
       do update set content = excluded.content, updated_at = now()
       returning id`,
      [accountId, documentId, i, content, i + 1],
    );
    ids.push(rows[0]!.id);
  }
  return ids;
}

export function newDocument(): string {
  return randomUUID();
}

export async function enqueueStage(
  t: TestDatabase,
  jobType: string,
  accountId: string,
  documentId: string | null,
  debug: Record<string, unknown> = {},
) {
  return t.db.enqueueJob({ accountId, jobType, documentId, debug });
}

const silent = createLogger({ level: 'silent' });

/** Runs one job in-process, as `hd-runner run --job-id` does. */
export function runStage(
  t: TestDatabase,
  config: Config,
  jobId: string,
  interrupt?: AbortSignal,
): Promise<RunOutcome> {
  return runJob({
    db: t.db,
    storage: new FsStorage(config.HD_STORAGE_ROOT),
    config,
    log: silent,
    jobId,
    interrupt,
  });
}

/** Runs a job to completion, failing the test with the job's error otherwise. */
export async function runToCompletion(t: TestDatabase, config: Config, jobId: string) {
  const outcome = await runStage(t, config, jobId);
  if (outcome.outcome !== 'completed') {
    const detail = 'error' in outcome ? `${outcome.error.code}: ${outcome.error.message}` : '';
    throw new Error(`job ${jobId} ended ${outcome.outcome} ${detail}`);
  }
  return outcome.job;
}

/** Every row of a table for an account, for before/after comparisons of re-runs. */
export async function rowsOf(t: TestDatabase, table: string, accountId: string) {
  const allowed = [
    'hd_interpretations',
    'hd_kg_nodes',
    'hd_kg_edges',
    'hd_syntheses',
    'hd_dynamics',
  ];
  if (!allowed.includes(table)) throw new Error(`not a stage table: ${table}`);
  const { rows } = await t.sql.query(`select * from ${table} where account_id = $1 order by id`, [
    accountId,
  ]);
  return rows as Record<string, unknown>[];
}

/** An answer in the interpretation schema, for scripting the stand-in. */
export function interpretationAnswer(
  relations: [
    source: string,
    sourceType: string,
    relation: string,
    target: string,
    targetType: string,
  ][],
): string {
  return JSON.stringify({
    statements: [],
    rules: [],
    relations: relations.map(([source, source_type, relation, target, target_type]) => ({
      source,
      source_type,
      relation,
      target,
      target_type,
      quote: `${source} ${relation} ${target}`,
    })),
  });
}

/**
 * Registers the hooks every LLM-stage test file needs: its own database, the stand-in
 * OpenAI server (reset before each test), and a config pointed at both.
 */
export function useStandInStages(
  set: (env: { t: TestDatabase; server: OpenAiStandIn; config: Config }) => void,
): void {
  let env: { t: TestDatabase; server: OpenAiStandIn; config: Config } | undefined;
  beforeAll(async () => {
    const t = await createTestDatabase();
    const server = await startOpenAiStandIn();
    env = { t, server, config: await llmTestConfig(t, server) };
    set(env);
  });
  afterAll(async () => {
    await env?.server.close();
    await env?.t.drop();
  });
  beforeEach(() => env?.server.reset());
}
