import { open } from 'node:fs/promises';
import { assertBucketName, assertStorageKey } from '../../contract/storage-paths.ts';
import { hashFile } from './hash.ts';
import { verifySent } from './send-file.ts';
import { mapStorageError, type StorageFailure } from './supabase-errors.ts';
import { authHeaders, noAnswer, readFailure } from './supabase-http.ts';

/**
 * Hosted Supabase (S3 backend) takes TUS chunks of exactly 6 MiB but the last; the file
 * backend takes any size. 6 MiB suits both.
 */
export const TUS_CHUNK_BYTES = 6 * 1024 * 1024;
const ATTEMPTS_PER_CHUNK = 3;
// Storage's upload ids are base64url; anything else in a Location is not followed.
const UPLOAD_ID = /^[A-Za-z0-9_-]+=*$/;

export interface ResumableUpload {
  /** `{SUPABASE_URL}/storage/v1`. */
  storageUrl: string;
  /**
   * Who uploads: the service-role key, or the token of a signed upload URL for this one
   * key (Storage's `/upload/resumable/sign` route, the token in `x-signature`; whether it
   * may overwrite is the token's, not a header's).
   */
  auth: { serviceRoleKey: string } | { signature: string };
  bucket: string;
  key: string;
  localPath: string;
  size: number;
  contentType: string;
}

const b64 = (value: string) => Buffer.from(value, 'utf8').toString('base64');

/**
 * The upload's URL on OUR origin: Storage answers an absolute Location built from
 * X-Forwarded-* headers, which a proxy may set to an internal host; the service-role
 * key goes only to SUPABASE_URL, so only the upload id is taken from it.
 */
function uploadUrlFrom(location: string, endpoint: string): string | undefined {
  const id = new URL(location, `${endpoint}/`).pathname.split('/').pop() ?? '';
  return UPLOAD_ID.test(id) ? `${endpoint}/${id}` : undefined;
}

/**
 * Uploads a large file with Supabase Storage's resumable (TUS 1.0.0) protocol, reading
 * one 6 MiB chunk at a time into a reused buffer (memory stays flat). A chunk that
 * fails is retried after asking the server where it stands (HEAD Upload-Offset).
 * With the service-role key every request says `x-upsert: true`: Storage checks
 * overwrite on each PATCH with that PATCH's own header. Throws a StorageFailure.
 */
export async function uploadResumable(u: ResumableUpload): Promise<void> {
  const signed = 'signature' in u.auth;
  const endpoint = `${u.storageUrl}/upload/resumable${signed ? '/sign' : ''}`;
  const headers = {
    ...('signature' in u.auth
      ? { 'x-signature': u.auth.signature }
      : { ...authHeaders(u.auth.serviceRoleKey), 'x-upsert': 'true' }),
    'tus-resumable': '1.0.0',
  };
  let response: Response | undefined;
  try {
    response = await fetch(endpoint, {
      method: 'POST',
      headers: {
        ...headers,
        'upload-length': String(u.size),
        'upload-metadata': [
          `bucketName ${b64(assertBucketName(u.bucket))}`,
          `objectName ${b64(assertStorageKey(u.key))}`,
          `contentType ${b64(u.contentType)}`,
          `cacheControl ${b64('3600')}`,
        ].join(','),
      },
    });
  } catch (cause) {
    throw noAnswer('resumable upload: create', cause);
  }
  const location = response.headers.get('location');
  if (response.status !== 201 || !location)
    throw await readFailure(response, 'resumable upload: create');
  await response.body?.cancel();
  const uploadUrl = uploadUrlFrom(location, endpoint);
  if (!uploadUrl) {
    throw {
      status: 502,
      message: `resumable upload: create answered an unusable Location ${JSON.stringify(location)}`,
    } satisfies StorageFailure;
  }

  const file = await open(u.localPath, 'r');
  const buffer = Buffer.alloc(Math.min(TUS_CHUNK_BYTES, Math.max(u.size, 1)));
  try {
    let offset = 0;
    let attempt = 0;
    while (offset < u.size) {
      const { bytesRead } = await file.read(buffer, 0, buffer.length, offset);
      let answer: Response | undefined;
      let error: unknown;
      try {
        answer = await fetch(uploadUrl, {
          method: 'PATCH',
          headers: {
            ...headers,
            'upload-offset': String(offset),
            'content-type': 'application/offset+octet-stream',
          },
          body: buffer.subarray(0, bytesRead),
        });
      } catch (cause) {
        error = cause;
      }
      if (answer?.status === 204) {
        offset = Number(answer.headers.get('upload-offset') ?? offset + bytesRead);
        attempt = 0;
        continue;
      }
      const retryable = !answer || answer.status >= 500 || answer.status === 409;
      if (!retryable || ++attempt >= ATTEMPTS_PER_CHUNK) {
        const what = `resumable upload: chunk at ${offset}`;
        throw answer ? await readFailure(answer, what) : noAnswer(what, error);
      }
      await answer?.body?.cancel();
      const head = await fetch(uploadUrl, { method: 'HEAD', headers }).catch(() => undefined);
      const known = Number(head?.headers.get('upload-offset') ?? Number.NaN);
      if (Number.isInteger(known) && known >= 0) offset = known;
    }
  } finally {
    await file.close();
  }
}

/**
 * uploadResumable with its failure mapped (UPLOAD_FAILED, …) and, given `sha256`, the file
 * hashed again afterwards: chunks are read at their offsets, so it must not have changed.
 */
export async function uploadResumableChecked(u: ResumableUpload, sha256?: string): Promise<void> {
  await uploadResumable(u).catch((failure: StorageFailure) => {
    throw mapStorageError('upload', u.bucket, u.key, failure);
  });
  if (sha256) verifySent(u.bucket, u.key, (await hashFile(u.localPath)).sha256, sha256);
}
