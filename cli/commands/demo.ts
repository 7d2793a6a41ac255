import { join, resolve } from 'node:path';
import pg from 'pg';
import type { Job } from '../../contract/jobs.ts';
import { configFrom, type Command } from '../command.ts';
import { migrate } from '../../control-plane/db/migrate.ts';
import { PostgresDb } from '../../control-plane/db/postgres.ts';
import { startEmbeddedPostgres } from '../../control-plane/embedded-postgres.ts';
import { createLogger } from '../../control-plane/logger.ts';
import { PACKAGE_ROOT } from '../../control-plane/package-root.ts';
import { FsStorage } from '../../control-plane/storage/fs.ts';
import { formatTable, summarizeStats } from '../format.ts';
import { enqueueImportFile } from './enqueue.ts';
import { createScheduler } from './scheduler.ts';

const TENANTS = {
  acme: '11111111-1111-4111-8111-111111111111',
  globex: '22222222-2222-4222-8222-222222222222',
} as const;

/** What the demo enqueues, and how each job is expected to end. */
const PLAN = [
  { tenant: 'acme', file: 'acme-assets.jsonl', strict: false, expect: 'completed' },
  { tenant: 'globex', file: 'globex-assets.jsonl', strict: false, expect: 'completed' },
  { tenant: 'globex', file: 'globex-assets.jsonl', strict: true, expect: 'failed' },
] as const;

const DRAIN_TIMEOUT_MS = 120_000;

export const demoCommand: Command = {
  name: 'demo',
  summary: 'run the import pipeline end to end on an embedded PostgreSQL',
  usage: `hd-runner demo [--dir PATH]

Starts a real PostgreSQL (embedded-postgres; data in PATH/postgres, default .hd-data),
applies the migrations, uploads the JSONL files of examples/ for two tenants to fs
storage (PATH/storage), runs the scheduler with the process launcher until the jobs
end, and prints each job and each tenant's assets. One globex file has bad lines: run
leniently it completes and reports them; run with strict: true it fails (expected).
Exit 0 when every job ended as expected. Run it again: the imports find their rows
unchanged.`,
  options: { dir: { type: 'string' } },
  async run(args, env) {
    const dir = resolve(
      typeof args.values.dir === 'string' ? args.values.dir : (env.HD_DEMO_DIR ?? '.hd-data'),
    );
    console.log(`demo: starting PostgreSQL in ${join(dir, 'postgres')} …`);
    const database = await startEmbeddedPostgres({ dir: join(dir, 'postgres') });
    const config = configFrom(env, {
      HD_DATABASE_URL: database.connectionString(),
      HD_STORAGE_ROOT: join(dir, 'storage'),
      HD_LOG_LEVEL: env.HD_LOG_LEVEL ?? 'warn',
      HD_POLL_INTERVAL_MS: '500',
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
      const jobs = new Map<string, (typeof PLAN)[number]>();
      for (const step of PLAN) {
        const job = await enqueueImportFile(db, storage, config, {
          accountId: TENANTS[step.tenant],
          file: join(PACKAGE_ROOT, 'examples', step.file),
          strict: step.strict,
        });
        jobs.set(job.id, step);
        console.log(
          `queued     ${job.id}  ${step.tenant.padEnd(6)} ${step.file}${step.strict ? ' (strict)' : ''}`,
        );
      }
      const finals = await runUntilEnded(config, db, env, new Set(jobs.keys()));
      console.log('');
      console.log(
        formatTable(
          finals.map((job) => ({
            job: job.id.slice(0, 8),
            tenant: jobs.get(job.id)!.tenant,
            file: jobs.get(job.id)!.file + (jobs.get(job.id)!.strict ? ' (strict)' : ''),
            status: job.status,
            attempts: job.attempts,
            result: job.error_code
              ? `${job.error_code}: ${job.error}`
              : summarizeStats((job.debug.stats ?? {}) as Record<string, unknown>),
          })),
        ),
      );
      console.log('');
      console.log(await tenantAssets(db.pool));
      const unexpected = finals.filter((job) => job.status !== jobs.get(job.id)!.expect);
      const completed = finals.filter((job) => job.status === 'completed').length;
      const failed = finals.filter((job) => job.status === 'failed').length;
      console.log('');
      console.log(
        `demo: ${finals.length} jobs, ${completed} completed, ${failed} failed; ${unexpected.length === 0 ? 'all as expected' : `${unexpected.length} NOT as expected`}`,
      );
      return unexpected.length === 0 ? 0 : 1;
    } finally {
      await db.close();
      await database.stop();
    }
  },
};

async function runUntilEnded(
  config: ReturnType<typeof configFrom>,
  db: PostgresDb,
  env: Record<string, string | undefined>,
  ids: Set<string>,
): Promise<Job[]> {
  const log = createLogger({ level: config.HD_LOG_LEVEL, name: 'scheduler' });
  const scheduler = createScheduler(config, db, log, env);
  const ended = new Map<string, Job>();
  const done = new Promise<void>((resolveDone, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`demo: jobs did not end within ${DRAIN_TIMEOUT_MS / 1000}s`)),
      DRAIN_TIMEOUT_MS,
    );
    scheduler.on('job:claimed', (job) =>
      console.log(`running    ${job.id}  attempt ${job.attempts}`),
    );
    scheduler.on('job:finished', (job) => {
      console.log(
        `${job.status.padEnd(10)} ${job.id}${job.error_code ? `  ${job.error_code}` : ''}`,
      );
      if (ids.has(job.id) && (job.status === 'completed' || job.status === 'failed'))
        ended.set(job.id, job);
      if (ended.size === ids.size) {
        clearTimeout(timer);
        resolveDone();
      }
    });
  });
  await scheduler.start();
  try {
    await done;
  } finally {
    await scheduler.stop(0);
  }
  return [...ids].map((id) => ended.get(id)!);
}

async function tenantAssets(pool: pg.Pool): Promise<string> {
  const { rows } = await pool.query(
    `select case account_id when $1 then 'acme' when $2 then 'globex' else account_id::text end as tenant,
            count(*)::int as assets, string_agg(title, ' | ' order by title) as titles
       from public.hd_assets where account_id in ($1, $2) group by account_id order by 1`,
    [TENANTS.acme, TENANTS.globex],
  );
  return formatTable(
    rows.map((r) => ({
      ...r,
      titles: r.titles.length > 90 ? `${r.titles.slice(0, 89)}…` : r.titles,
    })),
  );
}
