import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { HdError } from '../contract/errors.ts';
import { hashingStream } from '../control-plane/storage/hash.ts';
import { urlForLog } from '../contract/jobs.ts';
import { AddressGuard, requestPublic, UrlRefused } from './public-http.ts';

export interface UrlFetchLimits {
  guard: AddressGuard;
  /** Bytes at most; a larger answer is refused, nothing of it kept. */
  maxBytes: number;
  /** The whole download, redirects and body included (a server that trickles ends here). */
  timeoutMs: number;
  maxRedirects: number;
}

export interface FetchedFile {
  bytes: number;
  sha256: string;
  /** The server's Content-Type: kept for the record, never trusted (the content is sniffed). */
  declaredType: string | null;
  /** Where the content came from after redirects (origin and path only). */
  finalUrl: string;
  redirects: number;
}

/**
 * Downloads `url` into `file` through the address guard (public-http.ts), within the
 * limits. Throws HdError: INVALID_INPUT for what the guard refuses, too many redirects, an
 * answer over the size limit, other 4xx; FILE_NOT_FOUND for 404/410; DOWNLOAD_FAILED
 * (retryable) for a timeout, 408/429/5xx, a dropped connection. On any error `file` is
 * removed: nothing partial is left.
 */
export async function fetchToFile(
  url: string,
  file: string,
  limits: UrlFetchLimits,
  signal?: AbortSignal,
): Promise<FetchedFile> {
  const deadline = AbortSignal.timeout(limits.timeoutMs);
  const both = signal ? AbortSignal.any([deadline, signal]) : deadline;
  const shown = urlForLog(url);
  try {
    const {
      response,
      url: final,
      redirects,
    } = await requestPublic(
      url,
      {
        method: 'GET',
        headers: { accept: '*/*', 'accept-encoding': 'identity', 'user-agent': 'hd-runner' },
      },
      { guard: limits.guard, signal: both, maxRedirects: limits.maxRedirects },
    );
    const status = response.statusCode ?? 0;
    if (status !== 200 && status !== 203) {
      response.destroy();
      throw statusError(shown, status);
    }
    const declared = Number(response.headers['content-length']);
    if (Number.isFinite(declared) && declared > limits.maxBytes) {
      response.destroy();
      throw tooLarge(shown, limits.maxBytes);
    }
    const counted = hashingStream({
      maxBytes: limits.maxBytes,
      tooLarge: () => tooLarge(shown, limits.maxBytes),
    });
    await pipeline(response, counted, createWriteStream(file), { signal: both });
    return {
      bytes: counted.bytes(),
      sha256: counted.sha256(),
      declaredType: response.headers['content-type'] ?? null,
      finalUrl: urlForLog(final),
      redirects,
    };
  } catch (error) {
    await rm(file, { force: true });
    if (signal?.aborted) throw signal.reason;
    if (deadline.aborted)
      throw new HdError(
        'DOWNLOAD_FAILED',
        `${shown}: no complete answer within ${limits.timeoutMs} ms (HD_URL_INPUT_TIMEOUT_MS)`,
        { details: { url: shown, limit_ms: limits.timeoutMs } },
      );
    if (error instanceof HdError) throw error;
    if (error instanceof UrlRefused)
      throw new HdError('INVALID_INPUT', `${shown}: refused: ${error.message}`, {
        details: { url: shown, refused: error.message },
      });
    throw new HdError(
      'DOWNLOAD_FAILED',
      `${shown}: the download broke off: ${(error as Error).message}`,
      { cause: error, details: { url: shown } },
    );
  }
}

function tooLarge(shown: string, maxBytes: number): HdError {
  return new HdError(
    'INVALID_INPUT',
    `${shown}: larger than the limit of ${maxBytes} bytes (HD_URL_INPUT_MAX_BYTES)`,
    { details: { url: shown, limit_bytes: maxBytes } },
  );
}

function statusError(shown: string, status: number): HdError {
  const details = { url: shown, status_code: status };
  if (status === 404 || status === 410)
    return new HdError('FILE_NOT_FOUND', `${shown}: the server answered ${status} (not found)`, {
      details,
    });
  // The server may answer later: a timeout of its own, too many requests, its own fault.
  if (status === 408 || status === 429 || status >= 500)
    return new HdError('DOWNLOAD_FAILED', `${shown}: the server answered ${status}`, { details });
  return new HdError(
    'INVALID_INPUT',
    `${shown}: the server answered ${status}, not 200 with the file`,
    { details },
  );
}
