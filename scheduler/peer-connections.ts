import type http from 'node:http';
import type { Socket } from 'node:net';

// Connections one peer address may hold open on a server runners reach (the LLM gateway,
// the upload grants): a runner needs a few; without a bound one container could hold
// ~28,000 (its ports) half-sent, each a file descriptor of the scheduler. On the default
// bridge each container has an address of its own; runners on loopback (process launcher,
// host networking) share one (docs/containers.md, residual risks).
export const MAX_CONNECTIONS_PER_ADDRESS = 1024;
// A request's headers come in one write from a real client; a peer that trickles them
// (slowloris) is closed after this instead of Node's 60 s, checked every second.
export const HEADERS_TIMEOUT_MS = 10_000;

/** http.createServer's options for a server runners reach: the headers' timeout. */
export const RUNNER_FACING: http.ServerOptions = {
  headersTimeout: HEADERS_TIMEOUT_MS,
  connectionsCheckingInterval: 1000,
};

export interface PeerConnectionStats {
  /** Connections open now, and the most open at once since the start. */
  connections: number;
  peakConnections: number;
  /** Connections closed unread: their address held MAX_CONNECTIONS_PER_ADDRESS. */
  refusedConnections: number;
}

/**
 * Holds `server` to MAX_CONNECTIONS_PER_ADDRESS open connections per peer address: one
 * past it is destroyed as it is accepted, before a byte is read. `opened` sees the others.
 */
export function capPeerConnections(
  server: http.Server,
  opened?: (socket: Socket) => void,
): () => PeerConnectionStats {
  const perAddress = new Map<string, number>();
  const stats = { connections: 0, peakConnections: 0, refusedConnections: 0 };
  server.on('connection', (socket: Socket) => {
    const address = socket.remoteAddress ?? '';
    const open = perAddress.get(address) ?? 0;
    if (open >= MAX_CONNECTIONS_PER_ADDRESS) {
      stats.refusedConnections += 1;
      return void socket.destroy();
    }
    perAddress.set(address, open + 1);
    stats.connections += 1;
    stats.peakConnections = Math.max(stats.peakConnections, stats.connections);
    socket.once('close', () => {
      stats.connections -= 1;
      const left = (perAddress.get(address) ?? 1) - 1;
      if (left > 0) perAddress.set(address, left);
      else perAddress.delete(address);
    });
    opened?.(socket);
  });
  return () => ({ ...stats });
}
