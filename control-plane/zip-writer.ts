import { createWriteStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { ZipFile } from 'yazl';

// Entries carry one fixed time, so the same files make the same archive (and SHA-256).
const ZIP_MTIME = new Date('2000-01-01T00:00:00Z');

/**
 * A zip written as a stream to `path` (yazl): each entry is opened only when its turn
 * comes (`open`), so neither the entries nor the archive are ever whole in memory. Text
 * is deflated; images and archives, already compressed, are stored.
 */
export function zipWriter(path: string) {
  const zip = new ZipFile();
  const out = createWriteStream(path);
  zip.outputStream.pipe(out);
  // An entry that cannot be opened fails the archive (not the process).
  zip.on('error', (error: Error) => out.destroy(error));
  const done = finished(out);
  done.catch(() => undefined); // awaited in close(); an early failure waits there
  return {
    add(name: string, size: number, contentType: string, open: () => Promise<Readable>) {
      const compress = contentType.startsWith('text/') || contentType.endsWith('json');
      zip.addReadStreamLazy(name, { mtime: ZIP_MTIME, compress, size }, (callback) => {
        open().then(
          (stream) => callback(null, stream),
          (error: unknown) => callback(error, undefined as unknown as Readable),
        );
      });
    },
    /** Ends the archive; resolves once it is on disk (rejects if an entry failed). */
    async close(): Promise<void> {
      zip.end();
      await done;
    },
  };
}
