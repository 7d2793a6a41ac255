import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import pg from 'pg';

/** A real PgBouncer (Debian's `pgbouncer`) in transaction mode in front of a PostgreSQL. */
export interface PgBouncer {
  /** `url` with host and port of the pooler instead of the server's. */
  through(url: string): string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const PGBOUNCER = '/usr/sbin/pgbouncer';

/**
 * Starts PgBouncer in transaction mode (what Supabase's pooler on port 6543 is) for the
 * users of `urls` (their passwords go into its auth file), each transaction on whichever
 * server connection is free: session state, LISTEN and named prepared statements do not
 * survive from one transaction to the next.
 */
export async function startPgBouncer(urls: string[]): Promise<PgBouncer> {
  const server = new URL(urls[0]!);
  const dir = await mkdtemp(join(tmpdir(), 'hd-pgbouncer-'));
  await chmod(dir, 0o755);
  const port = await freePort();
  const users = new Map(
    urls.map((u) => {
      const url = new URL(u);
      return [decodeURIComponent(url.username), decodeURIComponent(url.password)];
    }),
  );
  await writeFile(
    join(dir, 'userlist.txt'),
    [...users].map(([user, password]) => `"${user}" "${password}"`).join('\n') + '\n',
  );
  await writeFile(
    join(dir, 'pgbouncer.ini'),
    `[databases]
* = host=${server.hostname} port=${server.port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = ${join(dir, 'userlist.txt')}
pool_mode = transaction
default_pool_size = 6
max_client_conn = 400
ignore_startup_parameters = extra_float_digits,options
`,
  );
  // PgBouncer refuses to run as root; -u drops to an unprivileged user.
  const asRoot = process.getuid?.() === 0;
  const child = execa(
    PGBOUNCER,
    [...(asRoot ? ['-u', 'postgres'] : []), join(dir, 'pgbouncer.ini')],
    {
      reject: false,
    },
  );
  let exited = false;
  void child.finally(() => (exited = true));
  const through = (url: string) => {
    const u = new URL(url);
    u.hostname = '127.0.0.1';
    u.port = String(port);
    return u.toString();
  };
  // Ready once a query goes through it (bounded: PgBouncer starts in milliseconds).
  for (let attempt = 0; ; attempt++) {
    const client = new pg.Client(through(urls[0]!));
    try {
      await client.connect();
      await client.query('select 1');
      await client.end();
      break;
    } catch (error) {
      // No end(): on a client whose connect failed it never resolves.
      if (exited || attempt > 200)
        throw new Error(`pgbouncer did not start: ${(await child).stderr}`, { cause: error });
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return {
    through,
    async stop() {
      child.kill('SIGTERM');
      await child;
      await rm(dir, { recursive: true, force: true });
    },
  };
}
