import { HdError } from '../../contract/errors.ts';
import type { Chunker, TextChunk } from './chunker.ts';
import type { FileKind } from './sniff.ts';

const MiB = 1024 * 1024;

/**
 * Largest file of each type, below HD_EXTRACT_MAX_FILE_BYTES: a text file becomes about as
 * many characters as it has bytes, all stored as chunks; an image becomes pixels (a
 * 40 MiB PNG can hold gigapixels, which tesseract reads whole).
 */
export const TYPE_MAX_BYTES: Partial<Record<FileKind['kind'], { bytes: number; what: string }>> = {
  text: { bytes: 64 * MiB, what: 'text, Markdown and HTML files' },
  image: { bytes: 40 * MiB, what: 'images' },
};

/**
 * Most chunks one document may have: they are written in one transaction, and a tiny
 * chunk_target_chars would otherwise turn a few MB into hundreds of thousands of rows.
 */
export const MAX_CHUNKS_PER_DOCUMENT = 100_000;

export function formatBytes(bytes: number): string {
  return bytes >= MiB ? `${(bytes / MiB).toFixed(1)} MiB` : `${bytes} bytes`;
}

/** Refuses a file over its type's limit (or the configured one, if lower). */
export function checkTypeSize(name: string, kind: FileKind, size: number, configured: number) {
  const limit = TYPE_MAX_BYTES[kind.kind];
  if (!limit || limit.bytes >= configured || size <= limit.bytes) return;
  throw new HdError(
    'INVALID_INPUT',
    `${name}: the file is ${formatBytes(size)}, more than the limit of ${formatBytes(limit.bytes)} for ${limit.what}; split it into smaller files`,
    { details: { size_bytes: size, limit_bytes: limit.bytes } },
  );
}

/** Collects chunks, refusing the document once it has more than `maxChunks`. */
export class ChunkBudget {
  readonly chunks: TextChunk[] = [];
  characters = 0;
  readonly #name: string;
  readonly #maxChunks: number;
  readonly #targetChars: number;

  constructor(name: string, maxChunks: number, targetChars: number) {
    this.#name = name;
    this.#maxChunks = maxChunks;
    this.#targetChars = targetChars;
  }

  add(chunks: readonly TextChunk[]): void {
    for (const chunk of chunks) {
      if (this.chunks.length >= this.#maxChunks) {
        throw new HdError(
          'INVALID_INPUT',
          `${this.#name}: the document makes more than ${MAX_CHUNKS_PER_DOCUMENT} chunks of ${this.#targetChars} characters (the limit per document); use a larger chunk_target_chars or split the document`,
          {
            details: { max_chunks: MAX_CHUNKS_PER_DOCUMENT, chunk_target_chars: this.#targetChars },
          },
        );
      }
      this.chunks.push(chunk);
    }
  }

  /** All text given to the chunker, chunk by chunk, then its end. */
  async drain(chunker: Chunker, pieces: AsyncIterable<string> | Iterable<string>) {
    for await (const piece of pieces) {
      this.characters += piece.length;
      this.add(chunker.push(piece));
    }
    this.add(chunker.end());
  }
}
