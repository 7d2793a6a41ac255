import { createServer, connect, type Server, type Socket } from 'node:net';
import { Transform } from 'node:stream';
import { rm } from 'node:fs/promises';

/**
 * A relay in front of a real service (PostgreSQL over TCP, the Docker engine over its
 * unix socket) that a test can take down and bring back: while down, new connections are
 * refused and open ones are dropped, as when the service stops. The suite's PostgreSQL
 * and the machine's Docker engine serve every test (and other people) at once, so the
 * outage is made here, in front of them, instead of stopping them.
 */
export interface OutageRelay {
  down(): Promise<void>;
  up(): Promise<void>;
  close(): Promise<void>;
  /**
   * The next request that holds `marker` reaches the service, but its answer does not: the
   * connection drops as the first bytes of it come back (a restart between a commit and
   * its reply). Resolves once it was dropped. The relay stays up.
   */
  dropAnswerTo(marker: string): Promise<void>;
}

type Endpoint = { host: string; port: number } | { path: string };

async function startRelay(target: Endpoint, listenOn: Endpoint): Promise<OutageRelay> {
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let dropAnswer: { marker: Buffer; dropped: () => void } | undefined;
  const up = async () => {
    if (server) return;
    if ('path' in listenOn) await rm(listenOn.path, { force: true });
    const s = createServer((client) => {
      const upstream = 'path' in target ? connect(target.path) : connect(target.port, target.host);
      for (const end of [client, upstream]) {
        sockets.add(end);
        end.on('close', () => sockets.delete(end));
        end.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
      }
      let answerDropped: (() => void) | undefined;
      client.on('data', (chunk: Buffer) => {
        if (dropAnswer && chunk.includes(dropAnswer.marker)) {
          answerDropped = dropAnswer.dropped;
          dropAnswer = undefined;
        }
      });
      const answers = new Transform({
        transform(chunk: Buffer, _encoding, next) {
          if (!answerDropped) return next(null, chunk);
          client.destroy();
          upstream.destroy();
          answerDropped();
          next();
        },
      });
      client.pipe(upstream).pipe(answers).pipe(client);
    });
    server = s;
    await new Promise<void>((resolve) =>
      'path' in listenOn
        ? s.listen(listenOn.path, resolve)
        : s.listen(listenOn.port, listenOn.host, resolve),
    );
    if (!('path' in listenOn)) listenOn.port = (s.address() as { port: number }).port;
  };
  const down = async () => {
    const closing = server;
    server = undefined;
    const closed = new Promise<void>((resolve) =>
      closing ? closing.close(() => resolve()) : resolve(),
    );
    for (const s of sockets) s.destroy();
    await closed;
  };
  const dropAnswerTo = (marker: string) =>
    new Promise<void>((dropped) => (dropAnswer = { marker: Buffer.from(marker), dropped }));
  await up();
  return { up, down, close: down, dropAnswerTo };
}

/**
 * A relay to the PostgreSQL of `databaseUrl`, listening on `host` (loopback, or a Docker
 * network's gateway address for containers on that network); `url` connects through it.
 */
export async function startDbRelay(
  databaseUrl: string,
  host = '127.0.0.1',
): Promise<OutageRelay & { url: string }> {
  const target = new URL(databaseUrl);
  const listenOn = { host, port: 0 };
  const relay = await startRelay(
    { host: target.hostname, port: Number(target.port || 5432) },
    listenOn,
  );
  const url = new URL(databaseUrl);
  url.hostname = listenOn.host;
  url.port = String(listenOn.port);
  return { ...relay, url: url.toString() };
}

/** A relay to the Docker engine's socket, listening on `socketPath`. */
export function startDockerRelay(
  socketPath: string,
  engine = process.env.DOCKER_HOST?.replace(/^unix:\/\//, '') ?? '/var/run/docker.sock',
): Promise<OutageRelay> {
  return startRelay({ path: engine }, { path: socketPath });
}
