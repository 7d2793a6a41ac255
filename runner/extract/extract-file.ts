import { stat } from 'node:fs/promises';
import { HdError } from '../../contract/errors.ts';
import {
  Chunker,
  chunkText,
  type ChunkOptions,
  type PageStart,
  type TextChunk,
} from './chunker.ts';
import { ChunkBudget, checkTypeSize } from './limits.ts';
import { ocrImage, ocrPdfPage, type OcrOptions } from './ocr.ts';
import { extractPdfText } from './pdf-text.ts';
import { assertDeclaredMime, describe, readHead, sniff, type FileKind } from './sniff.ts';
import { readTextPieces } from './text-stream.ts';
import { joinPages, normalizeText, visibleLength } from './text.ts';
import type { Transcriber } from './transcribe.ts';

export interface ExtractSettings {
  /** The file's name, for messages. */
  name: string;
  /** HD_EXTRACT_MAX_FILE_BYTES; a type may have a lower limit (limits.ts). */
  maxFileBytes: number;
  chunking: ChunkOptions;
  /** Chunks this file may still add to its document. */
  maxChunks: number;
  maxPages: number;
  parseTimeoutMs: number;
  maxMemoryMb: number;
  ocr: 'auto' | 'off';
  ocrLanguages: string;
  ocrDpi: number;
  /** PDF pages with fewer visible characters in their text layer are OCRed. */
  ocrMinChars: number;
  ocrPageTimeoutMs: number;
  signal: AbortSignal;
  workDir: string;
  /** Audio and video; undefined where no transcription endpoint is configured. */
  transcriber?: Transcriber | undefined;
  /** Share of this file done, 0..1. */
  onProgress(fraction: number): Promise<void>;
}

export interface FileExtraction {
  kind: FileKind;
  chunks: TextChunk[];
  /** Characters of the extracted text. */
  characters: number;
  /** PDF pages (1 for an image, null for text and audio). */
  pageCount: number | null;
  ocrPages: number;
  /** Peak resident memory of the PDF parser process, in KiB. */
  parserPeakRssKb?: number;
}

/** Text of one downloaded file, whatever its type; the type comes from its bytes. */
export async function extractFile(
  path: string,
  declaredMime: string | null,
  settings: ExtractSettings,
): Promise<FileExtraction> {
  const { name } = settings;
  const kind = sniff(await readHead(path), declaredMime);
  assertDeclaredMime(name, declaredMime, kind);
  checkTypeSize(name, kind, (await stat(path)).size, settings.maxFileBytes);
  const budget = new ChunkBudget(name, settings.maxChunks, settings.chunking.targetChars);
  /** Chunks of a text that is whole in memory, with the pages it starts. */
  const chunked = (text: string, pages: PageStart[] = []) => {
    budget.add(chunkText(text, settings.chunking, pages));
    return { chunks: budget.chunks, characters: text.length };
  };
  const noText = (how: string) =>
    new HdError('INVALID_INPUT', `${name}: no text found in ${describe(kind)} (${how})`);

  switch (kind.kind) {
    case 'unsupported':
      throw new HdError('UNSUPPORTED_FILE', `${name}: the file is ${kind.what}`);
    case 'text': {
      // Streamed: memory stays flat whatever the file's size, apart from the chunks.
      await budget.drain(new Chunker(settings.chunking), readTextPieces(path, kind.format));
      if (budget.characters === 0) throw noText('it is blank');
      const { chunks, characters } = budget;
      return { kind, chunks, characters, pageCount: null, ocrPages: 0 };
    }
    case 'image': {
      if (settings.ocr === 'off') {
        throw new HdError(
          'UNSUPPORTED_FILE',
          `${name}: an image needs OCR, which this job turned off`,
        );
      }
      const text = normalizeText(await ocrImage(path, `OCR of ${name}`, ocrOptions(settings)));
      if (visibleLength(text) === 0) throw noText(`OCR, languages ${settings.ocrLanguages}`);
      return { kind, ...chunked(text, [{ page: 1, start: 0 }]), pageCount: 1, ocrPages: 1 };
    }
    case 'audio': {
      if (!settings.transcriber) {
        throw new HdError(
          'UNSUPPORTED_FILE',
          `${name}: ${describe(kind)} needs a transcription endpoint, and none is configured (HD_TRANSCRIBE_BASE_URL)`,
        );
      }
      const text = normalizeText(
        await settings.transcriber.transcribe(path, kind.mime, name, settings.signal),
      );
      if (text === '') throw noText('transcription');
      return { kind, ...chunked(text), pageCount: null, ocrPages: 0 };
    }
    case 'pdf':
      return extractPdf(path, kind, settings, noText, chunked);
  }
}

