// The anchors bench/queue.ts measures our queue against, each a "contender": it fills its
// own queue with n no-op jobs, then drains it with a number of workers. Raw loops run on
// pg clients the bench hands them; graphile-worker runs its own pool.
import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { Logger, run, runMigrations, type WorkerEvents } from 'graphile-worker';
import type pg from 'pg';

export interface Contender {
  name: string;
  /** A fresh queue of n jobs, vacuumed and analysed, with a checkpoint behind it. */
  fill(admin: pg.Client, n: number): Promise<void>;
  /** Drains the queue, one worker per client; resolves to the jobs it counted done. */
  drain(clients: pg.Client[], admin: pg.Client): Promise<number>;
  /** Jobs the queue holds as done now (checked against n after each run). */
  done(admin: pg.Client): Promise<number>;
}

export type Loop = (client: pg.Client, worker: string) => Promise<number>;

/** Drains with one loop per client, all at once. */
export async function drainWith(loop: Loop, clients: pg.Client[]): Promise<number> {
  const counts = await Promise.all(clients.map((c, i) => loop(c, `bench-worker-${i}`)));
  return counts.reduce((a, x) => a + x, 0);
}

async function settle(admin: pg.Client, table: string): Promise<void> {
  await admin.query(`vacuum analyze ${table}`);
  await admin.query('checkpoint');
}

/**
 * The textbook SKIP LOCKED queue as a loop: claim `batch` ids (status to 'running'), then
 * set them 'completed'. No lease, no attempts, no fencing, no fairness.
 */
export function rawLoop(
  q: { table: string; runAt: string; order: string },
  batch: number,
  prepared = false,
): Loop {
  const { table, runAt, order } = q;
  // prepared: named statements, planned once per connection (as a PL/pgSQL function's are).
  const name = (step: string) => (prepared ? `raw-${step}-${table}-${batch}` : undefined);
  const claim = `with c as (select id from ${table}
     where status = 'queued' and ${runAt} <= now()
     order by ${order} limit ${batch} for update skip locked)
   update ${table} j set status = 'running' from c where j.id = c.id returning j.id`;
  const complete =
    batch === 1
      ? `update ${table} set status = 'completed' where id = $1`
      : `update ${table} set status = 'completed' where id = any($1)`;
  return async (c) => {
    for (let done = 0; ;) {
      const { rows } = await c.query<{ id: string }>({ name: name('claim'), text: claim });
      if (rows.length === 0) return done;
      const ids = rows.map((r) => r.id);
      const result = await c.query({
        name: name('complete'),
        text: complete,
        values: batch === 1 ? [ids[0]] : [ids],
      });
      done += result.rowCount ?? 0;
    }
  };
}

/** A minimal queue table: what a job queue needs and nothing else (no triggers). */
export const MINIMAL_TABLE = `create table bench_min_jobs (
  id bigint generated always as identity primary key,
  status text not null default 'queued',
  payload jsonb not null default '{}',
  run_at timestamptz not null default now());
create index bench_min_jobs_queued_idx on bench_min_jobs (run_at, id) where status = 'queued'`;

export function minimalTable(batch: number, prepared = false): Contender {
  return {
    name: 'raw loop, minimal table',
    async fill(admin, n) {
      await admin.query('truncate bench_min_jobs');
      await admin.query(
        'insert into bench_min_jobs (payload) select $1 from generate_series(1, $2)',
        [{}, n],
      );
      await settle(admin, 'bench_min_jobs');
    },
    drain: (clients) =>
      drainWith(
        rawLoop({ table: 'bench_min_jobs', runAt: 'run_at', order: 'run_at, id' }, batch, prepared),
        clients,
      ),
    async done(admin) {
      const { rows } = await admin.query<{ n: number }>(
        `select count(*)::int as n from bench_min_jobs where status = 'completed'`,
      );
      return rows[0]!.n;
    },
  };
}

