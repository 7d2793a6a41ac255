import { lookup as dnsLookup } from 'node:dns/promises';
import http from 'node:http';
import https from 'node:https';
import { BlockList, isIP } from 'node:net';

// URLs that tenants name (webhook endpoints, inputs by URL) are fetched from the scheduler's
// host: without a guard, one pointing at 127.0.0.1, the cloud's metadata address
// (169.254.169.254) or a private network would make the scheduler probe them. Every hop is
// checked on the address it will connect to, after DNS resolution, and the connection is
// pinned to that address, so a second DNS answer cannot differ (no rebinding).

const REFUSED_V4: [string, number][] = [
  ['0.0.0.0', 8], // "this network", unspecified
  ['10.0.0.0', 8],
  ['100.64.0.0', 10], // carrier-grade NAT
  ['127.0.0.0', 8],
  ['169.254.0.0', 16], // link-local, cloud metadata
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['224.0.0.0', 3], // multicast, reserved, broadcast
];
const REFUSED_V6: [string, number][] = [
  ['::', 127], // unspecified and loopback
  ['fc00::', 7], // unique local (fd00:ec2::254 is a metadata address)
  ['fe80::', 10], // link-local
  ['ff00::', 8], // multicast
];
// BlockList checks an IPv4-mapped IPv6 address (::ffff:127.0.0.1, ::ffff:7f00:1) against
// the IPv4 rules too, so the mapped form of a refused address is refused.
const refused = new BlockList();
for (const [net, bits] of REFUSED_V4) refused.addSubnet(net, bits, 'ipv4');
for (const [net, bits] of REFUSED_V6) refused.addSubnet(net, bits, 'ipv6');

/** Why a URL was not fetched: the guard's refusal, not the server's answer. */
export class UrlRefused extends Error {
  override readonly name = 'UrlRefused';
}

export interface ResolvedAddress {
  address: string;
  family: number;
}
/** DNS lookup of every address of a name (dns.promises.lookup with `all`). */
export type LookupAll = (hostname: string) => Promise<ResolvedAddress[]>;

/** `10.1.0.0/16,127.0.0.2/32` as address/prefix pairs; throws naming a bad part. */
export function parseRanges(text: string | undefined): [string, number, 'ipv4' | 'ipv6'][] {
  return (text ?? '')
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)
    .map((part) => {
      const [net, bits, extra] = part.split('/');
      const family = isIP(net ?? '');
      const prefix = Number(bits);
      if (
        !family ||
        extra !== undefined ||
        !/^\d{1,3}$/.test(bits ?? '') ||
        prefix > (family === 4 ? 32 : 128)
      )
        throw new Error(`${JSON.stringify(part)} is not an address/prefix`);
      return [net!, prefix, family === 4 ? 'ipv4' : 'ipv6'];
    });
}

/**
 * Decides which addresses a URL may reach: public ones, and those in the ranges an
 * operator allows. `label` and `setting` name the use in refusals ("webhook",
 * HD_WEBHOOK_ALLOW_CIDRS).
 */
export class AddressGuard {
  readonly #allowed = new BlockList();
  readonly #lookup: LookupAll;
  readonly label: string;
  readonly setting: string;

  constructor(
    allowedRanges: string | undefined,
    label: string,
    setting: string,
    lookup: LookupAll = (host) => dnsLookup(host, { all: true }),
  ) {
    for (const [net, bits, family] of parseRanges(allowedRanges))
      this.#allowed.addSubnet(net, bits, family);
    this.label = label;
    this.setting = setting;
    this.#lookup = lookup;
  }

  /** The address to connect to for `hostname`; UrlRefused when it is not public. */
  async resolve(hostname: string): Promise<ResolvedAddress> {
    const bare = hostname.replace(/^\[|\]$/g, '');
    const answers = isIP(bare)
      ? [{ address: bare, family: isIP(bare) }]
      : await this.#lookup(bare).catch(() => {
          throw new UrlRefused(`${this.label} host ${hostname} does not resolve`);
        });
    if (answers.length === 0)
      throw new UrlRefused(`${this.label} host ${hostname} does not resolve`);
    // Every answer must pass: a client may pick any of them.
    for (const { address, family } of answers) {
      const type = family === 6 ? 'ipv6' : 'ipv4';
      if (refused.check(address, type) && !this.#allowed.check(address, type))
        throw new UrlRefused(
          `${this.label} host ${hostname} resolves to ${address}, a loopback, private, link-local, multicast or metadata address (allow it with ${this.setting})`,
        );
    }
    return answers[0]!;
  }
}

export interface PublicRequest {
  method: 'GET' | 'POST';
  headers: Record<string, string>;
  body?: string;
}

export interface PublicRequestOptions {
  guard: AddressGuard;
  /** Ends the whole exchange, redirects and the body included. */
  signal: AbortSignal;
  maxRedirects: number;
}

/** The final answer: its response (body not yet read), where it came from, hops taken. */
export interface PublicResponse {
  response: http.IncomingMessage;
  url: URL;
  redirects: number;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/**
 * Sends the request, following redirects (each hop guarded, resolved and pinned, the same
 * request again) up to `maxRedirects`; resolves with the first answer that is not a
 * redirect. Throws UrlRefused for what the guard refuses, the network's error otherwise.
 */
export async function requestPublic(
  url: string | URL,
  request: PublicRequest,
  options: PublicRequestOptions,
): Promise<PublicResponse> {
  let target = new URL(url);
  for (let hop = 0; ; hop++) {
    const response = await requestOnce(target, request, options);
    const location = response.headers.location;
    if (!REDIRECTS.has(response.statusCode ?? 0) || !location)
      return { response, url: target, redirects: hop };
    response.destroy(); // a redirect's body is not wanted
    if (hop >= options.maxRedirects)
      throw new UrlRefused(
        `${options.guard.label} URL redirects more than ${options.maxRedirects} times`,
      );
    target = new URL(location, target);
  }
}

async function requestOnce(
  target: URL,
  request: PublicRequest,
  { guard, signal }: PublicRequestOptions,
): Promise<http.IncomingMessage> {
  if (target.protocol !== 'http:' && target.protocol !== 'https:')
    throw new UrlRefused(`${guard.label} URL scheme ${target.protocol} is not http or https`);
  signal.throwIfAborted();
  const { address, family } = await guard.resolve(target.hostname);
  const client = target.protocol === 'https:' ? https : http;
  const headers =
    request.body === undefined
      ? request.headers
      : { ...request.headers, 'content-length': Buffer.byteLength(request.body).toString() };
  return new Promise((resolve, reject) => {
    const outgoing = client.request(
      target,
      {
        method: request.method,
        headers,
        signal,
        // Connect to the address checked above, whatever DNS answers now.
        lookup: (_host, opts, callback) => {
          if ((opts as { all?: boolean }).all) callback(null, [{ address, family }]);
          else callback(null, address, family);
        },
      },
      resolve,
    );
    outgoing.on('error', reject);
    outgoing.end(request.body);
  });
}