function ocrOptions(settings: ExtractSettings, signal = settings.signal): OcrOptions {
  return {
    languages: settings.ocrLanguages,
    dpi: settings.ocrDpi,
    timeoutMs: settings.ocrPageTimeoutMs,
    maxMemoryMb: settings.maxMemoryMb,
    signal,
    workDir: settings.workDir,
  };
}

/**
 * The text layer page by page; a page with (almost) no text is rendered and OCRed while
 * the parser goes on with the next pages. Progress counts pages fully done.
 */
async function extractPdf(
  path: string,
  kind: FileKind,
  settings: ExtractSettings,
  noText: (how: string) => HdError,
  chunked: (text: string, pages: PageStart[]) => { chunks: TextChunk[]; characters: number },
): Promise<FileExtraction> {
  const { name } = settings;
  const texts: string[] = [];
  let done = 0;
  let ocrPages = 0;
  // Aborted by the job's signal or by a failed OCR, which also stops the parser.
  const local = new AbortController();
  const onAbort = () => local.abort(settings.signal.reason);
  settings.signal.addEventListener('abort', onAbort, { once: true });
  let ocrQueue = Promise.resolve();
  let ocrError: unknown;
  const pageDone = async (total: number) => {
    done += 1;
    await settings.onProgress(total > 0 ? done / total : 1);
  };
  try {
    const result = await extractPdfText(path, {
      name,
      maxPages: settings.maxPages,
      timeoutMs: settings.parseTimeoutMs,
      maxMemoryMb: settings.maxMemoryMb,
      signal: local.signal,
      onPage: async (page, total) => {
        const text = normalizeText(page.text);
        texts[page.num - 1] = text;
        if (settings.ocr === 'auto' && visibleLength(text) < settings.ocrMinChars) {
          ocrPages += 1;
          ocrQueue = ocrQueue.then(async () => {
            if (ocrError !== undefined) return;
            try {
              const ocr = normalizeText(
                await ocrPdfPage(path, page.num, name, ocrOptions(settings, local.signal)),
              );
              if (visibleLength(ocr) > visibleLength(text)) texts[page.num - 1] = ocr;
              await pageDone(total);
            } catch (error) {
              ocrError = error;
              local.abort(error);
            }
          });
        } else await pageDone(total);
      },
    });
    await ocrQueue;
    if (ocrError !== undefined) throw ocrError;
    const joined = joinPages(texts.map((text, i) => ({ num: i + 1, text: text ?? '' })));
    if (joined.text === '') {
      throw noText(
        settings.ocr === 'off'
          ? `${result.total} page(s) without a text layer, and OCR is off for this job`
          : `${result.total} page(s), text layer and OCR, languages ${settings.ocrLanguages}`,
      );
    }
    return {
      kind,
      ...chunked(joined.text, joined.pages),
      pageCount: result.total,
      ocrPages,
      parserPeakRssKb: result.peakRssKb,
    };
  } catch (error) {
    // A failed OCR aborts the parser; report the OCR's error, not the abort.
    throw ocrError ?? error;
  } finally {
    settings.signal.removeEventListener('abort', onAbort);
    local.abort();
    await ocrQueue;
  }
}
