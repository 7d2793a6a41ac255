import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { z } from 'zod';
import { HdError } from '../../contract/errors.ts';
import { payloadObject } from '../../contract/jobs.ts';
import type { AssetRow } from '../../control-plane/db/transport.ts';
import type { Handler, HandlerContext } from '../handler.ts';
import { LineSplitter, type Line } from '../line-splitter.ts';
import { flatSubset, sanitizeMetadata, storableString } from '../sanitize-metadata.ts';

// PostgreSQL cannot store NUL or unpaired surrogates; a line carrying one in a field that
// names or identifies the asset is refused (metadata is cleaned instead).
const storable = [
  (s: string) => storableString(s) === s,
  'contains a NUL character or an unpaired surrogate, which PostgreSQL cannot store',
] as const;

/** One JSONL line. Unknown keys are dropped; `account_id` in particular is ignored. */
export const assetLineSchema = z.object({
  title: z
    .string()
    .trim()
    .min(1, 'title must not be empty')
    .max(1000)
    .refine(...storable),
  source_type: z
    .string()
    .trim()
    .min(1, 'source_type must not be empty')
    .max(100)
    .refine(...storable),
  source_ref: z
    .string()
    .trim()
    .min(1)
    .max(2000)
    .refine(...storable)
    .optional(),
  metadata: z.record(z.string(), z.unknown()).optional(),
  source_line: z.unknown().optional(),
});

const MAX_INVALID_SAMPLES = 20;
const READ_CHUNK_BYTES = 256 * 1024;
const WRITE_STREAMS = 2;
// A batch also ends at this much input, so big lines cannot make a batch big in memory.
const MAX_BATCH_BYTES = 4 * 1024 * 1024;

export interface ImportStats {
  lines: number;
  blank: number;
  valid: number;
  invalid: number;
  invalid_samples: { line: number; reason: string }[];
  account_id_ignored: number;
  inserted: number;
  updated: number;
  unchanged: number;
  skipped: number;
  bytes: number;
  batches: number;
}

type ParsedLine =
  | { kind: 'blank' }
  | { kind: 'invalid'; reason: string }
  | { kind: 'row'; row: AssetRow; hadAccountId: boolean };

/** Parses and validates one line; never throws for bad content. */
export function parseAssetLine(line: Line, maxLineBytes: number): ParsedLine {
  if (line.problem === 'too_long')
    return {
      kind: 'invalid',
      reason: `line is longer than the limit of ${maxLineBytes} bytes (HD_MAX_LINE_BYTES)`,
    };
  if (line.problem === 'invalid_utf8')
    return { kind: 'invalid', reason: 'line is not valid UTF-8' };
  const text = line.text ?? '';
  if (text.trim() === '') return { kind: 'blank' };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    // V8 quotes the input in its message, NUL and half an emoji included.
    return {
      kind: 'invalid',
      reason: `invalid JSON: ${storableString((error as Error).message, 120)}`,
    };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return {
      kind: 'invalid',
      reason: `expected a JSON object, got ${Array.isArray(value) ? 'an array' : value === null ? 'null' : typeof value}`,
    };
  }
  const parsed = assetLineSchema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    return { kind: 'invalid', reason: `${issue.path.join('.') || 'line'}: ${issue.message}` };
  }
  const { title, source_type, source_ref, metadata: rawMetadata, source_line } = parsed.data;
  const metadata = sanitizeMetadata(rawMetadata ?? {});
  if (source_line !== undefined) metadata.source_line = flatSubset(source_line);
  return {
    kind: 'row',
    row: {
      title,
      source_type,
      // Without a caller reference, the content itself is the identity: a re-import
      // of the same line finds the same row.
      source_ref:
        source_ref ??
        `sha256:${createHash('sha256')
          .update(JSON.stringify([title, source_type, metadata]))
          .digest('hex')}`,
      metadata,
    },
    hadAccountId: Object.hasOwn(value, 'account_id'),
  };
}

/**
 * import_assets_jsonl: streams `debug.path` line by line (memory stays flat), validates
 * each line, and upserts assets in batches. Invalid lines are skipped and reported; with
 * `strict: true` the file is validated first and the job fails without writing anything.
 */
