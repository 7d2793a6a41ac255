import { HdError } from '../../contract/errors.ts';
import {
  Chunker,
  chunkText,
  type ChunkOptions,
  type PageStart,
  type TextChunk,
} from './chunker.ts';
import { ChunkBudget, checkTypeSize } from './limits.ts';
import { readImage, scriptSkipError, type OcrOptions } from './ocr.ts';
import { extractPdf, type PageFailure, type PageLayer, type PdfSettings } from './pdf.ts';
import { assertDeclaredMime, describe, readHead, sniff, type FileKind } from './sniff.ts';
import { readTextPieces } from './text-stream.ts';
import { ToolFailure } from './tools.ts';
import { visibleLength } from './text.ts';
import { chunkSeconds, type Transcriber } from './transcribe.ts';

/** What a PDF needs (pdf.ts), and what the other types and the chunking need besides. */
export interface ExtractSettings extends PdfSettings {
  /** HD_EXTRACT_MAX_FILE_BYTES; a type may have a lower limit (limits.ts). */
  maxFileBytes: number;
  /** The file's size in bytes, as its download found it. */
  size: number;
  chunking: ChunkOptions;
  /** Chunks this file may still add to its document. */
  maxChunks: number;
  /** Audio and video; undefined where no transcription endpoint is configured. */
  transcriber?: Transcriber | undefined;
}

export interface FileExtraction {
  kind: FileKind;
  chunks: TextChunk[];
  /** Characters of the extracted text. */
  characters: number;
  /** PDF pages (1 for an image, null for text and audio). */
  pageCount: number | null;
  ocrPages: number;
  /** Where each PDF page's text came from. */
  layers?: PageLayer[];
  /** PDF pages rendered for OCR (ocrPages of them gave text). */
  ocrTried?: number;
  /** The resolution each of those pages was rendered at, in dpi. */
  ocrDpis?: Map<number, number>;
  /** Why each failed PDF page failed. */
  failures?: Map<number, PageFailure>;
  /** PDF pages read twice by OCR (the script check): page → the languages of the reading kept. */
  ocrScriptLanguages?: Map<number, string>;
  /** Peak resident memory of the PDF parser process, in KiB. */
  parserPeakRssKb?: number;
  /** The whole text and its page starts (PDFs and images), for per-page outputs. */
  paged?: { text: string; pages: PageStart[] };
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
  checkTypeSize(name, kind, settings.size, settings.maxFileBytes);
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
      const read = await readImage(path, `${name}: OCR`, ocrOptions(settings)).catch(
        (error: unknown) => {
          // tesseract's (leptonica's) own words stay in the cause, for the log.
          if (!(error instanceof ToolFailure)) throw error;
          throw new HdError(
            'INVALID_INPUT',
            `${name}: the image could not be read; it may be truncated or damaged`,
            { cause: error },
          );
        },
      );
      if (read.skipped !== undefined) throw scriptSkipError(name, 'the image is', read.skipped);
      const { text } = read;
      if (visibleLength(text) === 0) throw noText(`OCR, languages ${settings.ocrLanguages}`);
      const paged = { text, pages: [{ page: 1, start: 0 }] };
      return { kind, ...chunked(text, paged.pages), pageCount: 1, ocrPages: 1, paged };
    }
    case 'audio': {
      if (!settings.transcriber) {
        throw new HdError(
          'UNSUPPORTED_FILE',
          `${name}: ${describe(kind)} needs a transcription endpoint, and none is configured (HD_TRANSCRIBE_BASE_URL)`,
        );
      }
      const transcript = await settings.transcriber.transcribe(
        path,
        kind.mime,
        name,
        settings.signal,
      );
      if (transcript.text === '') throw noText('transcription');
      const { chunks, characters } = chunked(transcript.text);
      // When each chunk was said, as a PDF's chunks say which pages they are from.
      const timed = chunks.map((chunk) => ({
        ...chunk,
        ...chunkSeconds(chunk, transcript.spans),
      }));
      return { kind, chunks: timed, characters, pageCount: null, ocrPages: 0 };
    }
    case 'pdf': {
      const pdf = await extractPdf(path, settings);
      const ocrPages = pdf.layers.filter((layer) => layer === 'ocr').length;
      return {
        kind,
        ...chunked(pdf.text, pdf.pages),
        pageCount: pdf.pageCount,
        ocrPages,
        layers: pdf.layers,
        ocrTried: pdf.ocrTried,
        ocrDpis: pdf.ocrDpis,
        failures: pdf.failures,
        ocrScriptLanguages: pdf.ocrScriptLanguages,
        parserPeakRssKb: pdf.parserPeakRssKb,
        paged: { text: pdf.text, pages: pdf.pages },
      };
    }
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
