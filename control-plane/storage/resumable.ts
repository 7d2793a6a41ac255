import { open } from 'node:fs/promises';

/** Supabase's TUS endpoint takes chunks of exactly 6 MiB (the last one may be shorter). */
export const TUS_CHUNK_BYTES = 6 * 1024 * 1024;
const ATTEMPTS_PER_CHUNK = 3;

export interface ResumableUpload {
  /** `{SUPABASE_URL}/storage/v1`. */
  storageUrl: string;
  serviceRoleKey: string;
  bucket: string;
  key: string;
  localPath: string;
  size: number;
  contentType: string;
}

/** A failed TUS exchange, shaped like a Storage error for mapStorageError. */
export interface TusFailure {
  status: number;
  statusCode?: string;
  error?: string;
  message: string;
}

async function failure(response: Response | undefined, what: string, cause?: unknown) {
  if (!response) return { status: 0, message: `${what}: ${(cause as Error)?.message}` };
  const text = await response.text().catch(() => '');
  let body: Partial<TusFailure>;
  try {
    const parsed: unknown = JSON.parse(text);
    body =
      parsed && typeof parsed === 'object' ? (parsed as Partial<TusFailure>) : { message: text };
  } catch {
    body = { message: text };
  }
  return { ...body, status: response.status, message: `${what}: ${body.message ?? text}` };
}

const b64 = (value: string) => Buffer.from(value, 'utf8').toString('base64');

/**
 * Uploads a large file with Supabase Storage's resumable (TUS 1.0.0) protocol, reading
 * one 6 MiB chunk at a time into a reused buffer (memory stays flat). A chunk that
 * fails is retried after asking the server where it stands (HEAD Upload-Offset).
 * Throws a TusFailure.
 */
export async function uploadResumable(u: ResumableUpload): Promise<void> {
  const headers = {
    authorization: `Bearer ${u.serviceRoleKey}`,
    apikey: u.serviceRoleKey,
    'tus-resumable': '1.0.0',
  };
  let response: Response | undefined;
  try {
    response = await fetch(`${u.storageUrl}/upload/resumable`, {
      method: 'POST',
      headers: {
        ...headers,
        'upload-length': String(u.size),
        'x-upsert': 'true',
        'upload-metadata': [
          `bucketName ${b64(u.bucket)}`,
          `objectName ${b64(u.key)}`,
          `contentType ${b64(u.contentType)}`,
          `cacheControl ${b64('3600')}`,
        ].join(','),
      },
    });
  } catch (cause) {
    throw await failure(undefined, 'resumable upload: create', cause);
  }
  const location = response.headers.get('location');
  if (response.status !== 201 || !location)
    throw await failure(response, 'resumable upload: create');
  const uploadUrl = new URL(location, u.storageUrl).toString();

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
        throw await failure(answer, `resumable upload: chunk at ${offset}`, error);
      }
      await answer?.body?.cancel();
      const head = await fetch(uploadUrl, { method: 'HEAD', headers }).catch(() => undefined);
      const known = Number(head?.headers.get('upload-offset'));
      if (Number.isFinite(known) && known >= 0) offset = known;
    }
  } finally {
    await file.close();
  }
}
