import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { textPdf } from '../fixtures/documents.ts';
import { jsonl } from './runtime.ts';

/**
 * A real local HTTP server standing in for the internet a job's URL points at: the
 * tenant's own server, honest or hostile. Tests allow its address (127.0.0.2) with
 * HD_URL_INPUT_ALLOW_CIDRS; 127.0.0.1 stays refused, so `victim()` there stands for what
 * an attacker wants reached (a metadata service, an admin port) and counts what reaches it.
 */
export const SERVER_HOST = '127.0.0.2';
export const ASSETS = [
  { title: 'From a URL', source_type: 'web', source_ref: 'url-1' },
  { title: 'Second line', source_type: 'web', source_ref: 'url-2' },
];
export const ASSETS_JSONL = jsonl(ASSETS);
export const SIZE_LIMIT = 4096;
export const REPORT_TEXT = 'Quarterly report fetched from a URL';
const REPORT_PDF = textPdf([REPORT_TEXT]);

export interface UrlServer {
  /** `http://127.0.0.2:port` */
  origin: string;
  port: number;
  /** Paths requested, in order (query included). */
  requests: string[];
  close(): void;
}

async function listen(server: http.Server, host: string, port = 0): Promise<number> {
  server.listen(port, host);
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

/** Routes for every case the tests name; `victimPort`: where /to-loopback points. */
export async function startUrlServer(
  victimPort: number,
  options: { slowMs?: number } = {},
): Promise<UrlServer> {
  const requests: string[] = [];
  const server = http.createServer((req, res) => {
    requests.push(req.url ?? '');
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    switch (path) {
      case '/assets.jsonl': // JSONL, labelled as a PDF: the content decides, not the label
        return res.writeHead(200, { 'content-type': 'application/pdf' }).end(ASSETS_JSONL);
      case '/hop':
        return res.writeHead(302, { location: '/assets.jsonl' }).end();
      case '/missing':
        return res.writeHead(404).end('not here');
      case '/forbidden':
        return res.writeHead(403).end('no');
      case '/busy':
        return res.writeHead(503).end('try later');
      case '/to-loopback':
        return res.writeHead(302, { location: `http://127.0.0.1:${victimPort}/secret` }).end();
      case '/to-metadata':
        return res
          .writeHead(307, { location: 'http://169.254.169.254/latest/meta-data/iam/' })
          .end();
      case '/to-mapped-metadata':
        return res.writeHead(301, { location: 'http://[::ffff:169.254.169.254]/' }).end();
      case '/loop':
        return res.writeHead(302, { location: '/loop' }).end();
      case '/huge': {
        // No Content-Length: the limit must hold while reading.
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        const line = Buffer.from(ASSETS_JSONL);
        for (let sent = 0; sent <= SIZE_LIMIT; sent += line.length) res.write(line);
        return res.end();
      }
      case '/huge-declared':
        res.writeHead(200, { 'content-length': String(10 * 1024 * 1024) });
        return res.write(ASSETS_JSONL); // and never the rest
      case '/trickle': {
        // A byte at a time, forever: only the time limit ends it.
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        const timer = setInterval(() => res.write(' '), 50);
        res.on('close', () => clearInterval(timer));
        return;
      }
      case '/slow': {
        // Half now, the rest after `slowMs`: a download that outlasts a short lease.
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        const half = Math.floor(ASSETS_JSONL.length / 2);
        res.write(ASSETS_JSONL.slice(0, half));
        const timer = setTimeout(() => res.end(ASSETS_JSONL.slice(half)), options.slowMs ?? 0);
        res.on('close', () => clearTimeout(timer));
        return;
      }
      case '/reset':
        res.writeHead(200, { 'content-length': '1000' });
        res.write(ASSETS_JSONL.slice(0, 20));
        return void setImmediate(() => res.socket?.destroy());
      case '/report.pdf': // a PDF labelled as HTML: extract_text reads it as the PDF it is
        return res.writeHead(200, { 'content-type': 'text/html' }).end(REPORT_PDF);
      case '/archive.zip':
        return res
          .writeHead(200, { 'content-type': 'application/pdf' })
          .end(Buffer.from('PK\x03\x04 not a document', 'latin1'));
      case '/pdf-as-jsonl': // a PDF, labelled as JSONL
        return res
          .writeHead(200, { 'content-type': 'application/x-ndjson' })
          .end(textPdf(['not JSON lines']));
      case '/login-page':
        return res
          .writeHead(200, { 'content-type': 'application/x-ndjson' })
          .end('<!doctype html><html><body>Please sign in</body></html>');
      default:
        return res.writeHead(500).end();
    }
  });
  const port = await listen(server, SERVER_HOST);
  return {
    origin: `http://${SERVER_HOST}:${port}`,
    port,
    requests,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

/** A server on 127.0.0.1 (refused by the guard) that records what reaches it. */
export async function startVictim(port = 0): Promise<UrlServer> {
  const requests: string[] = [];
  const server = http.createServer((req, res) => {
    requests.push(req.url ?? '');
    res.writeHead(200).end(ASSETS_JSONL);
  });
  const bound = await listen(server, '127.0.0.1', port);
  return {
    origin: `http://127.0.0.1:${bound}`,
    port: bound,
    requests,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}
