import { setTimeout as sleep } from 'node:timers/promises';
import cliProgress from 'cli-progress';
import type { Job } from '../../contract/jobs.ts';
import { batchesOf, type Batch } from '../../control-plane/db/batches.ts';
import type { ControlPlaneDb } from '../../control-plane/db/transport.ts';
import { resolveIdPrefix, resolveJobId } from '../job-id.ts';
import { oneLine } from '../terminal-safe.ts';
import { stringOption, UsageError, uuidArg, type ParsedArgs } from '../command.ts';

/** What `jobs watch` follows: a snapshot of the watched jobs (and their batch) per look. */
interface Watched {
  look(): Promise<{ jobs: Job[]; batch?: Batch | undefined }>;
}

const ENDED = new Set(['completed', 'failed']);

/**
 * `hd-runner jobs watch [ID…|--batch ID|--account UUID]`: follows the jobs until every one
 * has ended. Bars on a terminal (cli-progress), one line per change otherwise, JSON events
 * with --json. Exit 0 when all completed, 10 when any failed or was cancelled.
 */
export async function watchJobs(
  db: ControlPlaneDb,
  args: ParsedArgs,
  ids: string[],
): Promise<number> {
  const interval = Number(stringOption(args, 'interval') ?? 1000);
  if (!Number.isInteger(interval) || interval < 100)
    throw new UsageError('jobs watch: --interval must be at least 100 (ms)');
  const watched = await selection(db, args, ids);
  const view =
    args.values.json === true ? jsonView() : process.stdout.isTTY ? barView() : lineView();
  for (;;) {
    const { jobs, batch } = await watched.look();
    view.show(jobs, batch);
    if (jobs.every((j) => ENDED.has(j.status))) {
      const code = jobs.every((j) => j.status === 'completed') ? 0 : 10;
      view.end(jobs, code);
      return code;
    }
    await sleep(interval);
  }
}

async function selection(db: ControlPlaneDb, args: ParsedArgs, ids: string[]): Promise<Watched> {
  const batchArg = stringOption(args, 'batch');
  const account = stringOption(args, 'account');
  if ([ids.length > 0, batchArg !== undefined, account !== undefined].filter(Boolean).length !== 1)
    throw new UsageError(
      'jobs watch: give job ids, or --batch ID, or --account UUID (one of them)',
    );
  if (batchArg !== undefined) {
    const batches = batchesOf(db);
    const batchId = await resolveIdPrefix(batchArg, '--batch', 'batch', (range) =>
      batches.listBatches({ idRange: range, limit: 3 }),
    );
    return {
      look: async () => {
        const batch = await batches.getBatch(batchId);
        return { batch, jobs: await batches.listBatchJobs(batchId, batch?.total ?? 0) };
      },
    };
  }
  let jobIds: string[];
  if (account !== undefined) {
    // The account's unfinished jobs when the watch starts.
    const accountId = uuidArg(account, '--account');
    const open = await Promise.all(
      ['running', 'queued'].map((status) => db.listJobs({ accountId, status, limit: 1000 })),
    );
    jobIds = open.flat().map((j) => j.id);
  } else jobIds = await Promise.all(ids.map((id) => resolveJobId(db, id)));
  return {
    look: async () => ({
      jobs: (await Promise.all(jobIds.map((id) => db.getJob(id)))).filter(
        (j): j is Job => j !== undefined,
      ),
    }),
  };
}

interface View {
  show(jobs: Job[], batch?: Batch): void;
  end(jobs: Job[], code: number): void;
}

/** What a line or an event says of a job; tenants' text goes through oneLine. */
function jobState(j: Job) {
  return {
    job_id: j.id,
    job_type: oneLine(j.job_type),
    status: j.status,
    progress_percent: j.progress_percent,
    progress_step: j.progress_step === null ? null : oneLine(j.progress_step),
    error_code: j.error_code,
  };
}

const batchLine = (b: Batch) =>
  `batch ${b.id.slice(0, 8)} ${oneLine(b.name)} ${b.status} ${b.percent}%: ${b.completed}/${b.total} completed, ${b.failed} failed, ${b.cancelled} cancelled, ${b.running} running, ${b.queued} queued`;

/** Prints only what changed since the last look. */
function changes(print: (key: string, text: string) => void) {
  const last = new Map<string, string>();
  return (key: string, text: string) => {
    if (last.get(key) === text) return;
    last.set(key, text);
    print(key, text);
  };
}

function lineView(): View {
  const emit = changes((_key, text) => console.log(text));
  return {
    show(jobs, batch) {
      if (batch) emit(batch.id, batchLine(batch));
      for (const j of jobs) {
        const s = jobState(j);
        const progress =
          j.status === 'running' ? ` ${s.progress_percent}% ${s.progress_step ?? ''}` : '';
        emit(
          j.id,
          `${j.id.slice(0, 8)} ${s.job_type} ${s.status}${s.error_code ? ` (${s.error_code})` : ''}${progress}`.trimEnd(),
        );
      }
    },
    end: () => {},
  };
}

function jsonView(): View {
  const emit = changes((_key, text) => console.log(text));
  return {
    show(jobs, batch) {
      if (batch) {
        const { id, name, status, percent, total, queued, running, completed, failed, cancelled } =
          batch;
        emit(
          id,
          JSON.stringify({
            event: 'batch',
            batch_id: id,
            name,
            status,
            percent,
            total,
            queued,
            running,
            completed,
            failed,
            cancelled,
          }),
        );
      }
      for (const j of jobs) emit(j.id, JSON.stringify({ event: 'job', ...jobState(j) }));
    },
    end: (_jobs, code) => console.log(JSON.stringify({ event: 'end', exit_code: code })),
  };
}

/**
 * cli-progress bars. The library's cursor codes must reach the terminal, which the CLI's
 * output guard would escape (it escapes control characters in strings): the bars write
 * Buffers to stdout, and only text already passed through oneLine goes into them.
 */
function barView(): View {
  const stream = {
    isTTY: true,
    get columns() {
      return process.stdout.columns;
    },
    write: (s: string) => process.stdout.write(Buffer.from(s)),
  } as unknown as NodeJS.WriteStream;
  const multibar = new cliProgress.MultiBar(
    {
      stream,
      format: '{label} [{bar}] {percentage}% {state}',
      hideCursor: true,
      barsize: 20,
      clearOnComplete: false,
      forceRedraw: true,
    },
    cliProgress.Presets.shades_classic,
  );
  const bars = new Map<string, cliProgress.SingleBar>();
  const bar = (key: string, label: string) => {
    let b = bars.get(key);
    if (!b) {
      b = multibar.create(100, 0, { label, state: '' });
      bars.set(key, b);
    }
    return b;
  };
  return {
    show(jobs, batch) {
      if (batch) {
        bar('batch', `batch ${oneLine(batch.name)}`.slice(0, 30).padEnd(30)).update(
          Number(batch.percent),
          {
            state: `${batch.status}: ${batch.completed}/${batch.total} completed, ${batch.failed} failed, ${batch.running} running`,
          },
        );
      }
      for (const j of jobs) {
        const s = jobState(j);
        const label = `${j.id.slice(0, 8)} ${s.job_type}`.slice(0, 30).padEnd(30);
        const state =
          j.status === 'running'
            ? (s.progress_step ?? 'running')
            : `${s.status}${s.error_code ? ` (${s.error_code})` : ''}`;
        bar(j.id, label).update(j.status === 'completed' ? 100 : s.progress_percent, { state });
      }
    },
    end: () => multibar.stop(),
  };
}
