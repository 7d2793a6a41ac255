import { JOB_STATUSES, type Job } from '../../contract/jobs.ts';
import { toHdError } from '../../contract/errors.ts';
import { openDb } from '../../control-plane/open.ts';
import type { ControlPlaneDb, JobLogLine } from '../../control-plane/db/transport.ts';
import { formatTable, jobSummary } from '../format.ts';
import { resolveJobId, uuidPrefixRange } from '../job-id.ts';
import { limitOption, printList } from '../list-output.ts';
import { oneLine } from '../terminal-safe.ts';
import {
  CommandError,
  configFrom,
  stringOption,
  UsageError,
  uuidArg,
  type Env,
  type ParsedArgs,
} from '../command.ts';

const ACTIONS = ['list', 'show', 'requeue', 'cancel', 'watch', 'artifacts'] as const;
type Action = (typeof ACTIONS)[number];

export async function jobsCommand(args: ParsedArgs, env: Env): Promise<number> {
  const [action, id] = args.positionals;
  if (!action || !(ACTIONS as readonly string[]).includes(action)) {
    throw new UsageError(
      'jobs: expected one of list, show, requeue, cancel, watch, artifacts (see hd-runner jobs --help)',
    );
  }
  if (action === 'watch') {
    const db = openDb(configFrom(env));
    try {
      const { watchJobs } = await import('./jobs-watch.ts');
      return await watchJobs(db, args, args.positionals.slice(1));
    } finally {
      await db.close();
    }
  }
  if (action === 'artifacts') {
    if (!id === !stringOption(args, 'batch'))
      throw new UsageError('jobs artifacts: give a job id or --batch ID (one of them)');
    const config = configFrom(env);
    const db = openDb(config);
    try {
      const { jobArtifacts } = await import('./jobs-artifacts.ts');
      return await jobArtifacts(db, config, id, args);
    } finally {
      await db.close();
    }
  }
  if (action !== 'list' && !id) throw new UsageError(`jobs ${action}: a job id is required`);
  if (id && !uuidPrefixRange(id.toLowerCase()))
    throw new UsageError(`jobs ${action}: ${JSON.stringify(id)} is not a job id or its start`);
  const db = openDb(configFrom(env));
  try {
    if (action === 'list') return await listJobs(db, args);
    const jobId = await resolveJobId(db, id!);
    return await actOnJob(
      db,
      action as Exclude<Action, 'list' | 'watch' | 'artifacts'>,
      jobId,
      args,
    );
  } finally {
    await db.close();
  }
}

async function listJobs(db: ControlPlaneDb, args: ParsedArgs): Promise<number> {
  const status = stringOption(args, 'status');
  if (status && !(JOB_STATUSES as readonly string[]).includes(status)) {
    throw new UsageError(`jobs list: --status must be one of ${JOB_STATUSES.join(', ')}`);
  }
  const limit = limitOption(args.values.limit, 20, 'jobs list');
  const account = stringOption(args, 'account');
  // One more than shown: tells whether the list was cut.
  const found = await db.listJobs({
    accountId: account ? uuidArg(account, '--account') : undefined,
    status,
    jobType: stringOption(args, 'type'),
    limit: limit + 1,
  });
  const jobs = found.slice(0, limit);
  const cut =
    found.length > limit
      ? `the newest ${limit} jobs shown; more match (--limit N, up to 1000, or filter with --status, --type, --account)`
      : undefined;
  printList('jobs list', jobs, {
    json: args.values.json === true,
    table: (rows) => formatTable(rows.map(jobSummary)),
    empty: 'no jobs',
    cut,
  });
  return 0;
}

// What each action may start from: anything else is refused with exit 1, not pretended.
const ALLOWED_FROM: Record<'requeue' | 'cancel', readonly string[]> = {
  requeue: ['failed', 'completed'],
  cancel: ['queued', 'running'],
};

async function actOnJob(
  db: ControlPlaneDb,
  action: 'show' | 'requeue' | 'cancel',
  jobId: string,
  args: ParsedArgs,
): Promise<number> {
  const json = args.values.json === true;
  const before = await db.getJob(jobId);
  if (!before) throw new CommandError('NOT_FOUND', `job ${jobId} not found`);
  let job = before;
  if (action !== 'show') {
    const allowed = ALLOWED_FROM[action];
    if (!allowed.includes(before.status)) throw wrongState(action, before, allowed);
    try {
      job =
        action === 'requeue'
          ? await db.requeueJob(jobId)
          : await db.cancelJob(jobId, stringOption(args, 'reason'));
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code === 'HDN01' || code === 'HDS01')
        throw new CommandError('WRONG_STATE', toHdError(error).message);
      throw error;
    }
    // The job may have ended between the look and the change (cancel leaves it as it is).
    if (action === 'cancel' && job.error_code !== 'CANCELLED')
      throw wrongState(action, job, allowed);
  }
  const logs =
    action === 'show' && args.values.logs === true
      ? await lastLogLines(db, jobId, limitOption(args.values.limit, 100, 'jobs show'))
      : undefined;
  if (json) console.log(JSON.stringify(logs ? { ...job, logs: logs.lines } : job, null, 2));
  else if (action === 'show') console.log(formatJobDetail(job, logs));
  else console.log(`${job.id} ${job.status}${job.error_code ? ` (${job.error_code})` : ''}`);
  if (json && logs?.cut)
    console.error(`jobs show: the last ${logs.lines.length} log lines; ${logs.cut}`);
  return 0;
}

function wrongState(action: 'requeue' | 'cancel', job: Job, allowed: readonly string[]) {
  const state = `${job.status}${job.error_code ? ` (${job.error_code})` : ''}`;
  return new CommandError(
    'WRONG_STATE',
    `job ${job.id} is ${state}: only a ${allowed.join(' or ')} job can be ${action === 'cancel' ? 'cancelled' : 'requeued'}${job.status === 'running' ? ' (cancel it before requeueing)' : ''}; nothing changed`,
  );
}

async function lastLogLines(db: ControlPlaneDb, jobId: string, limit: number) {
  const found = await db.listJobLogs(jobId, limit + 1); // the newest limit+1, oldest first
  const lines = found.slice(-limit);
  const cut = found.length > limit ? `older lines exist: --limit N, up to 1000` : undefined;
  return { lines, cut };
}

function formatJobDetail(job: Job, logs?: { lines: JobLogLine[]; cut?: string | undefined }) {
  const hidden = new Set(['lease_token', 'ended_lease_token', 'ended_lease_attempt']);
  const indent = '\n' + ' '.repeat(19);
  const shown = (value: unknown) =>
    value instanceof Date
      ? value.toISOString()
      : typeof value === 'object' && value !== null
        ? JSON.stringify(value, null, 2).replace(/\n/g, indent)
        : oneLine(String(value ?? ''));
  const detail = Object.entries(job)
    .filter(([key]) => !hidden.has(key))
    .map(([key, value]) => `${key.padEnd(18)} ${shown(value)}`)
    .join('\n');
  if (!logs) return detail;
  if (logs.lines.length === 0) return `${detail}\n\nno log lines`;
  const rows = logs.lines.map((l) => ({
    attempt: l.attempt,
    time: l.logged_at.toISOString(),
    level: l.level,
    message: l.message,
  }));
  const n = logs.lines.length;
  const title = logs.cut ? `log (last ${n} lines; ${logs.cut})` : `log (${n} lines)`;
  return `${detail}\n\n${title}\n${formatTable(rows)}`;
}
