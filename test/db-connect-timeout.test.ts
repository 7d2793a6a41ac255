import { createServer, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toHdError } from '../contract/errors.ts';
import { PostgresDb } from '../control-plane/db/postgres.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';

// A database across a network that drops packets, as a runner or a scheduler sees it: the
// TCP connection opens (here: a listener that accepts and never says a word) and the
// server never answers the log-in. Without a connect timeout a call waits for TCP to give
// up, minutes; with one it fails as the database being out of reach, which every caller
// retries or hands back. A call that only waits for a busy pool's free connection is no
// outage and is not cut short.
const sockets = new Set<Socket>();
const silent = createServer((socket) => {
  sockets.add(socket);
  socket.on('error', () => {});
});
let t: TestDatabase;
beforeAll(async () => {
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t = await createTestDatabase();
});
afterAll(async () => {
  for (const socket of sockets) socket.destroy();
  await new Promise((resolve) => silent.close(resolve));
  await t?.drop();
});
const silentUrl = () =>
  `postgres://hd_runner:x@127.0.0.1:${(silent.address() as { port: number }).port}/postgres`;

describe('a database that never answers', () => {
  it('fails a call as DATABASE_UNAVAILABLE once the connect timeout has passed, not after TCP gives up', async () => {
    const db = new PostgresDb({
      connectionString: silentUrl(),
      listenConnectionString: null,
      connectTimeoutMs: 300,
    });
    try {
      const error = await db.getJob('00000000-0000-4000-8000-000000000000').catch((e) => e);
      expect(toHdError(error)).toMatchObject({ code: 'DATABASE_UNAVAILABLE', retryable: true });
      // A warm runner's connection ahead gives up the same way, quietly: the job's first
      // call reports it.
      await db.connectAhead();
    } finally {
      await db.close();
    }
  }, 30_000);

  it("fails a scheduler's LISTEN session the same way", async () => {
    const db = new PostgresDb({ connectionString: silentUrl(), connectTimeoutMs: 300 });
    try {
      const error = await db.listen(() => {}).catch((e) => e);
      expect(toHdError(error)).toMatchObject({ code: 'DATABASE_UNAVAILABLE', retryable: true });
    } finally {
      await db.close();
    }
  }, 30_000);

  it('lets a call wait for a busy pool past the connect timeout: that is no outage', async () => {
    const db = new PostgresDb({ connectionString: t.url, poolSize: 1, connectTimeoutMs: 300 });
    try {
      const busy = db.pool.query('select pg_sleep(1.5)');
      // Queued behind it for ~1.5 s, five times the connect timeout.
      const waiting = db.pool.query<{ ok: number }>('select 1 as ok');
      await busy;
      expect((await waiting).rows).toEqual([{ ok: 1 }]);
    } finally {
      await db.close();
    }
  }, 30_000);
});
