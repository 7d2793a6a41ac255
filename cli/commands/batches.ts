import { toHdError } from '../../contract/errors.ts';
import {
  BATCH_STATUSES,
  batchesOf,
  type Batch,
  type BatchStore,
} from '../../control-plane/db/batches.ts';
import { openDb } from '../../control-plane/open.ts';
import { formatTable, jobSummary } from '../format.ts';
import { resolveIdPrefix, uuidPrefixRange } from '../job-id.ts';
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

const ACTIONS = ['list', 'show', 'cancel', 'requeue'] as const;
type Action = (typeof ACTIONS)[number];
/** Jobs shown by `batches show` (a batch holds up to 10,000). */
const SHOWN_JOBS = 1000;

export async function batchesCommand(args: ParsedArgs, env: Env): Promise<number> {
  const [action, id] = args.positionals;
  if (!action || !(ACTIONS as readonly string[]).includes(action)) {
    throw new UsageError(
      'batches: expected one of list, show, cancel, requeue (see hd-runner batches --help)',
    );
  }
  if (action !== 'list' && !id) throw new UsageError(`batches ${action}: a batch id is required`);
  if (id && !uuidPrefixRange(id.toLowerCase()))
    throw new UsageError(`batches ${action}: ${JSON.stringify(id)} is not a batch id or its start`);
  const db = openDb(configFrom(env));
  try {
    const batches = batchesOf(db);
    if (action === 'list') return await listBatches(batches, args);
    const batchId = await resolveIdPrefix(id!, 'batch id', 'batch', (range) =>
      batches.listBatches({ idRange: range, limit: 3 }),
    );
    return await actOnBatch(batches, action as Exclude<Action, 'list'>, batchId, args);
  } finally {
    await db.close();
  }
}

async function listBatches(batches: BatchStore, args: ParsedArgs): Promise<number> {
  const status = stringOption(args, 'status');
  if (status && !(BATCH_STATUSES as readonly string[]).includes(status))
    throw new UsageError(`batches list: --status must be one of ${BATCH_STATUSES.join(', ')}`);
  const limit = limitOption(args.values.limit, 20, 'batches list');
  const account = stringOption(args, 'account');
  const found = await batches.listBatches({
    accountId: account ? uuidArg(account, '--account') : undefined,
    status,
    limit: limit + 1,
  });
  const shown = found.slice(0, limit);
  const cut =
    found.length > limit
      ? `the newest ${limit} batches shown; more match (--limit N, up to 1000, or filter with --status, --account)`
      : undefined;
  printList('batches list', shown, {
    json: args.values.json === true,
    table: (rows) => formatTable(rows.map(batchSummary)),
    empty: 'no batches',
    cut,
  });
  return 0;
}

async function actOnBatch(
  batches: BatchStore,
  action: 'show' | 'cancel' | 'requeue',
  batchId: string,
  args: ParsedArgs,
): Promise<number> {
  let batch = await batches.getBatch(batchId);
  if (!batch) throw new CommandError('NOT_FOUND', `batch ${batchId} not found`);
  if (action === 'cancel' && batch.queued + batch.running === 0)
    throw nothingTo(batch, 'cancel', 'no queued or running job');
  if (action === 'requeue' && batch.failed + batch.cancelled === 0)
    throw nothingTo(batch, 'requeue', 'no failed or cancelled job');
  try {
    if (action === 'cancel')
      batch = await batches.cancelBatch(batchId, stringOption(args, 'reason'));
    if (action === 'requeue') batch = await batches.requeueBatch(batchId);
  } catch (error) {
    if ((error as { code?: string }).code === 'HDN01')
      throw new CommandError('NOT_FOUND', toHdError(error).message);
    throw error;
  }
  const json = args.values.json === true;
  if (action !== 'show') {
    console.log(json ? JSON.stringify(batch, null, 2) : `${batch.id} ${batchCounts(batch)}`);
    return 0;
  }
  const jobs = await batches.listBatchJobs(batchId, SHOWN_JOBS);
  if (json) {
    console.log(JSON.stringify({ ...batch, jobs }, null, 2));
    return 0;
  }
  const detail = Object.entries(batch)
    .map(([key, value]) => `${key.padEnd(16)} ${shown(value)}`)
    .join('\n');
  const more = batch.total > jobs.length ? ` (the first ${jobs.length} of ${batch.total})` : '';
  console.log(`${detail}\n\njobs${more}\n${formatTable(jobs.map(jobSummary))}`);
  return 0;
}

function nothingTo(batch: Batch, action: string, why: string) {
  return new CommandError(
    'WRONG_STATE',
    `batch ${batch.id} has ${why} (${batchCounts(batch)}): nothing to ${action}; nothing changed`,
  );
}

function shown(value: unknown): string {
  if (value instanceof Date) return value.toISOString();
  return oneLine(String(value ?? ''));
}

function batchCounts(b: Batch): string {
  return `${b.status}: ${b.completed}/${b.total} completed, ${b.failed} failed, ${b.cancelled} cancelled, ${b.running} running, ${b.queued} queued`;
}

function batchSummary(b: Batch): Record<string, unknown> {
  return {
    id: b.id,
    account: b.account_id.slice(0, 8),
    name: b.name,
    status: b.status,
    progress: `${b.percent}%`,
    total: b.total,
    queued: b.queued,
    running: b.running,
    completed: b.completed,
    failed: b.failed,
    cancelled: b.cancelled,
    created: b.created_at,
  };
}
