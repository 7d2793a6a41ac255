import { toHdError } from '../../contract/errors.ts';
import { webhookOutboxOf, type WebhookOutbox } from '../../control-plane/db/webhooks.ts';
import { openDb } from '../../control-plane/open.ts';
import { formatTable } from '../format.ts';
import { limitOption, printList } from '../list-output.ts';
import {
  CommandError,
  configFrom,
  requiredOption,
  stringOption,
  UsageError,
  uuidArg,
  type Env,
  type ParsedArgs,
} from '../command.ts';

const ACTIONS = ['add', 'list', 'deliveries', 'replay', 'secret'] as const;
const EVENTS = [
  'job.completed',
  'job.failed',
  'batch.completed',
  'batch.failed',
  'batch.cancelled',
];
const STATUSES = ['pending', 'delivered', 'failed'];

export async function webhooksCommand(args: ParsedArgs, env: Env): Promise<number> {
  const [action, id] = args.positionals;
  if (!action || !(ACTIONS as readonly string[]).includes(action))
    throw new UsageError(
      'webhooks: expected one of add, list, deliveries, replay, secret (see hd-runner webhooks --help)',
    );
  const db = openDb(configFrom(env));
  try {
    const outbox = webhookOutboxOf(db);
    if (action === 'add') return await add(outbox, args);
    if (action === 'list') return await list(outbox, args);
    if (action === 'deliveries') return await deliveries(outbox, args);
    if (action === 'secret') return await secret(outbox, args);
    return await replay(outbox, id, args);
  } finally {
    await db.close();
  }
}

function accountOption(args: ParsedArgs): string | undefined {
  const account = stringOption(args, 'account');
  return account ? uuidArg(account, '--account') : undefined;
}

async function add(outbox: WebhookOutbox, args: ParsedArgs): Promise<number> {
  const accountId = uuidArg(requiredOption(args, 'account', 'webhooks add'), '--account');
  const url = requiredOption(args, 'url', 'webhooks add');
  if (!URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol))
    throw new UsageError(`webhooks add: --url must be an http(s) URL (got ${JSON.stringify(url)})`);
  const events = stringOption(args, 'events')
    ?.split(',')
    .map((e) => e.trim());
  const unknown = events?.filter((e) => !EVENTS.includes(e));
  if (unknown?.length)
    throw new UsageError(
      `webhooks add: unknown event ${unknown.join(', ')} (events: ${EVENTS.join(', ')})`,
    );
  const endpoint = await outbox.addEndpoint(accountId, url, events);
  if (args.values.json === true) console.log(JSON.stringify(endpoint, null, 2));
  // The secret is shown this once: the receiver needs it to verify signatures.
  else console.log(`${endpoint.id}\nsecret: ${endpoint.secret}`);
  return 0;
}

async function secret(outbox: WebhookOutbox, args: ParsedArgs): Promise<number> {
  const accountId = uuidArg(requiredOption(args, 'account', 'webhooks secret'), '--account');
  const value = await outbox.signingSecret(accountId);
  console.log(
    args.values.json === true ? JSON.stringify({ account_id: accountId, secret: value }) : value,
  );
  return 0;
}

async function list(outbox: WebhookOutbox, args: ParsedArgs): Promise<number> {
  const endpoints = await outbox.listEndpoints(accountOption(args));
  printList('webhooks list', endpoints, {
    json: args.values.json === true,
    table: (rows) => formatTable(rows.map((e) => ({ ...e, events: e.events.join(',') }))),
    empty: 'no webhook endpoints',
  });
  return 0;
}

async function deliveries(outbox: WebhookOutbox, args: ParsedArgs): Promise<number> {
  const status = stringOption(args, 'status');
  if (status && !STATUSES.includes(status))
    throw new UsageError(`webhooks deliveries: --status must be one of ${STATUSES.join(', ')}`);
  const limit = limitOption(args.values.limit, 20, 'webhooks deliveries');
  const found = await outbox.listDeliveries({ accountId: accountOption(args), status, limit });
  printList('webhooks deliveries', found, {
    json: args.values.json === true,
    table: (rows) =>
      formatTable(
        rows.map((d) => ({
          id: d.id,
          event: d.event_type,
          status: d.status,
          attempts: d.attempts,
          code: d.last_status_code,
          latency_ms: d.last_latency_ms,
          error: d.last_error,
          next: d.status === 'pending' ? d.next_attempt_at : null,
          created: d.created_at,
          // A job's or batch's own URL: its host only (a path or query may carry a token).
          to: d.endpoint_id ?? (d.url && URL.canParse(d.url) ? new URL(d.url).host : d.url),
        })),
      ),
    empty: 'no webhook deliveries',
  });
  return 0;
}

async function replay(outbox: WebhookOutbox, id: string | undefined, args: ParsedArgs) {
  if (!id || !/^\d{1,18}$/.test(id))
    throw new UsageError(
      `webhooks replay: a delivery id (a number, see webhooks deliveries) is required`,
    );
  try {
    await outbox.replay(Number(id));
  } catch (error) {
    if ((error as { code?: string }).code === 'HDN01')
      throw new CommandError('NOT_FOUND', toHdError(error).message);
    throw error;
  }
  console.log(
    args.values.json === true
      ? JSON.stringify({ id: Number(id), status: 'pending' })
      : `${id} pending: the scheduler sends it again, with the same webhook-id`,
  );
  return 0;
}
