import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HdError } from '../contract/errors.ts';
import { loadConfig } from '../control-plane/config.ts';
import { AddressGuard, parseRanges, UrlRefused } from '../scheduler/public-http.ts';
import { fetchToFile, type UrlFetchLimits } from '../scheduler/url-fetch.ts';
import { tempDir } from './helpers/runtime.ts';
import {
  ASSETS_JSONL,
  SERVER_HOST,
  SIZE_LIMIT,
  startUrlServer,
  startVictim,
  type UrlServer,
} from './helpers/url-server.ts';

// The address guard (scheduler/public-http.ts, shared by webhooks and inputs by URL) and
// the download of an input by URL, against real local HTTP servers: the tenant's server on
// 127.0.0.2 (allowed for the test only) and a victim on 127.0.0.1 that must see nothing.
let server: UrlServer;
let victim: UrlServer;
let work: string;
const guard = new AddressGuard(`${SERVER_HOST}/32`, 'URL input', 'HD_URL_INPUT_ALLOW_CIDRS');
const limits: UrlFetchLimits = { guard, maxBytes: SIZE_LIMIT, timeoutMs: 1500, maxRedirects: 5 };

beforeAll(async () => {
  victim = await startVictim();
  server = await startUrlServer(victim.port);
  work = await tempDir('hd-test-url-');
});
afterAll(() => {
  server.close();
  victim.close();
});

async function failure(url: string, file = join(work, 'f'), l = limits): Promise<HdError> {
  const error = await fetchToFile(url, file, l).then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof HdError)) throw new Error(`expected an HdError, got ${String(error)}`);
  return error;
}

describe('the address guard', () => {
  const none = new AddressGuard(undefined, 'URL input', 'HD_URL_INPUT_ALLOW_CIDRS');

  it('refuses loopback, private, link-local, CGNAT, multicast, unspecified and metadata addresses, IPv4 and IPv6', async () => {
    for (const host of [
      '127.0.0.1',
      '127.1.2.3',
      '10.1.2.3',
      '172.16.0.1',
      '192.168.1.1',
      '169.254.169.254',
      '100.64.0.1',
      '0.0.0.0',
      '224.0.0.1',
      '255.255.255.255',
      '[::]',
      '[::1]',
      '[fd00:ec2::254]',
      '[fe80::1]',
      '[ff02::1]',
      '[::ffff:127.0.0.1]',
      '[::ffff:a9fe:a9fe]', // 169.254.169.254, IPv4-mapped in hex
      new URL('http://[::ffff:10.0.0.1]/').hostname, // as the URL parser writes it
    ])
      await expect(none.resolve(host), host).rejects.toThrow(
        /resolves to .*, a loopback, private, link-local, multicast or metadata address \(allow it with HD_URL_INPUT_ALLOW_CIDRS\)/,
      );
    for (const host of ['93.184.215.14', '[2606:2800:21f:cb07:6820:80da:af6b:8b2c]'])
      await expect(none.resolve(host), host).resolves.toMatchObject({
        address: expect.any(String),
      });
  });

  it('checks the address a name resolves to, not the name', async () => {
    await expect(none.resolve('localhost')).rejects.toThrow(
      /URL input host localhost resolves to (127\.0\.0\.1|::1), a loopback/,
    );
    // Every answer counts: one private address among public ones refuses the name.
    const mixed = new AddressGuard(undefined, 'URL input', 'X', async () => [
      { address: '93.184.215.14', family: 4 },
      { address: '10.0.0.5', family: 4 },
    ]);
    await expect(mixed.resolve('public.example')).rejects.toThrow(
      'URL input host public.example resolves to 10.0.0.5',
    );
  });

  it('lets an operator allow a range, and only that range', async () => {
    const allowed = new AddressGuard('10.1.0.0/16, fd00::/8', 'URL input', 'X');
    await expect(allowed.resolve('10.1.2.3')).resolves.toMatchObject({ address: '10.1.2.3' });
    await expect(allowed.resolve('[fd00::7]')).resolves.toMatchObject({ family: 6 });
    await expect(allowed.resolve('10.2.0.1')).rejects.toBeInstanceOf(UrlRefused);
    await expect(allowed.resolve('127.0.0.1')).rejects.toBeInstanceOf(UrlRefused);
    expect(() => parseRanges('10.0.0.0')).toThrow('"10.0.0.0" is not an address/prefix');
    expect(() => parseRanges('10.0.0.0/33')).toThrow('"10.0.0.0/33" is not an address/prefix');
    expect(() => loadConfig({ HD_URL_INPUT_ALLOW_CIDRS: '10.0.0.0/8,example.com/8' })).toThrow(
      /HD_URL_INPUT_ALLOW_CIDRS.*"example.com\/8" is not an address\/prefix/,
    );
    expect(loadConfig({ HD_URL_INPUT_ALLOW_CIDRS: '127.0.0.2/32' })).toMatchObject({
      HD_URL_INPUT_ALLOW_CIDRS: '127.0.0.2/32',
    });
  });
});

