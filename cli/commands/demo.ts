import { join, resolve } from 'node:path';
import pg from 'pg';
import type { Job } from '../../contract/jobs.ts';
import { configFrom, type Env, type ParsedArgs } from '../command.ts';
import type { Config } from '../../control-plane/config.ts';
import { migrate } from '../../control-plane/db/migrate.ts';
import { PostgresDb } from '../../control-plane/db/postgres.ts';
import { startEmbeddedPostgres } from '../../control-plane/embedded-postgres.ts';
import { createLogger } from '../../control-plane/logger.ts';
import { PACKAGE_ROOT } from '../../control-plane/package-root.ts';
import { FsStorage } from '../../control-plane/storage/fs.ts';
import { STAND_IN_MODEL, startStandInModel } from '../../runner/llm/stand-in-model.ts';
import {
  enqueuePipeline,
  PIPELINE_DOCUMENTS,
  pipelineJobs,
  tenantGraphs,
} from '../demo-pipeline.ts';
import { formatTable, summarizeStats } from '../format.ts';
import { enqueueImportFile } from './enqueue.ts';
import { startLlmGateway } from '../../scheduler/llm-gateway/start.ts';
import { createScheduler } from './scheduler.ts';

const TENANTS = {
  acme: '11111111-1111-4111-8111-111111111111',
  globex: '22222222-2222-4222-8222-222222222222',
} as const;

/** The imports the demo enqueues, and how each is expected to end. */
const IMPORTS = [
  { tenant: 'acme', file: 'acme-assets.jsonl', strict: false, expect: 'completed' },
  { tenant: 'globex', file: 'globex-assets.jsonl', strict: false, expect: 'completed' },
  { tenant: 'globex', file: 'globex-assets.jsonl', strict: true, expect: 'failed' },
] as const;

const DRAIN_TIMEOUT_MS = 180_000;

