import type { IncomingMessage } from 'node:http';
import { AddressGuard, requestPublic, UrlRefused } from './public-http.ts';

/** The guard of webhook deliveries, with the ranges an operator allows (HD_WEBHOOK_ALLOW_CIDRS). */
export function webhookGuard(allowedRanges: string | undefined): AddressGuard {
  return new AddressGuard(allowedRanges, 'webhook', 'HD_WEBHOOK_ALLOW_CIDRS');
}

export interface PostResult {
  statusCode?: number;
  error?: string;
  /** Why no answer came: the guard refused the address, the time ran out, the network failed. */
  failure?: 'refused' | 'timeout' | 'network';
  latencyMs: number;
}

export interface PostOptions {
  guard: AddressGuard;
  timeoutMs: number;
  /** Response bytes read at most (the rest is not waited for). */
  maxResponseBytes?: number;
  maxRedirects?: number;
}

/** POSTs `body` to `url`, following redirects (each hop guarded: public-http.ts); never throws. */
export async function postWebhook(
  url: string,
  headers: Record<string, string>,
  body: string,
  options: PostOptions,
): Promise<PostResult> {
  const started = performance.now();
  const signal = AbortSignal.timeout(options.timeoutMs);
  const latencyMs = () => Math.round(performance.now() - started);
  try {
    const { response } = await requestPublic(
      url,
      { method: 'POST', headers, body },
      { guard: options.guard, signal, maxRedirects: options.maxRedirects ?? 3 },
    );
    await drain(response, options.maxResponseBytes ?? 65536);
    return { statusCode: response.statusCode ?? 0, latencyMs: latencyMs() };
  } catch (error) {
    const message = signal.aborted
      ? `no answer within ${options.timeoutMs} ms`
      : (error as Error).message;
    const failure = signal.aborted
      ? 'timeout'
      : error instanceof UrlRefused
        ? 'refused'
        : 'network';
    return { error: message, failure, latencyMs: latencyMs() };
  }
}

/** Reads the answer to its end, or up to `maxBytes` (then drops the connection). */
function drain(response: IncomingMessage, maxBytes: number): Promise<void> {
  return new Promise((resolve) => {
    let read = 0;
    response.on('data', (chunk: Buffer) => {
      read += chunk.length;
      if (read > maxBytes) response.destroy();
    });
    response.on('close', resolve);
    response.on('error', () => {}); // a destroyed, oversized answer still has its status
  });
}
