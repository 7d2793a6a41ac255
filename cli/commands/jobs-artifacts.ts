import { copyFile, mkdir, mkdtemp, rename, rm } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Config } from '../../control-plane/config.ts';
import { artifactsOf, type Artifact } from '../../control-plane/db/artifacts.ts';
import { batchesOf } from '../../control-plane/db/batches.ts';
import type { ControlPlaneDb } from '../../control-plane/db/transport.ts';
import { openStorage } from '../../control-plane/open.ts';
import { hashFile } from '../../control-plane/storage/hash.ts';
import { supabaseUrlSigner } from '../../control-plane/storage/signed-urls.ts';
import type { StorageBackend } from '../../control-plane/storage/storage.ts';
import { zipWriter } from '../../control-plane/zip-writer.ts';
import { formatTable } from '../format.ts';
import { escapeControls } from '../terminal-safe.ts';
import { resolveIdPrefix, resolveJobId } from '../job-id.ts';
import { CommandError, stringOption, UsageError, type ParsedArgs } from '../command.ts';

const DEFAULT_EXPIRES = 3600;
const MAX_EXPIRES = 7 * 24 * 3600;

/**
 * `hd-runner jobs artifacts ID | --batch ID`: a job's (or a batch's) artifacts listed, as
 * time-limited links (--url: Supabase Storage signed URLs; fs: file URLs), downloaded
 * (--download DIR) or zipped into one archive (--archive FILE). Every file fetched is
 * checked against its recorded SHA-256; an archive is written beside FILE and renamed
 * into place, so a failure leaves no partial file.
 */
export async function jobArtifacts(
  db: ControlPlaneDb,
  config: Config,
  id: string | undefined,
  args: ParsedArgs,
): Promise<number> {
  const batch = stringOption(args, 'batch');
  const expires = expiresOption(args.values.expires);
  const scope = batch
    ? {
        batchId: await resolveIdPrefix(batch, 'batch id', 'batch', (range) =>
          batchesOf(db).listBatches({ idRange: range, limit: 3 }),
        ),
      }
    : { jobId: await resolveJobId(db, id!) };
  const what = scope.jobId ? `job ${scope.jobId}` : `batch ${scope.batchId}`;
  const found = await artifactsOf(db).list(scope);
  const archive = stringOption(args, 'archive');
  const download = stringOption(args, 'download');
  if (found.length === 0 && (archive || download))
    throw new CommandError(
      'NO_ARTIFACTS',
      `${what} has no artifacts, nothing to ${archive ? 'archive' : 'download'} (extract_text stores them when its payload asks: include_texts, include_images, include_previews)`,
    );
  // An entry's path: kind/name, under the job's id for a batch.
  const pathOf = (a: Artifact) => (scope.batchId ? `${a.job_id}/` : '') + `${a.kind}/${a.name}`;
  const storage = openStorage(config);
  const rows: (Artifact & { url?: string })[] = [...found];
  if (args.values.url === true) {
    const urls = await linksFor(config, found, expires);
    for (const row of rows) row.url = urls.get(`${row.bucket}/${row.storage_path}`);
  }
  if (download) await downloadAll(storage, found, resolve(download), pathOf);
  if (archive) await archiveAll(storage, found, resolve(archive), pathOf);

  // The links were asked for and carry their (time-limited) token by design: written as
  // bytes, past the output guard that hides token-shaped text, control characters escaped.
  const print = (text: string) =>
    args.values.url === true
      ? process.stdout.write(Buffer.from(`${escapeControls(text)}\n`))
      : console.log(text);
  if (args.values.json === true) print(JSON.stringify(rows, null, 2));
  else if (rows.length === 0) print(`${what}: no artifacts`);
  else
    print(
      formatTable(
        rows.map((a) => ({
          ...(scope.batchId ? { job: a.job_id.slice(0, 8) } : {}),
          kind: a.kind,
          name: a.name,
          bytes: a.size_bytes,
          sha256: a.sha256.slice(0, 12),
          ...(a.url ? { url: a.url } : {}),
        })),
      ),
    );
  if (download) console.error(`downloaded ${found.length} artifacts into ${resolve(download)}`);
  if (archive)
    console.error(`archived ${found.filter(notArchive).length} artifacts into ${resolve(archive)}`);
  return 0;
}