/** Jobs of hd_ingestion_jobs for one account, through `loop` (ours or the raw one). */
export function ourTable(name: string, account: string, loop: Loop): Contender {
  return {
    name,
    async fill(admin, n) {
      await admin.query('truncate public.hd_ingestion_jobs cascade'); // pending artifacts (00025) refer to jobs
      await admin.query(
        `insert into public.hd_ingestion_jobs (account_id, job_type)
         select $1, 'noop' from generate_series(1, $2)`,
        [account, n],
      );
      await settle(admin, 'public.hd_ingestion_jobs');
    },
    drain: (clients) => drainWith(loop, clients),
    async done(admin) {
      const { rows } = await admin.query<{ n: number }>(
        `select count(*)::int as n from public.hd_ingestion_jobs where status = 'completed'`,
      );
      return rows[0]!.n;
    },
  };
}

export const GRAPHILE_SCHEMA = 'bench_graphile_worker';

/**
 * graphile-worker in its own schema of the bench database, no-op task. `localQueue`: its
 * batched mode (each pool locks `localQueue` jobs at once and completes them in batches,
 * completeJobBatchDelay 0); otherwise one job per fetch and per completion. One pool of
 * `concurrency` workers per pg client handed in (the client only sets the count).
 */
export function graphileWorker(
  url: string,
  options: { localQueue?: number; concurrency?: (clients: number) => number },
): Contender {
  const logger = new Logger(() => () => {});
  const base = { connectionString: url, schema: GRAPHILE_SCHEMA, logger };
  let queued = 0;
  const left = async (admin: pg.Client) => {
    const { rows } = await admin.query<{ n: number }>(
      `select count(*)::int as n from ${GRAPHILE_SCHEMA}._private_jobs`,
    );
    return rows[0]!.n;
  };
  return {
    name: options.localQueue
      ? `graphile-worker, local queue ${options.localQueue}`
      : 'graphile-worker',
    async fill(admin, n) {
      await runMigrations(base);
      await admin.query(
        `truncate ${GRAPHILE_SCHEMA}._private_jobs, ${GRAPHILE_SCHEMA}._private_job_queues`,
      );
      await admin.query(
        `select count(*) from ${GRAPHILE_SCHEMA}.add_jobs(array(
           select json_populate_record(null::${GRAPHILE_SCHEMA}.job_spec,
                                       '{"identifier": "noop", "payload": {}}')
             from generate_series(1, $1)))`,
        [n],
      );
      await settle(admin, `${GRAPHILE_SCHEMA}._private_jobs`);
      queued = n;
    },
    async drain(clients, admin) {
      const pools = options.localQueue ? clients.length : 1;
      const concurrency = options.concurrency?.(clients.length) ?? clients.length;
      let completed = 0;
      let resolveAll: () => void = () => {};
      const all = new Promise<void>((resolve) => {
        resolveAll = resolve;
      });
      // Counted from the first job on: the listener is there before the pools start.
      const events: WorkerEvents = new EventEmitter();
      events.on('job:complete', () => {
        if (++completed === queued) resolveAll();
      });
      const runners = await Promise.all(
        Array.from({ length: pools }, () =>
          run({
            ...base,
            events,
            concurrency,
            maxPoolSize: concurrency + 2,
            noHandleSignals: true,
            pollInterval: 1000,
            taskList: { noop: async () => {} },
            ...(options.localQueue
              ? {
                  preset: {
                    worker: { localQueue: { size: options.localQueue }, completeJobBatchDelay: 0 },
                  },
                }
              : {}),
          }),
        ),
      );
      if (queued > 0) await all;
      await Promise.all(runners.map((r) => r.stop())); // flushes batched completions
      // 'job:complete' is told as the completion is sent: done when the last one commits.
      while ((await left(admin)) > 0) await sleep(2);
      return completed;
    },
    // graphile-worker deletes a job it completes.
    done: async (admin) => queued - (await left(admin)),
  };
}
