import http from 'node:http';
import https from 'node:https';

/** An endpoint the gateway forwards to, with the key that stays in the scheduler. */
export interface Upstream {
  /** OpenAI-compatible base URL (…/v1). */
  baseURL: string;
  apiKey: string | undefined;
}

// Response headers a client may act on (rate-limit hints, request ids); the rest stay here.
const PASSED_HEADERS = /^(content-type|retry-after|retry-after-ms|x-ratelimit-.*|x-request-id)$/i;
const agents = {
  http: new http.Agent({ keepAlive: true, maxSockets: Infinity }),
  https: new https.Agent({ keepAlive: true, maxSockets: Infinity }),
};

export interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

interface Endpoint {
  secure: boolean;
  /** What http.request takes for the URL, parsed once per base URL, not per request. */
  target: Pick<http.RequestOptions, 'protocol' | 'hostname' | 'port' | 'path' | 'auth'>;
}
const endpoints = new Map<string, Endpoint>();

function endpointOf(baseURL: string, kind: 'chat' | 'audio'): Endpoint {
  const key = `${kind} ${baseURL}`;
  let endpoint = endpoints.get(key);
  if (!endpoint) {
    const path = kind === 'chat' ? 'chat/completions' : 'audio/transcriptions';
    const url = new URL(`${baseURL.replace(/\/$/, '')}/${path}`);
    endpoint = {
      secure: url.protocol === 'https:',
      target: {
        protocol: url.protocol,
        // [::1] as http.request wants it: without the brackets.
        hostname: url.hostname.replace(/^\[|\]$/g, ''),
        port: url.port || undefined,
        path: `${url.pathname}${url.search}`,
        // user:password in the base URL, as http.request would take it from a URL.
        auth: url.username
          ? `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`
          : undefined,
      },
    };
    endpoints.set(key, endpoint);
  }
  return endpoint;
}

/** Sends the runner's body to the provider with the scheduler's key; reads the whole answer. */
export function forward(
  upstream: Upstream,
  kind: 'chat' | 'audio',
  req: http.IncomingMessage,
  body: Buffer,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<Answer> {
  const { secure, target } = endpointOf(upstream.baseURL, kind);
  return new Promise((resolve, reject) => {
    const outgoing = (secure ? https : http).request(
      {
        ...target,
        method: 'POST',
        agent: secure ? agents.https : agents.http,
        headers: {
          'content-type': req.headers['content-type'] ?? 'application/json',
          'content-length': body.length,
          accept: 'application/json',
          ...(upstream.apiKey && { authorization: `Bearer ${upstream.apiKey}` }),
        },
        timeout: timeoutMs,
        signal,
      },
      (incoming) => {
        const parts: Buffer[] = [];
        incoming.on('data', (part: Buffer) => parts.push(part));
        incoming.on('error', reject);
        incoming.on('end', () =>
          resolve({
            status: incoming.statusCode ?? 502,
            headers: incoming.headers,
            body: Buffer.concat(parts),
          }),
        );
      },
    );
    outgoing.on('timeout', () => outgoing.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    outgoing.on('error', reject);
    outgoing.end(body);
  });
}

export function passedHeaders(headers: http.IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers))
    if (PASSED_HEADERS.test(name) && typeof value === 'string') out[name] = value;
  return out;
}
