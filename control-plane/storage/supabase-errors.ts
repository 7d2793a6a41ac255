import { HdError, type ErrorCode } from '../../contract/errors.ts';

export type StorageOperation = 'download' | 'upload' | 'read bucket';

/** What Supabase Storage (or the gateway before it) answered, as far as it is known. */
export interface StorageFailure {
  message?: string;
  /** The HTTP status; absent when nothing answered. */
  status?: number;
  /** Storage's own status, in the body: it answers most errors as HTTP 400 with this set. */
  statusCode?: string;
  code?: string;
  error?: string;
}

// Storage names its errors in the body (`code`, older versions `error`); the name
// decides before the HTTP status, which is 400 for nearly everything.
const STATUS_BY_NAME: Record<string, number> = {
  NoSuchKey: 404,
  NoSuchBucket: 404,
  not_found: 404,
  'Bucket not found': 404,
  InvalidJWT: 401,
  ExpiredToken: 401,
  InvalidSignature: 401,
  AccessDenied: 403,
  Unauthorized: 403,
  EntityTooLarge: 413,
  'Payload too large': 413,
  KeyAlreadyExists: 409,
  ResourceAlreadyExists: 409,
  Duplicate: 409,
};
// Older Storage answers a refused token as {statusCode:"400", message:"jwt expired"}.
const TOKEN_REFUSED = /\bjwt\b|invalid signature|token has expired|invalid api key/i;

/** The status a Storage error stands for: error name, then body statusCode, then HTTP. */
export function storageStatus(error: StorageFailure): number | undefined {
  for (const name of [error.code, error.error]) {
    if (name && STATUS_BY_NAME[name]) return STATUS_BY_NAME[name];
  }
  const fromBody = Number.parseInt(error.statusCode ?? '', 10);
  if (Number.isFinite(fromBody) && fromBody >= 400) {
    return fromBody === 400 && TOKEN_REFUSED.test(error.message ?? '') ? 401 : fromBody;
  }
  if (error.status === 400 && TOKEN_REFUSED.test(error.message ?? '')) return 401;
  return error.status && error.status >= 400 ? error.status : undefined;
}

/** Whether Storage said "bucket" rather than "object" in a not-found answer. */
export function isMissingBucket(error: StorageFailure): boolean {
  return error.code === 'NoSuchBucket' || /bucket/i.test(`${error.error} ${error.message}`);
}

/** An HdError naming the object and quoting what Storage said (status, code, message). */
function storageError(
  code: ErrorCode,
  message: string,
  target: { bucket: string; key: string },
  error: StorageFailure,
  retryable?: boolean,
): HdError {
  const status = storageStatus(error);
  const said =
    `Supabase Storage: ${status ?? 'no answer'} ${error.code ?? ''} ${error.message ?? ''}`
      .replace(/\s+/g, ' ')
      .trim();
  return new HdError(code, `${message} (${said})`, {
    cause: error,
    details: { storage_status: status, bucket: target.bucket, key: target.key },
    ...(retryable === undefined ? {} : { retryable }),
  });
}

/**
 * Maps a Storage failure to our codes. Not found and refusals are permanent (retrying
 * cannot help); throttling, server errors and network failures are retryable.
 */
export function mapStorageError(
  op: StorageOperation,
  bucket: string,
  key: string,
  error: StorageFailure,
): HdError {
  const status = storageStatus(error);
  const what = `${bucket}/${key}`;
  const fail = (code: ErrorCode, message: string, retryable?: boolean) =>
    storageError(code, message, { bucket, key }, error, retryable);
  const transfer: ErrorCode = op === 'upload' ? 'UPLOAD_FAILED' : 'DOWNLOAD_FAILED';
  if (status === 404) {
    const bucketMissing = isMissingBucket(error) || op === 'read bucket';
    return fail(
      'FILE_NOT_FOUND',
      bucketMissing ? `bucket ${bucket} does not exist` : `storage object ${what} does not exist`,
    );
  }
  if (status === 401 || status === 403) return storageUnauthorized(op, bucket, key, error);
  if (status === 413) return fail('INVALID_INPUT', `${what} is larger than the bucket allows`);
  if (status === 409) return fail(transfer, `${op} of ${what} conflicted with another write`, true);
  if (status !== undefined && status < 500 && status !== 408 && status !== 429) {
    return fail('INVALID_INPUT', `${op} of ${what} was refused as invalid`);
  }
  return fail(transfer, `${op} of ${what} failed`, true);
}

/** The configuration error for a refused key: permanent, and it says what to run. */
export function storageUnauthorized(
  op: StorageOperation,
  bucket: string,
  key: string,
  error: StorageFailure,
): HdError {
  return storageError(
    'STORAGE_UNAUTHORIZED',
    `${op} of ${bucket}/${key} refused: SUPABASE_SERVICE_ROLE_KEY is not a valid service-role key of this project (wrong, expired, or another project's)${op === 'read bucket' ? '' : '; run `hd-runner doctor`'}`,
    { bucket, key },
    error,
  );
}