describe('fetching an input by URL', () => {
  it('refuses the loopback test server unless its address is allowed', async () => {
    const seen = server.requests.length;
    const refused = await failure(`${server.origin}/assets.jsonl`, join(work, 'x'), {
      ...limits,
      guard: new AddressGuard(undefined, 'URL input', 'HD_URL_INPUT_ALLOW_CIDRS'),
    });
    expect(refused).toMatchObject({ code: 'INVALID_INPUT', retryable: false });
    expect(refused.message).toContain(
      `resolves to ${SERVER_HOST}, a loopback, private, link-local, multicast or metadata address (allow it with HD_URL_INPUT_ALLOW_CIDRS)`,
    );
    expect(server.requests.length).toBe(seen);
  });

  it('downloads through a redirect, hashing what it stored', async () => {
    const file = join(work, 'ok.jsonl');
    const fetched = await fetchToFile(`${server.origin}/hop?token=secret`, file, limits);
    expect(await readFile(file, 'utf8')).toBe(ASSETS_JSONL);
    expect(fetched).toEqual({
      bytes: Buffer.byteLength(ASSETS_JSONL),
      sha256: createHash('sha256').update(ASSETS_JSONL).digest('hex'),
      declaredType: 'application/pdf',
      finalUrl: `${server.origin}/assets.jsonl`,
      redirects: 1,
    });
  });

  it('refuses redirects to 127.0.0.1 and to the metadata address; the victim sees nothing', async () => {
    for (const path of ['/to-loopback', '/to-metadata', '/to-mapped-metadata']) {
      const error = await failure(`${server.origin}${path}`);
      expect(error, path).toMatchObject({ code: 'INVALID_INPUT', retryable: false });
      expect(error.message, path).toMatch(
        /refused: URL input host (127\.0\.0\.1|169\.254\.169\.254|\[::ffff:a9fe:a9fe\]) resolves to/,
      );
    }
    expect(victim.requests).toEqual([]);
  });

  it('refuses 127.0.0.1 however the URL spells it', async () => {
    for (const host of ['2130706433', '0x7f.1', '0177.0.0.1', '[::ffff:127.0.0.1]', 'localhost']) {
      const error = await failure(`http://${host}:${victim.port}/secret`);
      expect(error, host).toMatchObject({ code: 'INVALID_INPUT' });
      expect(error.message, host).toMatch(
        /resolves to (127\.0\.0\.1|::ffff:7f00:1|::1), a loopback/,
      );
    }
    expect(victim.requests).toEqual([]);
  });

  it('connects to the address it checked, not to a second DNS answer (no rebinding)', async () => {
    // A resolver standing in for a hostile DNS server (none can run here): the first
    // answer is the allowed test server, every later one the victim on 127.0.0.1, on the
    // same port. A client that resolved again when connecting would reach the victim.
    const twin = await startVictim(server.port).catch(() => undefined);
    if (!twin) throw new Error(`port ${server.port} on 127.0.0.1 is taken; rerun`);
    try {
      let answers = 0;
      const rebinding = new AddressGuard(`${SERVER_HOST}/32`, 'URL input', 'X', async () =>
        answers++ === 0
          ? [{ address: SERVER_HOST, family: 4 }]
          : [{ address: '127.0.0.1', family: 4 }],
      );
      const seen = server.requests.length;
      const file = join(work, 'rebind');
      await fetchToFile(`http://localhost:${server.port}/assets.jsonl`, file, {
        ...limits,
        guard: rebinding,
      });
      expect(server.requests.slice(seen)).toEqual(['/assets.jsonl']);
      expect(twin.requests).toEqual([]);
    } finally {
      twin.close();
    }
  });

  it('gives each hostile answer its code, and leaves no partial file', async () => {
    const cases: [string, string, boolean, RegExp][] = [
      ['/missing', 'FILE_NOT_FOUND', false, /the server answered 404 \(not found\)/],
      ['/forbidden', 'INVALID_INPUT', false, /the server answered 403, not 200/],
      ['/busy', 'DOWNLOAD_FAILED', true, /the server answered 503/],
      ['/loop', 'INVALID_INPUT', false, /refused: URL input URL redirects more than 5 times/],
      [
        '/huge',
        'INVALID_INPUT',
        false,
        /larger than the limit of 4096 bytes \(HD_URL_INPUT_MAX_BYTES\)/,
      ],
      ['/huge-declared', 'INVALID_INPUT', false, /larger than the limit of 4096 bytes/],
      [
        '/trickle',
        'DOWNLOAD_FAILED',
        true,
        /no complete answer within 1500 ms \(HD_URL_INPUT_TIMEOUT_MS\)/,
      ],
      ['/reset', 'DOWNLOAD_FAILED', true, /the download broke off/],
    ];
    for (const [path, code, retryable, message] of cases) {
      const dir = await tempDir('hd-test-url-case-');
      const error = await failure(`${server.origin}${path}?token=secret`, join(dir, 'download'));
      expect(error, path).toMatchObject({ code, retryable });
      expect(error.message, path).toMatch(message);
      // The URL's query may carry the tenant's token: it is named without it.
      expect(error.message, path).toContain(`${server.origin}${path}:`);
      expect(error.message, path).not.toContain('secret');
      expect(await readdir(dir), path).toEqual([]);
    }
    // The first request and 5 redirects followed, then refused.
    expect(server.requests.filter((p) => p.startsWith('/loop'))).toHaveLength(6);
  });

  it('refuses schemes other than http(s)', async () => {
    const error = await failure('file:///etc/passwd');
    expect(error).toMatchObject({ code: 'INVALID_INPUT' });
    expect(error.message).toContain('URL input URL scheme file: is not http or https');
  });
});
