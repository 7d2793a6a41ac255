// The attacker of test/llm-gateway-admission.test.ts: code that took over a runner (an
// exploit in a parser, say), run INSIDE that runner's container (`node
// --input-type=module-typescript -e <this file>`) with what the container holds: the
// gateway's URL and its job's credential (HD_LLM_BASE_URL, HD_LLM_API_KEY). It tries to
// make the scheduler buffer large bodies: without a credential, with made-up ones, and
// with its own, many at once. Each answer is printed as one JSON line
// {phase, status | error}, as this side received it; then {done: true}.
import { request } from 'node:http';
import { randomBytes } from 'node:crypto';

const gateway = new URL(process.env.HD_LLM_BASE_URL!);
const mine = process.env.HD_LLM_API_KEY!;
const MiB = 1 << 20;

interface Sent {
  authorization?: string;
  /** The body; sent with Content-Length unless `chunked`. */
  body: Buffer;
  chunked?: boolean;
}

/** One request on a connection of its own; resolves with the status or the socket's error. */
function send({ authorization, body, chunked }: Sent): Promise<string> {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (what: string) => {
      if (!settled) resolve(what);
      settled = true;
    };
    const req = request(
      {
        host: gateway.hostname,
        port: gateway.port,
        path: '/v1/chat/completions',
        method: 'POST',
        agent: false,
        headers: {
          'content-type': 'application/json',
          ...(authorization && { authorization }),
          ...(chunked ? { 'transfer-encoding': 'chunked' } : { 'content-length': body.length }),
        },
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (part: Buffer) => parts.push(part));
        const done = () => {
          let said = '';
          try {
            said =
              (JSON.parse(Buffer.concat(parts).toString()) as { error?: { code?: string } }).error
                ?.code ?? '';
          } catch {
            // an answer that is not OpenAI's error shape
          }
          settle(`${res.statusCode}${said ? ` ${said}` : ''}`);
        };
        res.on('end', done);
        res.on('error', done);
      },
    );
    req.on('error', (error: NodeJS.ErrnoException) => settle(error.code ?? error.message));
    if (!chunked) return void req.end(body);
    // A body streamed in pieces, without a length: the gateway cannot refuse it by size.
    let at = 0;
    const more = () => {
      while (at < body.length) {
        const piece = body.subarray(at, (at += MiB));
        if (!req.write(piece)) return void req.once('drain', more);
      }
      req.end();
    };
    more();
  });
}

async function phase(name: string, requests: Sent[]): Promise<void> {
  await Promise.all(
    requests.map(async (r) => console.log(JSON.stringify({ phase: name, status: await send(r) }))),
  );
}

// One buffer of each kind, sent on every connection (the container's memory is limited).
const junk = Buffer.alloc(16 * MiB - 1, 0x20);
const tooLarge = Buffer.alloc(17 * MiB, 0x20);
const head = '{"model":"stand-in","max_tokens":10,"messages":[{"role":"user","content":"';
const chat = Buffer.from(`${head}${'x'.repeat(7 * MiB - head.length - 4)}"}]}`);
const times = <T>(n: number, make: (i: number) => T) =>
  Array.from({ length: n }, (_, i) => make(i));

// (a) Large bodies without a usable credential.
await phase(
  'no credential',
  times(16, () => ({ body: junk })),
);
await phase(
  'made-up credentials',
  times(16, () => ({
    authorization: `Bearer hdgw_${randomBytes(32).toString('base64url')}`,
    body: junk,
  })),
);
await phase(
  'not a credential',
  times(8, () => ({ authorization: `Bearer sk-${'A'.repeat(48)}`, body: junk })),
);
await phase(
  'no credential, no length',
  times(4, () => ({ body: junk, chunked: true })),
);
// My own credential, a body over the chat limit by its Content-Length.
await phase('mine, over the limit', [{ authorization: `Bearer ${mine}`, body: tooLarge }]);
// (b) My own credential, many large bodies at once (7 MiB each, valid chat requests).
await phase(
  'mine, many at once',
  times(12, () => ({ authorization: `Bearer ${mine}`, body: chat })),
);

console.log(JSON.stringify({ done: true }));
process.on('SIGTERM', () => process.exit(0));
setInterval(() => {}, 60_000);
