import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HdError, toHdError } from '../contract/errors.ts';
import { PAYLOAD_SCHEMAS, urlForLog, type ClaimedJob } from '../contract/jobs.ts';
import { assertTenantPath, tenantPrefix, toStorageName } from '../contract/storage-paths.ts';
import type { Config } from '../control-plane/config.ts';
import type { ControlPlaneDb } from '../control-plane/db/transport.ts';
import type { Logger } from '../control-plane/logger.ts';
import type { StorageBackend } from '../control-plane/storage/storage.ts';
import { describe, readHead, sniff } from '../runner/extract/sniff.ts';
import { AddressGuard } from './public-http.ts';
import { fetchToFile, type UrlFetchLimits } from './url-fetch.ts';

export interface UrlInputStagerDeps {
  db: Pick<ControlPlaneDb, 'recordUrlInput' | 'heartbeat'>;
  storage: StorageBackend;
  limits: UrlFetchLimits;
  /** The bucket URL inputs are stored in (HD_BUCKET). */
  bucket: string;
  /** Where downloads wait before they are stored (HD_WORK_DIR). */
  workDir: string;
  leaseSeconds: number;
  log: Logger;
}

/**
 * Inputs by URL, staged by the scheduler before it starts the runner (docs/containers.md,
 * "Inputs by URL"): the URL is fetched through the address guard into a local file, sniffed
 * (the server's Content-Type is not trusted), stored under the account's prefix at
 * `accounts/{account_id}/url-inputs/{job_id}/{name}`, and recorded on the job
 * (hd_record_url_input, lease-checked, scheduler only): an import reads it as its object,
 * extract_text as a file of its document. The runner keeps a download-only credential and
 * needs no internet. A retry finds the input recorded and does not fetch again. The job's
 * lease is renewed meanwhile.
 */
export class UrlInputStager {
  readonly #d: UrlInputStagerDeps;

  constructor(deps: UrlInputStagerDeps) {
    this.#d = deps;
  }

  /** The job ready for its runner: its URL input stored and recorded, or as it was. */
  async stage(job: ClaimedJob, signal: AbortSignal): Promise<ClaimedJob> {
    const type = job.job_type;
    if (type !== 'import_assets_jsonl' && type !== 'extract_text') return job;
    const payload = PAYLOAD_SCHEMAS[type].safeParse(job.debug ?? {});
    // An invalid payload is the runner's to refuse, with the reason; a stored input is kept.
    if (!payload.success || !payload.data.url || payload.data.url_input) return job;
    const url = payload.data.url;
    if (type === 'extract_text' && !job.document_id)
      throw new HdError(
        'INVALID_INPUT',
        'extract_text by URL needs a document: the job has no document_id (the fetched file becomes one of its files)',
      );
    const dir = await mkdtemp(join(this.#d.workDir, 'hd-url-input-'));
    const lease = this.#keepLease(job, signal);
    try {
      const file = join(dir, 'download');
      const fetched = await fetchToFile(url, file, this.#d.limits, lease.signal);
      const contentType = storedType(type, url, await readHead(file), fetched.declaredType);
      // Named after where the content came from (a download link may redirect to its file).
      const key = assertTenantPath(
        job.account_id,
        `${tenantPrefix(job.account_id)}url-inputs/${job.id}/${nameOf(fetched.finalUrl)}`,
      );
      await this.#d.storage.upload(this.#d.bucket, key, file, contentType);
      const recorded = await this.#d.db.recordUrlInput(job.id, job.lease_token, {
        bucket: this.#d.bucket,
        path: key,
        bytes: fetched.bytes,
        sha256: fetched.sha256,
        content_type: contentType,
        declared_content_type: fetched.declaredType,
        fetched_from: fetched.finalUrl,
        redirects: fetched.redirects,
      });
      this.#d.log.info(
        { job_id: job.id, url: urlForLog(url), bytes: fetched.bytes, path: key },
        'stored the URL input',
      );
      return { ...recorded, lease_token: job.lease_token };
    } finally {
      lease.stop();
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Heartbeats while the input is fetched; a refused one aborts it with that error. */
  #keepLease(job: ClaimedJob, outer: AbortSignal) {
    const lost = new AbortController();
    const timer = setInterval(
      () => {
        this.#d.db
          .heartbeat(job.id, job.lease_token, this.#d.leaseSeconds)
          .catch((error: unknown) => {
            const err = toHdError(error);
            // A database that does not answer may come back before the lease ends.
            if (err.code === 'LEASE_LOST' || err.code === 'CANCELLED') lost.abort(err);
          });
      },
      (this.#d.leaseSeconds * 1000) / 3,
    );
    return {
      signal: AbortSignal.any([outer, lost.signal]),
      stop: () => clearInterval(timer),
    };
  }
}

/**
 * The type the object is stored with, from its bytes; UNSUPPORTED_FILE for content the job
 * cannot read. The server's Content-Type names the format of text only (Markdown, HTML).
 */
function storedType(
  type: 'import_assets_jsonl' | 'extract_text',
  url: string,
  head: Buffer,
  declared: string | null,
): string {
  const found = sniff(head, type === 'extract_text' ? declared : null);
  const refuse = (wanted: string) =>
    new HdError(
      'UNSUPPORTED_FILE',
      `${urlForLog(url)}: the content is ${describe(found)} (the server said ${declared ?? 'nothing'}), not ${wanted}`,
      { details: { url: urlForLog(url), declared_type: declared, detected: describe(found) } },
    );
  if (type === 'import_assets_jsonl') {
    if (found.kind !== 'text' || found.format === 'html') throw refuse('JSONL text');
    return 'application/x-ndjson';
  }
  switch (found.kind) {
    case 'pdf':
      return 'application/pdf';
    case 'image':
    case 'audio':
      return found.mime;
    case 'text':
      return found.format === 'plain' ? 'text/plain' : `text/${found.format}`;
    case 'unsupported':
      throw refuse('a document extract_text reads (PDF, image, audio, text, Markdown, HTML)');
  }
}

/** The object's name: the URL path's last segment in storage's characters, or `input`. */
function nameOf(url: string): string {
  const last = new URL(url).pathname.split('/').pop() ?? '';
  let decoded = last;
  try {
    decoded = decodeURIComponent(last);
  } catch {
    // a stray % stays as it is
  }
  const name = toStorageName(decoded.replace(/[/\\]/g, '_'));
  return decoded === '' || name === 'file' ? 'input' : name;
}

/** The scheduler's stager, configured by HD_URL_INPUT_* and HD_BUCKET. */
export function urlInputStagerFor(
  config: Config,
  db: UrlInputStagerDeps['db'],
  storage: StorageBackend,
  log: Logger,
): UrlInputStager {
  return new UrlInputStager({
    db,
    storage,
    limits: {
      guard: new AddressGuard(
        config.HD_URL_INPUT_ALLOW_CIDRS,
        'URL input',
        'HD_URL_INPUT_ALLOW_CIDRS',
      ),
      maxBytes: config.HD_URL_INPUT_MAX_BYTES,
      timeoutMs: config.HD_URL_INPUT_TIMEOUT_MS,
      maxRedirects: config.HD_URL_INPUT_MAX_REDIRECTS,
    },
    bucket: config.HD_BUCKET,
    workDir: config.HD_WORK_DIR ?? tmpdir(),
    leaseSeconds: config.HD_LEASE_SECONDS,
    log,
  });
}
