import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/**
 * A pass-through stream that counts and hashes (SHA-256) what flows through it; with a
 * limit, the chunk that would pass `maxBytes` fails the stream with `tooLarge()` instead.
 */
export function hashingStream(limit?: {
  maxBytes: number;
  tooLarge: () => Error;
}): Transform & { sha256(): string; bytes(): number } {
  const hash = createHash('sha256');
  let bytes = 0;
  let digest: string | undefined;
  const stream = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      bytes += chunk.length;
      if (limit && bytes > limit.maxBytes) return done(limit.tooLarge());
      hash.update(chunk);
      done(null, chunk);
    },
  });
  return Object.assign(stream, {
    sha256: () => (digest ??= hash.digest('hex')),
    bytes: () => bytes,
  });
}

/** A file's SHA-256 (hex) and size, read as a stream (memory stays flat). */
export async function hashFile(path: string): Promise<{ sha256: string; bytes: number }> {
  const hash = hashingStream();
  // Drained into nothing: only the hash is wanted.
  await pipeline(createReadStream(path), hash, new Writable({ write: (_c, _e, done) => done() }));
  return { sha256: hash.sha256(), bytes: hash.bytes() };
}
