import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import { rm } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import type { AddressInfo } from 'node:net';
import { startPostgrest, type Postgrest } from './postgrest.ts';
import { tempDir } from './runtime.ts';
import { createStorageStandIn, type StorageStandIn } from './storage-server.ts';

/**
 * A local "Supabase project" for tests: one HTTP origin, as SUPABASE_URL is, serving
 * `/rest/v1` from a real PostgREST and `/storage/v1` from the Storage stand-in, which keeps
 * its object rows in the same database (`storage.objects`), as Supabase Storage does.
 * Realtime and Auth are not served (hd-runner polls; tests sign their own JWTs).
 */
export interface LocalSupabase {
  url: string;
  serviceRoleKey: string;
  anonKey: string;
  /** A signed-in user's access token. */
  userKey(userId: string): string;
  postgrest: Postgrest;
  storage: StorageStandIn;
  storageRoot: string;
  stop(): Promise<void>;
}

function forward(target: string, req: IncomingMessage, res: ServerResponse, path: string) {
  const upstream = request(
    new URL(path, target),
    { method: req.method, headers: { ...req.headers, host: new URL(target).host } },
    (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      pipeline(answer, res).catch(() => res.destroy());
    },
  );
  upstream.on('error', (error) => {
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({ message: `proxy: ${error.message}`, code: '', details: null, hint: null }),
    );
  });
  pipeline(req, upstream).catch(() => upstream.destroy());
}

/**
 * The settings of a scheduler on this project, both ways: supabase transport and storage,
 * runner tokens signed with its JWT secret.
 */
export function supabaseSettings(supabase: LocalSupabase): Record<string, string> {
  return {
    HD_TRANSPORT: 'supabase',
    HD_STORAGE: 'supabase',
    SUPABASE_URL: supabase.url,
    SUPABASE_SERVICE_ROLE_KEY: supabase.serviceRoleKey,
    SUPABASE_ANON_KEY: supabase.anonKey,
    SUPABASE_JWT_SECRET: supabase.postgrest.jwtSecret,
  };
}

export async function startLocalSupabase(databaseUrl: string): Promise<LocalSupabase> {
  const postgrest = await startPostgrest({ databaseUrl });
  const storageRoot = await tempDir('hd-test-storage-');
  const storage = createStorageStandIn({
    root: storageRoot,
    jwtSecret: postgrest.jwtSecret,
    databaseUrl,
  });
  const server = createServer((req, res) => {
    const url = req.url ?? '/';
    if (url.startsWith('/rest/v1/'))
      return forward(postgrest.url, req, res, url.slice('/rest/v1'.length));
    if (url.startsWith('/storage/v1/'))
      return storage.handle(req, res, url.slice('/storage/v1'.length));
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ message: `not served by the local stand-in: ${url}` }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    serviceRoleKey: postgrest.sign({ role: 'service_role' }),
    anonKey: postgrest.sign({ role: 'anon' }),
    userKey: (userId) =>
      postgrest.sign({ role: 'authenticated', sub: userId, aud: 'authenticated' }),
    postgrest,
    storage,
    storageRoot,
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await postgrest.stop();
      await storage.close();
      await rm(storageRoot, { recursive: true, force: true });
    },
  };
}
