import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import { HdError } from '../../contract/errors.ts';
import { hashingStream } from './hash.ts';
import { mapStorageError } from './supabase-errors.ts';
import { noAnswer, readFailure } from './supabase-http.ts';

/**
 * Streams a local file as one request's body (memory stays flat), its length declared so
 * Storage checks the bucket's size limit (it does not count a stream). With `sha256`, the
 * bytes sent must hash to it. Throws UPLOAD_FAILED, STORAGE_UNAUTHORIZED, … as mapped.
 */
export async function sendFile(o: {
  url: string;
  method: 'POST' | 'PUT';
  headers: Record<string, string>;
  localPath: string;
  size: number;
  bucket: string;
  key: string;
  sha256?: string | undefined;
}): Promise<void> {
  const sent = hashingStream();
  const source = createReadStream(o.localPath).on('error', (error) => sent.destroy(error));
  const response = await fetch(o.url, {
    method: o.method,
    headers: { ...o.headers, 'content-length': String(o.size) },
    body: Readable.toWeb(source.pipe(sent)) as ReadableStream<Uint8Array>,
    duplex: 'half',
  }).catch((cause: unknown) => {
    throw mapStorageError('upload', o.bucket, o.key, noAnswer('upload', cause));
  });
  if (!response.ok)
    throw mapStorageError('upload', o.bucket, o.key, await readFailure(response, 'upload'));
  await response.body?.cancel();
  if (o.sha256) verifySent(o.bucket, o.key, sent.sha256(), o.sha256);
}

/** The bytes that went out must be the ones the caller hashed (a file changed meanwhile). */
export function verifySent(bucket: string, key: string, sent: string, expected: string): void {
  if (sent !== expected)
    throw new HdError(
      'UPLOAD_FAILED',
      `upload of ${bucket}/${key}: the bytes sent hash to ${sent}, not ${expected} (the file changed during the upload)`,
    );
}
