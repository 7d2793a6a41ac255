import type { IncomingMessage } from 'node:http';
import { networkInterfaces } from 'node:os';
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

/** What `docker network inspect` says that networkGatewayAddress reads. */
export interface NetworkAddressInfo {
  Id?: string;
  Driver?: string;
  IPAM?: { Config?: { Gateway?: string; Subnet?: string }[] | null } | null;
  Options?: Record<string, string> | null;
}

/**
 * A bridge network's IPv4 gateway address: this host, as the network's containers reach
 * it. IPAM's Gateway where the engine lists it. A freshly started engine lists only the
 * default bridge's Subnet: then the bridge interface's address, or, while the interface is
 * down (no container yet: Node lists only interfaces that are up), the subnet's first
 * address, which is the one the engine gives its bridge. Undefined for a network without
 * one (host, none, overlay).
 */
export function networkGatewayAddress(network: NetworkAddressInfo): string | undefined {
  const configs = network.IPAM?.Config ?? [];
  const listed = configs.map((c) => c.Gateway).find((g) => g && !g.includes(':'));
  if (listed) return listed;
  if (network.Driver !== 'bridge') return undefined;
  const name =
    network.Options?.['com.docker.network.bridge.name'] ??
    (network.Id ? `br-${network.Id.slice(0, 12)}` : undefined);
  const up = name ? networkInterfaces()[name]?.find((a) => a.family === 'IPv4') : undefined;
  if (up) return up.address;
  const subnet = configs.map((c) => c.Subnet).find((s) => s && !s.includes(':'));
  return subnet ? firstHostOf(subnet) : undefined;
}

function firstHostOf(cidr: string): string | undefined {
  const match = /^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)$/.exec(cidr);
  if (!match || Number(match[5]) > 30) return undefined;
  const bits = Number(match[5]);
  const base = match.slice(1, 5).reduce((n, octet) => n * 256 + Number(octet), 0);
  const network = bits === 0 ? 0 : base - (base % 2 ** (32 - bits));
  const host = network + 1;
  return [24, 16, 8, 0].map((shift) => Math.floor(host / 2 ** shift) % 256).join('.');
}
