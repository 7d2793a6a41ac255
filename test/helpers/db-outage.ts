import { createServer, connect, type Server, type Socket } from 'node:net';

/**
 * A TCP relay in front of the real PostgreSQL that a test can take down and bring back:
 * while down, new connections are refused (ECONNREFUSED) and open ones are dropped,
 * as when the server stops. The suite's PostgreSQL serves every test file at once, so
 * the outage is made here, in front of it, instead of stopping the server itself.
 */
export interface DbOutage {
  /** connection string through the relay */
  url: string;
  down(): Promise<void>;
  up(): Promise<void>;
  close(): Promise<void>;
}

export async function startDbRelay(databaseUrl: string): Promise<DbOutage> {
  const target = new URL(databaseUrl);
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;
  const listen = async () => {
    if (server) return;
    server = createServer((client) => {
      const upstream = connect(Number(target.port || 5432), target.hostname);
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
        s.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve) => server!.listen(port, '127.0.0.1', resolve));
    port = (server!.address() as { port: number }).port;
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
  await listen();
  const url = new URL(databaseUrl);
  url.hostname = '127.0.0.1';
  url.port = String(port);
  return { url: url.toString(), down, up: listen, close: down };
}
