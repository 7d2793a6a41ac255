import { HdError } from '../../contract/errors.ts';
import { assertBucketName, assertStorageKey } from '../../contract/storage-paths.ts';
import type { StorageFailure } from './supabase-errors.ts';

/** `{SUPABASE_URL}/storage/v1`, without a trailing slash. */
export function storageBaseUrl(supabaseUrl: string): string {
  return `${supabaseUrl.replace(/\/+$/, '')}/storage/v1`;
}

/**
 * The URL of an object, built segment by segment: the bucket and every key segment are
 * checked (canonical form) and percent-encoded here, and the result is parsed back to
 * prove that no URL parser changes the path on the way (`..`, `%2e%2e`, `?`, `#`).
 */
export function objectUrl(storageUrl: string, bucket: string, key: string): string {
  const segments = [assertBucketName(bucket), ...assertStorageKey(key).split('/')];
  const path = `/object/${segments.map(encodeURIComponent).join('/')}`;
  const url = new URL(`${storageUrl}${path}`);
  if (!url.pathname.endsWith(path) || url.search !== '' || url.hash !== '') {
    throw new HdError(
      'PATH_OUTSIDE_TENANT',
      `storage path ${JSON.stringify(key)} refused: its URL would not keep the path`,
    );
  }
  return url.toString();
}

/** The headers Supabase's gateway and Storage read the service-role key from. */
export function authHeaders(serviceRoleKey: string): Record<string, string> {
  return { authorization: `Bearer ${serviceRoleKey}`, apikey: serviceRoleKey };
}

/**
 * Reads an error answer: Storage's JSON body (`{statusCode, code, error, message}`), or
 * plain text as its resumable endpoint and gateways send.
 */
export async function readFailure(response: Response, what: string): Promise<StorageFailure> {
  const text = await response.text().catch(() => '');
  let body: StorageFailure = { message: text.slice(0, 500) };
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed && typeof parsed === 'object') body = parsed as StorageFailure;
  } catch {
    // plain text: kept as the message
  }
  return { ...body, status: response.status, message: `${what}: ${body.message ?? text}` };
}

/** A request that got no answer at all (refused, reset, DNS), shaped as a failure. */
export function noAnswer(what: string, cause: unknown): StorageFailure {
  return { message: `${what}: ${(cause as Error)?.message ?? String(cause)}` };
}
