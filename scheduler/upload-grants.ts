import { timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import { z } from 'zod';
import { toHdError } from '../contract/errors.ts';
import { assertTenantPath, jobOutputPrefix, OUTPUTS_BUCKET } from '../contract/storage-paths.ts';
import type { Config } from '../control-plane/config.ts';
import { artifactsOf, type ArtifactStore } from '../control-plane/db/artifacts.ts';
import type { ControlPlaneDb } from '../control-plane/db/transport.ts';
import {
  supabaseObjectRemover,
  supabaseUploadSigner,
} from '../control-plane/storage/signed-urls.ts';
import type { Logger } from '../control-plane/logger.ts';
import { readBody } from './http-body.ts';
import { capPeerConnections, RUNNER_FACING, type PeerConnectionStats } from './peer-connections.ts';
import { DEFAULT_GRANT_RATE, GrantLimits, type GrantRate } from './upload-grant-limits.ts';

/** Makes a signed upload URL for one object (Storage `POST /object/upload/sign/…`). */
export type UploadSigner = (bucket: string, key: string) => Promise<string>;
/** Removes objects of one bucket (Storage `DELETE /object/{bucket}`). */
export type ObjectRemover = (bucket: string, keys: readonly string[]) => Promise<void>;

/** What a runner asks for: its lease is its proof, the key what hd_begin_artifact gave it. */
const grantRequest = z.strictObject({
  job_id: z.uuid(),
  lease_token: z.uuid(),
  bucket: z.string().max(63),
  key: z.string().max(1024),
});
const MAX_BODY_BYTES = 4096;

export interface UploadGrants {
  /** What runners are given as HD_UPLOAD_GRANT_URL. */
  url: string;
  /**
   * After a job's runner ended: removes the objects of keys granted to it and never
   * recorded (never checked against a declared size, 00030). Logs, never throws.
   */
  sweep(jobId: string): Promise<void>;
  /** Its connections (peer-connections.ts): what a flood of them costs it. */
  connections(): PeerConnectionStats;
  close(): Promise<void>;
}

/**
 * The scheduler's side of artifact uploads to Supabase Storage (docs/containers.md, "Trust
 * boundary"): a runner holds no Storage key, so for each artifact it asks here, showing
 * its job id and lease token, and gets a signed upload URL for one key, which must lie
 * under its own job's prefix of the outputs bucket (`accounts/{a}/jobs/{job}/`). The
 * lease is checked against the job row as the database has it now (running, this lease,
 * not expired), so a runner whose lease ended, or that names another job, gets nothing.
 * And the key must be one hd_begin_artifact began for this lease and hd_record_artifact
 * has not recorded yet (00025), so whatever is stored was declared against the job's output
 * limit first. A signed URL cannot carry that size, so the key is marked granted and
 * hd_record_artifact compares the stored object's size with the declared one (00030); the
 * URL creates the object once (no upsert), after what was at the key is removed here.
 */
export async function serveUploadGrants(options: {
  address: string;
  db: Pick<ControlPlaneDb, 'getJob'>;
  artifacts: Pick<ArtifactStore, 'grantUpload' | 'takeUnrecordedUploads'>;
  signUpload: UploadSigner;
  removeObjects: ObjectRemover;
  /** Grants one lease may ask for (HD_UPLOAD_GRANT_RATE, HD_UPLOAD_GRANT_BURST). */
  limits?: GrantRate;
  log: Logger;
}): Promise<UploadGrants> {
  const { db, artifacts, signUpload, removeObjects, log } = options;
  const limits = new GrantLimits(options.limits ?? DEFAULT_GRANT_RATE);
  const address = options.address;
  const host = address.slice(0, address.lastIndexOf(':')).replace(/^\[|\]$/g, '');
  const port = Number(address.split(':').pop());

  async function grant(
    body: unknown,
  ): Promise<{ status: number; body: object; headers?: Record<string, string> }> {
    const parsed = grantRequest.safeParse(body);
    if (!parsed.success)
      return { status: 400, body: { error: `bad request: ${parsed.error.issues[0]!.message}` } };
    const { job_id, lease_token, bucket, key } = parsed.data;
    const job = await db.getJob(job_id);
    const held =
      job?.status === 'running' &&
      job.lease_token !== null &&
      job.lease_expires_at !== null &&
      job.lease_expires_at.getTime() > Date.now() &&
      timingSafeEqual(Buffer.from(job.lease_token), Buffer.from(lease_token.toLowerCase()));
    if (!job || !held)
      return { status: 403, body: { error: `job ${job_id} is not held by this lease` } };
    // Each ask of a live lease counts, before anything else is asked (Storage least of all).
    // Keyed by the row's token, not as sent: a UUID's other spellings (upper case) are the
    // same lease to the database and must share its bucket and its URLs.
    const waitMs = limits.take(job.id, job.lease_token!);
    if (waitMs > 0) {
      const seconds = Math.ceil(waitMs / 1000);
      return {
        status: 429,
        headers: { 'retry-after': String(seconds) },
        body: { error: `too many upload grants for job ${job.id}: retry after ${seconds} s` },
      };
    }
    const prefix = jobOutputPrefix(job.account_id, job.id);
    let checked: string;
    try {
      checked = assertTenantPath(job.account_id, key);
    } catch (error) {
      return { status: 403, body: { error: toHdError(error).message } };
    }
    if (bucket !== OUTPUTS_BUCKET || !checked.startsWith(prefix))
      return {
        status: 403,
        body: { error: `uploads of job ${job.id} go to ${OUTPUTS_BUCKET}/${prefix} only` },
      };
    if ((await artifacts.grantUpload(job.id, lease_token, checked)) === undefined)
      return {
        status: 403,
        body: { error: `no artifact of job ${job.id} was begun at ${checked} by this lease` },
      };
    // An earlier attempt's object (its row is gone since this begin) would refuse the URL;
    // so would this lease's own, stored before a network error or recorded before a re-run.
    await removeObjects(bucket, [checked]);
    // Asked again while its URL lasts: the same URL, Storage is not asked to sign again.
    const url = await limits.signOnce(job.id, job.lease_token!, checked, () =>
      signUpload(bucket, checked),
    );
    return { status: 200, body: { url } };
  }

  const server = http.createServer(RUNNER_FACING, (req, res) => {
    const reply = (status: number, body: object, headers: Record<string, string> = {}) =>
      res
        .writeHead(status, { 'content-type': 'application/json', ...headers })
        .end(JSON.stringify(body));
    if (req.method !== 'POST' || req.url !== '/upload-grant')
      return reply(404, { error: 'not found' });
    void readBody(req, MAX_BODY_BYTES).then(
      (raw) => {
        if (!raw) return req.destroy();
        let body: unknown;
        try {
          body = JSON.parse(raw.toString('utf8'));
        } catch {
          return reply(400, { error: 'bad request: not JSON' });
        }
        grant(body).then(
          (answer) => reply(answer.status, answer.body, answer.headers),
          (error: unknown) => {
            log.warn({ err: error }, 'upload grant failed');
            reply(503, { error: `upload grant failed: ${toHdError(error).message}` });
          },
        );
      },
      () => req.destroy(),
    ); // the client broke off mid-body
  });
  const peers = capPeerConnections(server);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  const bound = (server.address() as { port: number }).port;
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${bound}/upload-grant`,
    connections: peers,
    async sweep(jobId) {
      limits.forget(jobId);
      let keys: string[] = [];
      try {
        keys = await artifacts.takeUnrecordedUploads(jobId);
        await removeObjects(OUTPUTS_BUCKET, keys);
        if (keys.length > 0)
          log.warn(
            { job_id: jobId, keys },
            'removed objects uploaded through a grant and never recorded (their size was never checked)',
          );
      } catch (error) {
        log.warn(
          { job_id: jobId, keys, err: error },
          'could not remove objects uploaded through a grant and never recorded: remove them by hand',
        );
      }
    },
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** The grant service where runners need one: supabase storage with scoped credentials. */
export function uploadGrantsFor(
  config: Config,
  db: ControlPlaneDb,
  log: Logger,
): Promise<UploadGrants | undefined> {
  const { SUPABASE_URL: url, SUPABASE_SERVICE_ROLE_KEY: key } = config;
  if (config.HD_STORAGE !== 'supabase' || config.HD_RUNNER_CREDENTIALS !== 'scoped' || !url || !key)
    return Promise.resolve(undefined);
  const address = config.HD_UPLOAD_GRANT_ADDRESS;
  const loopback = /^(127\.|localhost:|\[::1\]:)/.test(address);
  if (config.HD_LAUNCHER === 'docker' && config.HD_DOCKER_NETWORK !== 'host' && loopback)
    log.warn(
      { address, network: config.HD_DOCKER_NETWORK },
      'HD_UPLOAD_GRANT_ADDRESS is on this host loopback, which runner containers cannot reach on this network: their artifact uploads will fail; set it to an address they reach (e.g. the bridge gateway) or HD_DOCKER_NETWORK=host (see docs/containers.md)',
    );
  const signUpload = supabaseUploadSigner(url, key);
  const removeObjects = supabaseObjectRemover(url, key);
  const artifacts = artifactsOf(db);
  const limits = { rate: config.HD_UPLOAD_GRANT_RATE, burst: config.HD_UPLOAD_GRANT_BURST };
  return serveUploadGrants({ address, db, artifacts, signUpload, removeObjects, limits, log });
}
