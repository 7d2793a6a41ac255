import { lookup } from 'node:dns/promises';
import http from 'node:http';
import https from 'node:https';
import { BlockList, isIP } from 'node:net';

// Webhook URLs are the tenants': without a guard, one pointing at 127.0.0.1, the cloud's
// metadata address (169.254.169.254) or a private network would make the scheduler probe
// them. Every hop is checked on the address it will connect to, after DNS resolution (the
// connection is pinned to that address, so a second answer cannot differ: no rebinding).

const REFUSED_V4: [string, number][] = [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10], // carrier-grade NAT
  ['127.0.0.0', 8],
  ['169.254.0.0', 16], // link-local, cloud metadata
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 3], // multicast and reserved
];
const REFUSED_V6: [string, number][] = [
  ['::', 127], // unspecified and loopback
  ['fc00::', 7], // unique local (fd00:ec2::254 is a metadata address)
  ['fe80::', 10],
  ['ff00::', 8],
];

const refused = new BlockList();
for (const [net, bits] of REFUSED_V4) refused.addSubnet(net, bits, 'ipv4');
for (const [net, bits] of REFUSED_V6) refused.addSubnet(net, bits, 'ipv6');

/** An operator's allowed ranges (HD_WEBHOOK_ALLOW_CIDRS), e.g. `10.1.0.0/16,127.0.0.2/32`. */
export function parseAllowedRanges(text: string | undefined): BlockList {
  const allowed = new BlockList();
  for (const part of (text ?? '')
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)) {
    const [net, bits] = part.split('/');
    const family = isIP(net ?? '');
    const prefix = Number(bits);
    if (!family || !Number.isInteger(prefix) || prefix < 0 || prefix > (family === 4 ? 32 : 128))
      throw new Error(`webhook allowed range ${JSON.stringify(part)} is not an address/prefix`);
    allowed.addSubnet(net!, prefix, family === 4 ? 'ipv4' : 'ipv6');
  }
  return allowed;
}

export class WebhookRefused extends Error {
  override readonly name = 'WebhookRefused';
}

/** The address to connect to for `hostname`, or WebhookRefused when it is not public. */
export async function publicAddress(hostname: string, allowed: BlockList) {
  const bare = hostname.replace(/^\[|\]$/g, '');
  const answers = isIP(bare)
    ? [{ address: bare, family: isIP(bare) }]
    : await lookup(bare, { all: true }).catch(() => {
        throw new WebhookRefused(`webhook host ${hostname} does not resolve`);
      });
  // Every answer must pass: a client may pick any of them.
  for (const { address, family } of answers) {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1];
    const [ip, type] = mapped
      ? [mapped, 'ipv4' as const]
      : [address, family === 6 ? ('ipv6' as const) : ('ipv4' as const)];
    if (refused.check(ip, type) && !allowed.check(ip, type))
      throw new WebhookRefused(
        `webhook host ${hostname} resolves to ${address}, a loopback, private, link-local or metadata address (allow it with HD_WEBHOOK_ALLOW_CIDRS)`,
      );
  }
  return answers[0]!;
}

export interface PostResult {
  statusCode?: number;
  error?: string;
  /** Why no answer came: the guard refused the address, the time ran out, the network failed. */
  failure?: 'refused' | 'timeout' | 'network';
  latencyMs: number;
}

export interface PostOptions {
  allowed: BlockList;
  timeoutMs: number;
  /** Response bytes read at most (the rest is not waited for). */
  maxResponseBytes?: number;
  maxRedirects?: number;
}

/** POSTs `body` to `url`, following redirects (each hop guarded); never throws. */
export async function postWebhook(
  url: string,
  headers: Record<string, string>,
  body: string,
  options: PostOptions,
): Promise<PostResult> {
  const started = performance.now();
  const deadline = AbortSignal.timeout(options.timeoutMs);
  let target = new URL(url);
  try {
    for (let hop = 0; ; hop++) {
      const statusCode = await postOnce(target, headers, body, options, deadline);
      if (typeof statusCode === 'number')
        return { statusCode, latencyMs: Math.round(performance.now() - started) };
      if (hop >= (options.maxRedirects ?? 3)) throw new WebhookRefused('too many redirects');
      target = new URL(statusCode.location, target);
    }
  } catch (error) {
    const message = deadline.aborted
      ? `no answer within ${options.timeoutMs} ms`
      : (error as Error).message;
    const failure = deadline.aborted
      ? 'timeout'
      : error instanceof WebhookRefused
        ? 'refused'
        : 'network';
    return { error: message, failure, latencyMs: Math.round(performance.now() - started) };
  }
}

async function postOnce(
  target: URL,
  headers: Record<string, string>,
  body: string,
  options: PostOptions,
  signal: AbortSignal,
): Promise<number | { location: string }> {
  if (target.protocol !== 'http:' && target.protocol !== 'https:')
    throw new WebhookRefused(`webhook URL scheme ${target.protocol} is not http or https`);
  const { address, family } = await publicAddress(target.hostname, options.allowed);
  const client = target.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const request = client.request(
      target,
      {
        method: 'POST',
        headers: { ...headers, 'content-length': Buffer.byteLength(body).toString() },
        signal,
        // Connect to the address checked above, whatever DNS answers now.
        lookup: (_host, opts, callback) => {
          if ((opts as { all?: boolean }).all) callback(null, [{ address, family }]);
          else callback(null, address, family);
        },
      },
      (response) => {
        const status = response.statusCode ?? 0;
        const location = response.headers.location;
        let read = 0;
        response.on('data', (chunk: Buffer) => {
          read += chunk.length;
          if (read > (options.maxResponseBytes ?? 65536)) response.destroy();
        });
        response.on('close', () =>
          resolve(status >= 300 && status < 400 && location ? { location } : status),
        );
        response.on('error', () => {}); // a destroyed, oversized answer still has its status
      },
    );
    request.on('error', reject);
    request.end(body);
  });
}
