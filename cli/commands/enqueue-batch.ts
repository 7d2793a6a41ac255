import { stat } from 'node:fs/promises';
import { batchesOf } from '../../control-plane/db/batches.ts';
import { openDb, openStorage } from '../../control-plane/open.ts';
import { configFrom, stringOption, UsageError, type Env, type ParsedArgs } from '../command.ts';
import { uploadImportFile, webhookUrlOption, type EnqueueFileRequest } from './enqueue.ts';

/**
 * `enqueue --batch NAME FILE…`: every file uploaded and validated as a single enqueue is,
 * then one hd_enqueue_batch call queues all their jobs or none.
 */
export async function enqueueBatchCommand(
  args: ParsedArgs,
  env: Env,
  request: Omit<EnqueueFileRequest, 'file'>,
): Promise<number> {
  const name = stringOption(args, 'batch')!;
  if (name.length < 1 || name.length > 200)
    throw new UsageError('enqueue: --batch NAME must be 1 to 200 characters');
  const key = stringOption(args, 'idempotency-key');
  if (key !== undefined && (key.length < 1 || key.length > 200))
    throw new UsageError('enqueue: --idempotency-key must be 1 to 200 characters');
  const single = stringOption(args, 'file');
  const files = [...(single ? [single] : []), ...args.positionals];
  if (files.length === 0) throw new UsageError('enqueue --batch: name at least one file');
  // Every file is checked before any is uploaded: a typo costs no orphaned upload.
  for (const file of files) {
    const info = await stat(file).catch(() => undefined);
    if (!info?.isFile()) throw new UsageError(`enqueue: ${file} is not a readable file`);
  }
  const config = configFrom(env);
  // The batch's own URL: its end event goes there (its jobs' do not).
  const webhookUrl = await webhookUrlOption(args, config);
  const db = openDb(config);
  try {
    const storage = openStorage(config);
    const jobs = [];
    for (const file of files)
      jobs.push(
        await uploadImportFile(storage, config, { ...request, webhookUrl: undefined, file }),
      );
    const batches = batchesOf(db);
    const batch = await batches.enqueueBatch({
      accountId: request.accountId,
      name,
      idempotencyKey: key,
      webhookUrl,
      jobs,
    });
    if (args.values.json === true) {
      const queued = await batches.listBatchJobs(batch.id, batch.total);
      console.log(JSON.stringify({ ...batch, jobs: queued.map((j) => j.id) }));
    } else console.log(batch.id);
    return 0;
  } finally {
    await db.close();
  }
}
