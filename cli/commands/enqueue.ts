import { basename } from 'node:path';
import { stat } from 'node:fs/promises';
import { PAYLOAD_SCHEMAS } from '../../contract/jobs.ts';
import { webhookUrlSchema } from '../../contract/webhook-url.ts';
import { UrlRefused } from '../../scheduler/public-http.ts';
import { webhookGuard } from '../../scheduler/webhook-post.ts';
import { assertTenantPath, tenantPrefix, toStorageName } from '../../contract/storage-paths.ts';
import type { Config } from '../../control-plane/config.ts';
import type { ControlPlaneDb, EnqueueRequest } from '../../control-plane/db/transport.ts';
import { openDb, openStorage } from '../../control-plane/open.ts';
import type { StorageBackend } from '../../control-plane/storage/storage.ts';
import type { Job } from '../../contract/jobs.ts';
import {
  configFrom,
  requiredOption,
  stringOption,
  UsageError,
  uuidArg,
  type Env,
  type ParsedArgs,
} from '../command.ts';

export interface EnqueueFileRequest {
  accountId: string;
  file: string;
  strict?: boolean;
  documentId?: string | undefined;
  maxAttempts?: number | undefined;
  priority?: number | undefined;
  /** The job's own webhook URL (debug.webhook_url), checked by webhookUrlOption. */
  webhookUrl?: string | undefined;
}

/**
 * Uploads a local JSONL file under the account's prefix
 * (accounts/{id}/assets-jsonl/{ts}-{name}) and queues an import_assets_jsonl job for it.
 */
export async function enqueueImportFile(
  db: ControlPlaneDb,
  storage: StorageBackend,
  config: Config,
  request: EnqueueFileRequest,
): Promise<Job> {
  return db.enqueueJob({
    accountId: request.accountId,
    ...(await uploadImportFile(storage, config, request)),
  });
}

/** Uploads the file and returns the import_assets_jsonl job that would read it. */
export async function uploadImportFile(
  storage: StorageBackend,
  config: Config,
  request: EnqueueFileRequest,
): Promise<Omit<EnqueueRequest, 'accountId'>> {
  const info = await stat(request.file).catch(() => undefined);
  if (!info?.isFile()) throw new UsageError(`enqueue: ${request.file} is not a readable file`);
  // Storage accepts only a small character set in keys; the name as given stays in debug.
  const originalName = basename(request.file);
  const name = toStorageName(originalName);
  const key = assertTenantPath(
    request.accountId,
    `${tenantPrefix(request.accountId)}assets-jsonl/${Date.now()}-${name}`,
  );
  await storage.upload(config.HD_BUCKET, key, request.file, 'application/x-ndjson');
  const debug = PAYLOAD_SCHEMAS.import_assets_jsonl.parse({
    bucket: config.HD_BUCKET,
    path: key,
    format: 'jsonl',
    strict: request.strict ?? false,
    original_name: originalName,
    ...(request.webhookUrl === undefined ? {} : { webhook_url: request.webhookUrl }),
  });
  return {
    jobType: 'import_assets_jsonl',
    debug,
    documentId: request.documentId,
    maxAttempts: request.maxAttempts,
    priority: request.priority,
  };
}

/**
 * The import_assets_jsonl job of an input by URL: nothing is fetched here; the scheduler
 * fetches and stores it before the runner starts (scheduler/url-input.ts).
 */
export function importByUrl(
  config: Config,
  request: Omit<EnqueueFileRequest, 'file' | 'accountId'> & { url: string },
): Omit<EnqueueRequest, 'accountId'> {
  const debug = PAYLOAD_SCHEMAS.import_assets_jsonl.safeParse({
    bucket: config.HD_BUCKET,
    url: request.url,
    format: 'jsonl',
    strict: request.strict ?? false,
    ...(request.webhookUrl === undefined ? {} : { webhook_url: request.webhookUrl }),
  });
  if (!debug.success)
    throw new UsageError(`enqueue: --url: ${debug.error.issues[0]?.message ?? 'not a URL'}`);
  return {
    jobType: 'import_assets_jsonl',
    debug: debug.data,
    documentId: request.documentId,
    maxAttempts: request.maxAttempts,
    priority: request.priority,
  };
}

export async function enqueueCommand(args: ParsedArgs, env: Env): Promise<number> {
  const accountId = uuidArg(requiredOption(args, 'account', 'enqueue'), '--account');
  const documentId = stringOption(args, 'document-id');
  const request = {
    accountId,
    strict: args.values.strict === true,
    documentId: documentId ? uuidArg(documentId, '--document-id') : undefined,
    maxAttempts: intOption(stringOption(args, 'max-attempts'), '--max-attempts'),
    priority: intOption(stringOption(args, 'priority'), '--priority'),
  };
  if (stringOption(args, 'batch') !== undefined)
    return (await import('./enqueue-batch.ts')).enqueueBatchCommand(args, env, request);
  if (args.positionals.length > 0)
    throw new UsageError('enqueue: several files need --batch NAME (one file: --file PATH)');
  const url = stringOption(args, 'url');
  if (url !== undefined && stringOption(args, 'file') !== undefined)
    throw new UsageError('enqueue: --file or --url, not both');
  const config = configFrom(env);
  const webhookUrl = await webhookUrlOption(args, config);
  const db = openDb(config);
  try {
    const job =
      url === undefined
        ? await enqueueImportFile(db, openStorage(config), config, {
            ...request,
            webhookUrl,
            file: requiredOption(args, 'file', 'enqueue'),
          })
        : await db.enqueueJob({
            accountId,
            ...importByUrl(config, { ...request, webhookUrl, url }),
          });
    console.log(args.values.json ? JSON.stringify(job) : job.id);
    return 0;
  } finally {
    await db.close();
  }
}

export function intOption(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^-?\d+$/.test(value))
    throw new UsageError(`${name} must be an integer (got ${JSON.stringify(value)})`);
  return Number(value);
}

/**
 * --webhook-url: the rule of migration 00022 (zod), then the delivery's own address guard
 * (HD_WEBHOOK_ALLOW_CIDRS), so a URL the scheduler would refuse is refused now, by name.
 */
export async function webhookUrlOption(
  args: ParsedArgs,
  config: Pick<Config, 'HD_WEBHOOK_ALLOW_CIDRS'>,
): Promise<string | undefined> {
  const url = stringOption(args, 'webhook-url');
  if (url === undefined) return undefined;
  const parsed = webhookUrlSchema.safeParse(url);
  if (!parsed.success)
    throw new UsageError(`enqueue: --webhook-url must be ${parsed.error.issues[0]!.message}`);
  const guard = webhookGuard(config.HD_WEBHOOK_ALLOW_CIDRS);
  await guard.resolve(new URL(url).hostname).catch((error: unknown) => {
    if (error instanceof UrlRefused)
      throw new UsageError(`enqueue: --webhook-url: ${error.message}`);
    throw error;
  });
  return url;
}
