import { HdError } from '../contract/errors.ts';
import type { LeasedJob } from '../contract/jobs.ts';
import { assertTenantPath, jobOutputPrefix, OUTPUTS_BUCKET } from '../contract/storage-paths.ts';
import type { Artifact, ArtifactStore } from '../control-plane/db/artifacts.ts';
import { hashFile } from '../control-plane/storage/hash.ts';
import type { StorageBackend } from '../control-plane/storage/storage.ts';

/** A result file of the job, on local disk, to be stored as an artifact. */
export interface ArtifactFile {
  /** page_text, page_image, preview, archive, … (a-z, 0-9, _). */
  kind: string;
  /** Its name within the kind: 1-4 plain segments, e.g. `report.pdf/p0001.md`. */
  name: string;
  path: string;
  contentType: string;
}

/**
 * Stores a job's result files in the outputs bucket, under the job's own prefix, in the
 * three steps of migration 00017: hd_begin_artifact (lease, name, the job's output limit;
 * it says where the object goes), the upload (streamed; the bytes sent must hash to what
 * was declared), hd_record_artifact (the row). An upload that fails records nothing and
 * leaves no row naming the object it would have replaced.
 */
export class ArtifactUploader {
  readonly #store: ArtifactStore;
  readonly #backend: StorageBackend;
  readonly #job: LeasedJob;

  constructor(store: ArtifactStore, backend: StorageBackend, job: LeasedJob) {
    this.#store = store;
    this.#backend = backend;
    this.#job = job;
  }

  async upload(file: ArtifactFile): Promise<Artifact> {
    const job = this.#job;
    const { sha256, bytes } = await hashFile(file.path);
    const spec = {
      kind: file.kind,
      name: file.name,
      contentType: file.contentType,
      sizeBytes: bytes,
      sha256,
    };
    const target = await this.#store.begin(job.id, job.lease_token, spec);
    // The SQL builds the key from the job's ids; checked here all the same.
    const prefix = jobOutputPrefix(job.account_id, job.id);
    if (
      target.bucket !== OUTPUTS_BUCKET ||
      !assertTenantPath(job.account_id, target.storage_path).startsWith(prefix)
    )
      throw new HdError(
        'PATH_OUTSIDE_TENANT',
        `artifact target ${target.bucket}/${target.storage_path} is not under ${OUTPUTS_BUCKET}/${prefix}`,
      );
    await this.#backend.upload(target.bucket, target.storage_path, file.path, file.contentType, {
      sha256,
      lease: { jobId: job.id, leaseToken: job.lease_token },
    });
    return this.#store.record(job.id, job.lease_token, spec);
  }
}
