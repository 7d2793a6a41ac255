import type http from 'node:http';

/** A request's whole body, or undefined once it passes `limit` bytes (read no further). */
export async function readBody(
  req: http.IncomingMessage,
  limit: number,
): Promise<Buffer | undefined> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const part of req) {
    size += (part as Buffer).length;
    if (size > limit) return undefined;
    parts.push(part as Buffer);
  }
  return Buffer.concat(parts);
}