export async function demoCommand(args: ParsedArgs, env: Env): Promise<number> {
  const dir = resolve(
    typeof args.values.dir === 'string' ? args.values.dir : (env.HD_DEMO_DIR ?? '.hd-data'),
  );
  console.log(`demo: starting PostgreSQL in ${join(dir, 'postgres')} …`);
  const database = await startEmbeddedPostgres({ dir: join(dir, 'postgres') });
  // Ctrl-C must not leave the database server running: stop it, then exit.
  const onSignal = (signal: NodeJS.Signals) => {
    console.error(`demo: ${signal}: stopping PostgreSQL`);
    void database.stop().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const model = env.HD_LLM_BASE_URL ? undefined : await startStandInModel();
  if (model)
    console.log(
      `demo: no HD_LLM_BASE_URL: the LLM stages use the STAND-IN MODEL at ${model.url} (${STAND_IN_MODEL})`,
    );
  // Runners log in with a role made for their job (the production trust boundary).
  const config = configFrom(env, {
    HD_DATABASE_URL: database.connectionString(),
    HD_STORAGE_ROOT: join(dir, 'storage'),
    // Runners log at info, so `jobs show ID --logs` has lines; the scheduler's own log,
    // printed here, stays at warn (runUntilAllEnded).
    HD_LOG_LEVEL: env.HD_LOG_LEVEL ?? 'info',
    HD_POLL_INTERVAL_MS: '500',
    ...(model
      ? { HD_LLM_BASE_URL: model.url, HD_LLM_MODEL: STAND_IN_MODEL, HD_LLM_API_KEY: 'stand-in' }
      : {}),
  });
  const db = new PostgresDb({ connectionString: database.connectionString() });
  try {
    const client = await db.pool.connect();
    try {
      const { applied } = await migrate(client);
      console.log(
        `demo: migrations ${applied.length ? `applied: ${applied.join(', ')}` : 'current'}`,
      );
    } finally {
      client.release();
    }
    const storage = new FsStorage(config.HD_STORAGE_ROOT);
    const labels = new Map<string, string>();
    const expected = new Map<string, string>();
    for (const step of IMPORTS) {
      const job = await enqueueImportFile(db, storage, config, {
        accountId: TENANTS[step.tenant],
        file: join(PACKAGE_ROOT, 'examples', step.file),
        strict: step.strict,
      });
      labels.set(job.id, `${step.tenant} ${step.file}${step.strict ? ' (strict)' : ''}`);
      expected.set(job.id, step.expect);
    }
    const roots: string[] = [];
    for (const doc of PIPELINE_DOCUMENTS) {
      const job = await enqueuePipeline(db, db.pool, storage, config, TENANTS[doc.tenant], doc);
      roots.push(job.id);
      labels.set(job.id, `${doc.tenant} ${doc.file}`);
    }
    for (const [id, label] of labels) console.log(`queued     ${id}  ${label}`);

    const tracked = async () => pipelineJobs(db.pool, [...expected.keys(), ...roots]);
    const jobs = await runUntilAllEnded(config, db, env, tracked);
    const tenantOf = (job: Job) => (job.account_id === TENANTS.acme ? 'acme' : 'globex');
    console.log('');
    console.log(
      formatTable(
        jobs.map((job) => ({
          job: job.id.slice(0, 8),
          tenant: tenantOf(job),
          type: job.job_type,
          input: labels.get(job.id)?.split(' ')[1] ?? '',
          status: job.status,
          attempts: job.attempts,
          result: job.error_code
            ? `${job.error_code}: ${truncate(reasonOf(job), 70)}`
            : summarizeStats((job.debug.stats ?? {}) as Record<string, unknown>),
        })),
      ),
    );
    console.log('');
    console.log(await tenantAssets(db.pool));
    console.log('');
    console.log(await tenantGraphs(db.pool, TENANTS));
    await showArtifacts(db, config, roots[0]!, join(dir, 'acme-artifacts.zip'));
    // Pipeline stages are expected to complete; imports as planned above.
    const unexpected = jobs.filter((job) => job.status !== (expected.get(job.id) ?? 'completed'));
    const completed = jobs.filter((job) => job.status === 'completed').length;
    const failed = jobs.filter((job) => job.status === 'failed').length;
    console.log('');
    console.log(
      `demo: ${jobs.length} jobs, ${completed} completed, ${failed} failed; ${unexpected.length === 0 ? 'all as expected' : `${unexpected.length} NOT as expected`}` +
        (model ? ' (LLM stages answered by the STAND-IN MODEL)' : ''),
    );
    return unexpected.length === 0 ? 0 : 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await db.close();
    await model?.close();
    await database.stop();
  }
}

/** Runs a scheduler until none of the tracked jobs is queued or running. */
async function runUntilAllEnded(
  config: Config,
  db: PostgresDb,
  env: Record<string, string | undefined>,
  tracked: () => Promise<Job[]>,
): Promise<Job[]> {
  const log = createLogger({ level: env.HD_LOG_LEVEL ?? 'warn', name: 'scheduler' });
  // Model requests go through the scheduler's gateway, as in production.
  const gateway = await startLlmGateway(config, db, log);
  const scheduler = createScheduler(config, db, log, env, undefined, undefined, gateway);
  // A completion queues the next stage in the same transaction, so "nothing open" is final.
  const settled = async () => {
    const jobs = await tracked();
    return jobs.some((j) => j.status === 'queued' || j.status === 'running') ? undefined : jobs;
  };
  const done = new Promise<Job[]>((resolveDone, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`demo: jobs did not end within ${DRAIN_TIMEOUT_MS / 1000}s`)),
      DRAIN_TIMEOUT_MS,
    );
    scheduler.on('job:claimed', (job) =>
      console.log(`running    ${job.id}  ${job.job_type} attempt ${job.attempts}`),
    );
    scheduler.on('job:finished', (job) => {
      console.log(
        `${job.status.padEnd(10)} ${job.id}  ${job.job_type}${job.error_code ? `  ${job.error_code}` : ''}`,
      );
      settled().then((jobs) => {
        if (!jobs) return;
        clearTimeout(timer);
        resolveDone(jobs);
      }, reject);
    });
  });
  await scheduler.start();
  try {
    return await done;
  } finally {
    await scheduler.stop(0);
    await gateway?.close();
  }
}

/** One job's stored results and an archive of them, as `hd-runner jobs artifacts` shows them. */
async function showArtifacts(db: PostgresDb, config: Config, jobId: string, archive: string) {
  console.log('');
  console.log(
    `demo: artifacts of acme's extract_text (hd-runner jobs artifacts ${jobId.slice(0, 8)} --archive ${archive}):`,
  );
  const { jobArtifacts } = await import('./jobs-artifacts.ts');
  await jobArtifacts(db, config, jobId, { values: { archive }, positionals: [] });
}

async function tenantAssets(pool: pg.Pool): Promise<string> {
  const { rows } = await pool.query(
    `select case account_id when $1 then 'acme' when $2 then 'globex' else account_id::text end as tenant,
            count(*)::int as assets, string_agg(title, ' | ' order by title) as titles
       from public.hd_assets where account_id in ($1, $2) group by account_id order by 1`,
    [TENANTS.acme, TENANTS.globex],
  );
  return formatTable(rows.map((r) => ({ ...r, titles: truncate(r.titles, 90) })));
}

/** A job's error without its long storage path in front, so the reason fits the column. */
function reasonOf(job: Job): string {
  const path = typeof job.debug.path === 'string' ? job.debug.path : undefined;
  const error = job.error ?? '';
  return path && error.startsWith(`${path}: `) ? `…: ${error.slice(path.length + 2)}` : error;
}

function truncate(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