export const importAssetsJsonl: Handler<'import_assets_jsonl'> = {
  resources: { gpu: false, memoryMb: 512, cpus: 1, timeoutMs: 30 * 60 * 1000 },

  async run(ctx) {
    const started = performance.now();
    const { strict } = ctx.payload;
    // run-job refuses a URL input not yet fetched, so there is an object to read.
    const input = payloadObject(ctx.payload)!;
    const { bucket, key: path } = input;
    await ctx.progress(0, 'downloading');
    const file = await ctx.storage.download(bucket, path);
    ctx.log.info({ bucket, path, bytes: file.size, strict }, 'importing assets');

    if (strict) {
      await ctx.progress(0, 'processing');
      const check = newStats();
      await scanFile(ctx, file.path, file.size, check, undefined, [0, 50]);
      if (check.invalid > 0) {
        const first = check.invalid_samples[0]!;
        throw new HdError(
          'INVALID_INPUT',
          `${path}: line ${first.line}: ${first.reason} (${check.invalid} invalid line(s); strict mode, nothing written)`,
          {
            details: { invalid: check.invalid, invalid_samples: check.invalid_samples },
          },
        );
      }
    }

    // Strict mode spends the first half of the progress bar on validation.
    const span: [number, number] = strict ? [50, 100] : [0, 100];
    // No line count is known up front: bare `processing`, the percent follows the bytes read.
    await ctx.progress(span[0], 'processing');
    const stats = newStats();
    await scanFile(
      ctx,
      file.path,
      file.size,
      stats,
      async (rows) => {
        const counts = await ctx.outputs.upsertAssets(rows);
        stats.inserted += counts.inserted;
        stats.updated += counts.updated;
        stats.unchanged += counts.unchanged;
        stats.batches += 1;
      },
      span,
    );
    stats.skipped = stats.blank + stats.unchanged;
    return { ...stats, duration_ms: Math.round(performance.now() - started) };
  },
};

function newStats(): ImportStats {
  return {
    lines: 0,
    blank: 0,
    valid: 0,
    invalid: 0,
    invalid_samples: [],
    account_id_ignored: 0,
    inserted: 0,
    updated: 0,
    unchanged: 0,
    skipped: 0,
    bytes: 0,
    batches: 0,
  };
}

/** Reads the file once; hands full batches of valid rows to `write` (when given). */
async function scanFile(
  ctx: HandlerContext<'import_assets_jsonl'>,
  localPath: string,
  size: number,
  stats: ImportStats,
  write: ((rows: AssetRow[]) => Promise<void>) | undefined,
  [from, to]: [number, number],
): Promise<void> {
  const splitter = new LineSplitter(ctx.config.HD_MAX_LINE_BYTES);
  const batchSize = ctx.config.HD_IMPORT_BATCH_SIZE;
  // Rows go to WRITE_STREAMS streams by a hash of their key, each stream writing its
  // batches in order, one at a time: PostgreSQL's upsert is the slow side (~5x Node's
  // parsing), so two backends work at once while the next lines are parsed, and a key
  // repeated in the file still ends with its last line's values, on every run.
  const streams = Array.from({ length: WRITE_STREAMS }, () => ({
    rows: [] as AssetRow[],
    bytes: 0,
    tail: Promise.resolve(),
  }));
  const onLine = (line: Line) => {
    stats.lines += 1;
    const lineBytes = line.bytesEnd - stats.bytes;
    stats.bytes = line.bytesEnd;
    const parsed = parseAssetLine(line, ctx.config.HD_MAX_LINE_BYTES);
    if (parsed.kind === 'blank') stats.blank += 1;
    else if (parsed.kind === 'invalid') {
      stats.invalid += 1;
      if (stats.invalid_samples.length < MAX_INVALID_SAMPLES) {
        // Stats and error details are jsonb: nothing from the input may break them.
        stats.invalid_samples.push({ line: line.number, reason: storableString(parsed.reason) });
      }
    } else {
      stats.valid += 1;
      if (parsed.hadAccountId) stats.account_id_ignored += 1;
      if (!write) return;
      const stream = streams[streamOf(parsed.row)]!;
      stream.rows.push(parsed.row);
      stream.bytes += lineBytes;
    }
  };
  const flush = async (all: boolean) => {
    if (!write) return;
    for (const stream of streams) {
      const full = () => stream.rows.length >= batchSize || stream.bytes >= MAX_BATCH_BYTES;
      while (full() || (all && stream.rows.length > 0)) {
        const rows = stream.rows.splice(0, batchSize);
        stream.bytes = 0; // what stays behind is less than one read chunk
        await stream.tail; // this stream's previous batch first: order per key, bounded memory
        stream.tail = write(rows);
        stream.tail.catch(() => {}); // observed by the next await; not an unhandled rejection
      }
    }
    if (all) await Promise.all(streams.map((stream) => stream.tail));
  };
  const stream = createReadStream(localPath, {
    highWaterMark: READ_CHUNK_BYTES,
    signal: ctx.signal,
  });
  const chunks = stream[Symbol.asyncIterator]();
  try {
    for (;;) {
      let next: IteratorResult<Buffer>;
      try {
        next = await chunks.next();
      } catch (error) {
        if (ctx.signal.aborted) throw ctx.signal.reason;
        throw new HdError(
          'DOWNLOAD_FAILED',
          `reading the input failed: ${(error as Error).message}`,
          { cause: error },
        );
      }
      if (next.done) break;
      splitter.push(next.value, onLine);
      await flush(false);
      await ctx.progress(from + (size === 0 ? 1 : stats.bytes / size) * (to - from));
    }
  } finally {
    stream.destroy();
  }
  splitter.end(onLine);
  stats.bytes = size;
  await flush(true);
}

/** The write stream of a row: the same key always goes to the same stream (FNV-1a). */
function streamOf(row: AssetRow): number {
  const key = `${row.source_type}\u0000${row.source_ref}`;
  let hash = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) hash = Math.imul(hash ^ key.charCodeAt(i), 0x01000193);
  return (hash >>> 0) % WRITE_STREAMS;
}