function expiresOption(value: unknown): number {
  if (value === undefined) return DEFAULT_EXPIRES;
  const seconds = Number(value);
  if (!Number.isInteger(seconds) || seconds < 60 || seconds > MAX_EXPIRES)
    throw new UsageError(
      `jobs artifacts: --expires must be 60..${MAX_EXPIRES} seconds (got ${JSON.stringify(value)})`,
    );
  return seconds;
}

/** Signed URLs (Supabase Storage `createSignedUrls`), or file URLs on fs storage. */
async function linksFor(config: Config, found: readonly Artifact[], expires: number) {
  const links = new Map<string, string>();
  if (config.HD_STORAGE === 'fs') {
    for (const a of found)
      links.set(
        `${a.bucket}/${a.storage_path}`,
        pathToFileURL(join(resolve(config.HD_STORAGE_ROOT), a.bucket, a.storage_path)).href,
      );
    return links;
  }
  const sign = supabaseUrlSigner(config.SUPABASE_URL!, config.SUPABASE_SERVICE_ROLE_KEY!);
  for (const bucket of new Set(found.map((a) => a.bucket))) {
    const keys = found.filter((a) => a.bucket === bucket).map((a) => a.storage_path);
    for (const [key, url] of await sign(bucket, keys, expires)) links.set(`${bucket}/${key}`, url);
  }
  return links;
}

/** One artifact as a local file whose bytes match its row; `use` it, then it is gone. */
async function fetchChecked(storage: StorageBackend, a: Artifact, scratch: string) {
  const local = await storage.download(a.bucket, a.storage_path, scratch);
  const { sha256 } = await hashFile(local.path);
  if (sha256 !== a.sha256)
    throw new CommandError(
      'CHECKSUM_MISMATCH',
      `artifact ${a.kind}/${a.name} of job ${a.job_id}: the stored object hashes to ${sha256}, not the recorded ${a.sha256} (replaced or damaged since; run the job again)`,
    );
  return local.path;
}

async function downloadAll(
  storage: StorageBackend,
  found: readonly Artifact[],
  dir: string,
  pathOf: (a: Artifact) => string,
) {
  const scratch = await mkdtemp(join(tmpdir(), 'hd-artifacts-'));
  try {
    for (const a of found) {
      const target = join(dir, pathOf(a));
      await mkdir(dirname(target), { recursive: true });
      const local = await fetchChecked(storage, a, scratch);
      await copyFile(local, target);
      // A downloaded copy goes (fs storage hands out the object itself).
      if (local.startsWith(scratch)) await rm(local, { force: true });
    }
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

// An archive of archives is the same files twice.
const notArchive = (a: Artifact) => a.kind !== 'archive';

async function archiveAll(
  storage: StorageBackend,
  found: readonly Artifact[],
  file: string,
  pathOf: (a: Artifact) => string,
) {
  const entries = found.filter(notArchive);
  if (entries.length === 0)
    throw new CommandError('NO_ARTIFACTS', 'only archives are stored, nothing else to archive');
  const scratch = await mkdtemp(join(tmpdir(), 'hd-artifacts-'));
  const partial = `${file}.partial-${process.pid}`;
  try {
    const zip = zipWriter(partial);
    for (const a of entries)
      zip.add(pathOf(a), a.size_bytes, a.content_type, async () => {
        const local = await fetchChecked(storage, a, scratch);
        const stream = createReadStream(local);
        // A downloaded copy goes once read (fs storage hands out the object itself).
        if (local.startsWith(scratch)) stream.on('close', () => void rm(local, { force: true }));
        return stream;
      });
    await zip.close();
    await rename(partial, file);
  } finally {
    await rm(partial, { force: true });
    await rm(scratch, { recursive: true, force: true });
  }
}
