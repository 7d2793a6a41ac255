import { createServer, type Socket } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { toHdError } from '../contract/errors.ts';
import { PostgresDb } from '../control-plane/db/postgres.ts';

// A database across a network that drops packets, as a runner or a scheduler sees it: the
// TCP connection opens (here: a listener that accepts and never says a word) and the
// server never answers the log-in. Without a connect timeout a call waits for TCP to give
// up, minutes; with one it fails as the database being out of reach, which every caller
// retries or hands back.
const sockets = new Set<Socket>();
const silent = createServer((socket) => {
  sockets.add(socket);
  socket.on('error', () => {});
});
await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
const { port } = silent.address() as { port: number };
afterAll(async () => {
  for (const socket of sockets) socket.destroy();
  await new Promise((resolve) => silent.close(resolve));
});

describe('a database that never answers', () => {
  it('fails a call as DATABASE_UNAVAILABLE once the connect timeout has passed, not after TCP gives up', async () => {
    const db = new PostgresDb({
      connectionString: `postgres://hd_runner:x@127.0.0.1:${port}/postgres`,
      listenConnectionString: null,
      connectTimeoutMs: 300,
    });
    try {
      const error = await db.getJob('00000000-0000-4000-8000-000000000000').catch((e) => e);
      expect(toHdError(error)).toMatchObject({ code: 'DATABASE_UNAVAILABLE', retryable: true });
      expect(toHdError(error).message).toMatch(
        /^database: Connection terminated due to connection timeout/,
      );
      // A warm runner's connection ahead gives up the same way, quietly: the job's first
      // call reports it.
      await db.connectAhead();
    } finally {
      await db.close();
    }
  }, 30_000);
});
