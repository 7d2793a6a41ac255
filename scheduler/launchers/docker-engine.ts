import type { IncomingMessage } from 'node:http';
import type Docker from 'dockerode';

/** The engine dropped the connection before its answer was whole (it restarted). */
export class EngineConnectionLost extends Error {
  constructor(path: string) {
    super(`the Docker engine dropped the connection before answering ${path} in full`);
  }
}

/**
 * A request to the engine about one container whose answer is read as a stream, so that
 * a connection dropped half-way rejects (without a statusCode: the caller retries).
 * dockerode's own `wait()` and non-follow `logs()` never settle when the engine drops the
 * connection after the answer's headers, which it sends at once for a wait: an engine
 * restart while a runner ran left that runner watched for ever.
 */
export function containerRequest(
  container: Docker.Container,
  request: { method: 'GET' | 'POST'; what: 'wait' | 'logs'; query: Record<string, unknown> },
): Promise<Buffer> {
  const path = `/containers/${container.id}/${request.what}?`;
  return new Promise((resolve, reject) => {
    (container.modem as DockerModem).dial(
      {
        path,
        method: request.method,
        isStream: true,
        statusCodes: {
          200: true,
          400: 'bad parameter',
          404: 'no such container',
          500: 'server error',
        },
        options: { ...request.query },
      },
      (error, res) => {
        if (error) return reject(error);
        const chunks: Buffer[] = [];
        let ended = false;
        res!.on('data', (chunk: Buffer) => chunks.push(chunk));
        res!.once('end', () => {
          ended = true;
          resolve(Buffer.concat(chunks));
        });
        res!.once('error', () => {}); // 'close' follows
        res!.once('close', () => {
          if (!ended) reject(new EngineConnectionLost(path));
        });
      },
    );
  });
}

/**
 * Removes a container with its volumes; one already gone (404) or being removed by someone
 * else (409: its own watcher, after storing its output) counts as removed.
 */
export async function removeContainer(container: Docker.Container): Promise<void> {
  await container.remove({ force: true, v: true }).catch((error: { statusCode?: number }) => {
    if (error.statusCode !== 404 && error.statusCode !== 409) throw error;
  });
}

interface DockerModem {
  dial(
    options: Record<string, unknown>,
    callback: (error: Error | null, res?: IncomingMessage) => void,
  ): void;
}
