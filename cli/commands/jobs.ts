import { JOB_STATUSES } from '../../contract/jobs.ts';
import { toHdError } from '../../contract/errors.ts';
import { openDb } from '../../control-plane/open.ts';
import type { JobLogLine } from '../../control-plane/db/transport.ts';
import { formatTable, jobSummary } from '../format.ts';
import {
  configFrom,
  stringOption,
  UsageError,
  uuidArg,
  type Env,
  type ParsedArgs,
} from '../command.ts';

export async function jobsCommand(args: ParsedArgs, env: Env): Promise<number> {
  const [action, id] = args.positionals;
  const json = args.values.json === true;
  if (!action || !['list', 'show', 'requeue', 'cancel'].includes(action)) {
    throw new UsageError(
      'jobs: expected one of list, show, requeue, cancel (see hd-runner jobs --help)',
    );
  }
  const config = configFrom(env);
  const db = openDb(config);
  try {
    if (action === 'list') {
      const status = stringOption(args, 'status');
      if (status && !(JOB_STATUSES as readonly string[]).includes(status)) {
        throw new UsageError(`jobs list: --status must be one of ${JOB_STATUSES.join(', ')}`);
      }
      const limit = limitOption(args.values.limit, 20, 'jobs list');
      const account = stringOption(args, 'account');
      const jobs = await db.listJobs({
        accountId: account ? uuidArg(account, '--account') : undefined,
        status,
        jobType: stringOption(args, 'type'),
        limit,
      });
      console.log(
        json
          ? JSON.stringify(jobs, null, 2)
          : jobs.length
            ? formatTable(jobs.map(jobSummary))
            : 'no jobs',
      );
      return 0;
    }
    if (!id) throw new UsageError(`jobs ${action}: a job id is required`);
    const jobId = uuidArg(id, 'job id');
    try {
      const job =
        action === 'show'
          ? await db.getJob(jobId)
          : action === 'requeue'
            ? await db.requeueJob(jobId)
            : await db.cancelJob(jobId, stringOption(args, 'reason'));
      if (!job) throw new UsageError(`job ${jobId} not found`);
      const logs =
        action === 'show' && args.values.logs === true
          ? await db.listJobLogs(jobId, limitOption(args.values.limit, 100, 'jobs show'))
          : undefined;
      if (json) console.log(JSON.stringify(logs ? { ...job, logs } : job, null, 2));
      else if (action === 'show')
        console.log(formatJobDetail(job as unknown as Record<string, unknown>, logs));
      else console.log(`${job.id} ${job.status}${job.error_code ? ` (${job.error_code})` : ''}`);
      return 0;
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code === 'HDN01' || code === 'HDS01') throw new UsageError(toHdError(error).message);
      throw error;
    }
  } finally {
    await db.close();
  }
}

function limitOption(value: unknown, fallback: number, command: string): number {
  const limit = Number(typeof value === 'string' ? value : fallback);
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000)
    throw new UsageError(`${command}: --limit must be 1..1000`);
  return limit;
}

function formatJobDetail(job: Record<string, unknown>, logs?: JobLogLine[]): string {
  const hidden = new Set(['lease_token', 'ended_lease_token', 'ended_lease_attempt']);
  const detail = Object.entries(job)
    .filter(([key]) => !hidden.has(key))
    .map(
      ([key, value]) =>
        `${key.padEnd(18)} ${value instanceof Date ? value.toISOString() : typeof value === 'object' && value !== null ? JSON.stringify(value, null, 2).replace(/\n/g, '\n' + ' '.repeat(19)) : String(value ?? '')}`,
    )
    .join('\n');
  if (!logs) return detail;
  if (logs.length === 0) return `${detail}\n\nno log lines`;
  const rows = logs.map((l) => ({
    attempt: l.attempt,
    time: l.logged_at.toISOString(),
    level: l.level,
    message: l.message.replaceAll('\n', '\\n'),
  }));
  return `${detail}\n\nlog (last ${logs.length} lines)\n${formatTable(rows)}`;
}
