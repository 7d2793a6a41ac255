import { basename } from 'node:path';
import { stat } from 'node:fs/promises';
import { PAYLOAD_SCHEMAS } from '../../contract/jobs.ts';
import { assertTenantPath, tenantPrefix } from '../../contract/storage-paths.ts';
import type { Config } from '../../control-plane/config.ts';
import type { ControlPlaneDb } from '../../control-plane/db/transport.ts';
import { openDb, openStorage } from '../../control-plane/open.ts';
import type { StorageBackend } from '../../control-plane/storage/storage.ts';
import type { Job } from '../../contract/jobs.ts';
import {
  configFrom,
  requiredOption,
  stringOption,
  UsageError,
  uuidArg,
  type Command,
} from '../command.ts';

export interface EnqueueFileRequest {
  accountId: string;
  file: string;
  strict?: boolean;
  documentId?: string | undefined;
  maxAttempts?: number | undefined;
  priority?: number | undefined;
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
  const info = await stat(request.file).catch(() => undefined);
  if (!info?.isFile()) throw new UsageError(`enqueue: ${request.file} is not a readable file`);
  const name = basename(request.file).replace(/[^A-Za-z0-9._-]/g, '_');
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
  });
  return db.enqueueJob({
    accountId: request.accountId,
    jobType: 'import_assets_jsonl',
    debug,
    documentId: request.documentId,
    maxAttempts: request.maxAttempts,
    priority: request.priority,
  });
}

export const enqueueCommand: Command = {
  name: 'enqueue',
  summary: 'upload a JSONL file to storage and queue an import_assets_jsonl job',
  usage: `hd-runner enqueue --account UUID --file PATH [--strict] [--document-id UUID]
                   [--max-attempts N] [--priority N] [--json]

Uploads PATH to {bucket}/accounts/{account}/assets-jsonl/{timestamp}-{name} and inserts
the job; prints its id. --strict fails the job on the first invalid line.`,
  options: {
    account: { type: 'string' },
    file: { type: 'string' },
    strict: { type: 'boolean' },
    'document-id': { type: 'string' },
    'max-attempts': { type: 'string' },
    priority: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run(args, env) {
    const accountId = uuidArg(requiredOption(args, 'account', 'enqueue'), '--account');
    const documentId = stringOption(args, 'document-id');
    const config = configFrom(env);
    const db = openDb(config);
    try {
      const job = await enqueueImportFile(db, openStorage(config), config, {
        accountId,
        file: requiredOption(args, 'file', 'enqueue'),
        strict: args.values.strict === true,
        documentId: documentId ? uuidArg(documentId, '--document-id') : undefined,
        maxAttempts: intOption(stringOption(args, 'max-attempts'), '--max-attempts'),
        priority: intOption(stringOption(args, 'priority'), '--priority'),
      });
      console.log(args.values.json ? JSON.stringify(job) : job.id);
      return 0;
    } finally {
      await db.close();
    }
  },
};

function intOption(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^-?\d+$/.test(value))
    throw new UsageError(`${name} must be an integer (got ${JSON.stringify(value)})`);
  return Number(value);
}
