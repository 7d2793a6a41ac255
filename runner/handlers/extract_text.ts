import { hash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { setImmediate } from 'node:timers/promises';
import { basename } from 'node:path';
import { HdError } from '../../contract/errors.ts';
import { assertTenantPath } from '../../contract/storage-paths.ts';
import type { ChunkRow, DocumentFile } from '../../control-plane/db/transport.ts';
import { chunksAsText, ExtractArtifacts } from '../extract/artifacts.ts';
import { extractFile, type ExtractSettings } from '../extract/extract-file.ts';
import { formatBytes, MAX_CHUNKS_PER_DOCUMENT } from '../extract/limits.ts';
import type { PageFailure } from '../extract/pdf.ts';
import { OpenAiTranscriber } from '../extract/transcribe.ts';
import type { Handler, HandlerContext } from '../handler.ts';

interface ExtractStats {
  files: number;
  file_types: Record<string, number>;
  pages: number;
  ocr_pages: number;
  /** PDF pages rendered for OCR; those that gave text are ocr_pages. */
  ocr_pages_tried: number;
  /** PDF pages without text (no text layer, nothing to OCR, or OCR found nothing). */
  blank_pages: number;
  /** PDF pages that could not be read or rendered, skipped. */
  pages_failed: number;
  /**
   * Per PDF file, its pages by where their text came from, as page ranges ("1-3,7"), the
   * pages rendered for OCR by the resolution they were rendered at ({"150": "2,5"}), the
   * failed pages by why ({"script detected: Arabic, … (apt-get install …)": "4"}),
   * and the pages read twice by OCR, in the job's languages and in their script's, by the
   * languages of the reading kept, the one with the better confidence ({"ara": "4",
   * "deu+eng": "7"}).
   */
  page_layers: {
    file: string;
    text: string;
    ocr: string;
    blank: string;
    failed: string;
    ocr_dpi: Record<string, string>;
    failed_why: Record<string, string>;
    ocr_language: Record<string, string>;
  }[];
  chunks: number;
  characters: number;
  bytes: number;
  chunks_inserted: number;
  chunks_updated: number;
  chunks_unchanged: number;
  chunks_deleted: number;
  parser_peak_rss_mb: number;
}

// Extraction takes 90% of the progress bar, writing the chunks the rest.
const EXTRACT_SHARE = 90;

/**
 * extract_text: reads every file of the job's document (hd_document_files, this account
 * only, paths confined to the account's prefix), extracts its text (PDF text layer with
 * OCR for pages without one, images by OCR, plain text, Markdown, HTML, audio where a
 * transcription endpoint is configured), splits it into chunks and replaces the
 * document's chunks in one transaction. Every file is extracted before anything is
 * written, so bad input fails the job with nothing half-written; a re-run leaves exactly
 * the same chunks.
 */
export const extractText: Handler<'extract_text'> = {
  // Memory: the runner, the PDF parser process and one OCR tool per CPU at once, the
  // latter bounded by HD_EXTRACT_MAX_MEMORY_MB (1 GiB) each. Two CPUs: pages are OCRed
  // in parallel, one tesseract thread each.
  resources: { gpu: false, memoryMb: 3072, cpus: 2, timeoutMs: 60 * 60 * 1000 },

  async run(ctx) {
    const started = performance.now();
    const { job, config } = ctx;
    if (!job.document_id) {
      throw new HdError(
        'INVALID_INPUT',
        'extract_text needs a document: the job has no document_id (hd_ingestion_jobs.document_id)',
      );
    }
    const files = await ctx.outputs.listDocumentFiles();
    if (files.length === 0) {
      throw new HdError(
        'INVALID_INPUT',
        `document ${job.document_id} has no files of this account in hd_document_files`,
      );
    }
    // Refuse what can be refused before any download.
    for (const file of files) {
      assertTenantPath(job.account_id, file.storage_path);
      checkSize(file, file.size_bytes ?? 0, config.HD_EXTRACT_MAX_FILE_BYTES, false);
    }

    const stats = newStats(files.length);
    const chunks: Omit<ChunkRow, 'content_sha256'>[] = [];
    // The job's own folder: removed by the runner once the outcome is recorded, after the
    // job's time (a folder of the handler's own cost two file system round trips of it).
    const { workDir } = ctx;
    const results = extractArtifacts(ctx, workDir);
    let stored = {};
    for (const [index, file] of files.entries()) {
      const name = basename(file.storage_path);
      const filesDone = (index / files.length) * EXTRACT_SHARE;
      await ctx.progress(filesDone, 'downloading');
      const local = await ctx.storage.download(file.bucket, file.storage_path);
      checkSize(file, local.size, config.HD_EXTRACT_MAX_FILE_BYTES, true);
      await ctx.progress(filesDone, `processing:${index}/${files.length}`);
      const extraction = await extractFile(local.path, file.mime_type, {
        ...settingsOf(ctx, workDir),
        name,
        size: local.size,
        maxChunks: MAX_CHUNKS_PER_DOCUMENT - chunks.length,
        onProgress: (done, total) =>
          ctx.progress(
            ((index + done / total) / files.length) * EXTRACT_SHARE,
            `processing_pages:${done}/${total}`,
          ),
      });
      const type = extraction.kind.kind;
      stats.file_types[type] = (stats.file_types[type] ?? 0) + 1;
      stats.pages += extraction.pageCount ?? 0;
      stats.ocr_pages += extraction.ocrPages;
      stats.ocr_pages_tried += extraction.ocrTried ?? extraction.ocrPages;
      if (extraction.layers) {
        const layers = extraction.layers;
        stats.blank_pages += layers.filter((layer) => layer === 'blank').length;
        stats.pages_failed += layers.filter((layer) => layer === 'failed').length;
        stats.page_layers.push({
          file: name,
          text: pageRanges(layers, 'text'),
          ocr: pageRanges(layers, 'ocr'),
          blank: pageRanges(layers, 'blank'),
          failed: pageRanges(layers, 'failed'),
          ocr_dpi: pagesBy(layers.length, extraction.ocrDpis),
          failed_why: pagesBy(layers.length, whyOf(extraction.failures)),
          ocr_language: pagesBy(layers.length, extraction.ocrScriptLanguages),
        });
      }
      stats.characters += extraction.characters;
      stats.bytes += local.size;
      stats.parser_peak_rss_mb = Math.max(
        stats.parser_peak_rss_mb,
        Math.round((extraction.parserPeakRssKb ?? 0) / 1024),
      );
      for (const chunk of extraction.chunks) {
        chunks.push({ ...chunk, chunk_index: chunks.length, file_id: file.id });
      }
      ctx.log.info(
        {
          file: file.storage_path,
          type,
          pages: extraction.pageCount,
          ocr: extraction.ocrPages,
          failed: extraction.layers?.filter((layer) => layer === 'failed').length,
          failed_why: extraction.failures?.size
            ? [...new Set(whyOf(extraction.failures).values())]
            : undefined,
        },
        'file extracted',
      );
      const paged =
        extraction.paged ?? (results.wanted ? chunksAsText(extraction.chunks) : undefined);
      await results.addFile(name, local.path, paged, type === 'pdf');
    }
    if (results.wanted) stored = await results.finish();

    await ctx.progress(EXTRACT_SHARE, 'postprocessing');
    // The chunks are hashed while that report travels (the write waits for it anyway); a
    // report leaves on a later tick (pg's pool, fetch), so that comes first.
    await setImmediate();
    const rows: ChunkRow[] = chunks.map((chunk) => ({
      ...chunk,
      content_sha256: hash('sha256', chunk.content),
    }));
    const counts = await ctx.outputs.replaceChunks(rows);
    stats.chunks = chunks.length;
    stats.chunks_inserted = counts.inserted;
    stats.chunks_updated = counts.updated;
    stats.chunks_unchanged = counts.unchanged;
    stats.chunks_deleted = counts.deleted;
    return { ...stats, ...stored, duration_ms: Math.round(performance.now() - started) };
  },
};

function newStats(files: number): ExtractStats {
  return {
    files,
    file_types: {},
    pages: 0,
    ocr_pages: 0,
    ocr_pages_tried: 0,
    blank_pages: 0,
    pages_failed: 0,
    page_layers: [],
    chunks: 0,
    characters: 0,
    bytes: 0,
    chunks_inserted: 0,
    chunks_updated: 0,
    chunks_unchanged: 0,
    chunks_deleted: 0,
    parser_peak_rss_mb: 0,
  };
}

/** Declared sizes are checked before the download, real sizes after it. */
function checkSize(file: DocumentFile, size: number, max: number, real: boolean): void {
  const name = basename(file.storage_path);
  if (size > max) {
    throw new HdError(
      'INVALID_INPUT',
      `${name}: the file is ${formatBytes(size)}, more than the limit of ${formatBytes(max)} (HD_EXTRACT_MAX_FILE_BYTES)`,
      { details: { file_id: file.id, size_bytes: size } },
    );
  }
  if (real && size === 0) {
    throw new HdError('INVALID_INPUT', `${name}: the file is empty (0 bytes)`, {
      details: { file_id: file.id },
    });
  }
}

function chunkOptions(ctx: HandlerContext<'extract_text'>) {
  return {
    targetChars: ctx.payload.chunk_target_chars ?? ctx.config.HD_CHUNK_TARGET_CHARS,
    overlapChars: ctx.payload.chunk_overlap_chars ?? ctx.config.HD_CHUNK_OVERLAP_CHARS,
  };
}

function settingsOf(
  ctx: HandlerContext<'extract_text'>,
  workDir: string,
): Omit<ExtractSettings, 'name' | 'size' | 'onProgress' | 'maxChunks'> {
  const { config, payload } = ctx;
  return {
    maxFileBytes: config.HD_EXTRACT_MAX_FILE_BYTES,
    chunking: chunkOptions(ctx),
    maxPages: config.HD_EXTRACT_MAX_PAGES,
    parseTimeoutMs: config.HD_EXTRACT_PARSE_TIMEOUT_MS,
    textPageTimeoutMs: config.HD_EXTRACT_PAGE_TIMEOUT_MS,
    maxMemoryMb: config.HD_EXTRACT_MAX_MEMORY_MB,
    ocr: OCR_MODES[payload.extraction_method ?? payload.ocr],
    ocrLanguages: payload.ocr_languages ?? config.HD_OCR_LANGUAGES,
    ocrDpi: config.HD_OCR_DPI,
    ocrMinChars: config.HD_OCR_MIN_CHARS,
    ocrPageTimeoutMs: config.HD_OCR_PAGE_TIMEOUT_MS,
    // The job's CPU share, or fewer where the machine has fewer.
    cpus: Math.max(1, Math.min(extractText.resources.cpus, availableParallelism())),
    signal: ctx.signal,
    workDir,
    transcriber: config.HD_TRANSCRIBE_BASE_URL
      ? new OpenAiTranscriber({
          baseURL: config.HD_TRANSCRIBE_BASE_URL,
          // Local whisper servers want no key, but the client insists on one.
          apiKey: config.HD_TRANSCRIBE_API_KEY ?? config.HD_LLM_API_KEY ?? 'none',
          model: config.HD_TRANSCRIBE_MODEL,
          segmentSeconds: config.HD_TRANSCRIBE_SEGMENT_SECONDS,
          timeoutMs: config.HD_EXTRACT_PARSE_TIMEOUT_MS,
          maxMemoryMb: config.HD_EXTRACT_MAX_MEMORY_MB,
          workDir,
        })
      : undefined,
  };
}

// extraction_method (or the older ocr setting) as the PDF reader takes it.
const OCR_MODES = { native: 'off', ocr: 'always', both: 'auto', auto: 'auto', off: 'off' } as const;

/** The result files the payload asks for (include_*), stored as the job's artifacts. */
function extractArtifacts(ctx: HandlerContext<'extract_text'>, workDir: string) {
  const { payload, config } = ctx;
  const any = payload.include_texts || payload.include_images || payload.include_previews;
  return new ExtractArtifacts({
    outputs: {
      texts: payload.include_texts,
      images: payload.include_images,
      previews: payload.include_previews,
      archive: payload.include_archive ?? any,
      imageDpi: payload.image_dpi,
    },
    workDir,
    upload: (file) => ctx.artifacts.upload(file),
    maxPages: config.HD_EXTRACT_MAX_PAGES,
    limits: (what) => ({
      timeoutMs: config.HD_EXTRACT_PARSE_TIMEOUT_MS,
      maxMemoryMb: config.HD_EXTRACT_MAX_MEMORY_MB,
      signal: ctx.signal,
      what,
    }),
  });
}

/** Each failed page's why, for its stats. */
function whyOf(failures = new Map<number, PageFailure>()): Map<number, string> {
  return new Map([...failures].map(([page, failure]) => [page, failure.why]));
}

/**
 * Pages grouped by a value of theirs, as page ranges: the resolution they were rendered
 * at ({"150": "1-2", "300": "4"}), why they failed.
 */
function pagesBy(
  pages: number,
  values = new Map<number, number | string>(),
): Record<string, string> {
  const valueOf = Array.from({ length: pages }, (_, i) => String(values.get(i + 1) ?? ''));
  const distinct = [...new Set(values.values())]
    .sort((a, b) => (typeof a === 'number' && typeof b === 'number' ? a - b : 0))
    .map(String);
  return Object.fromEntries(distinct.map((value) => [value, pageRanges(valueOf, value)]));
}

/** The pages of one layer as ranges: [text, text, ocr, text] → "1-2,4" for text. */
function pageRanges(layers: readonly string[], layer: string): string {
  const ranges: string[] = [];
  for (let i = 0; i < layers.length; i += 1) {
    if (layers[i] !== layer) continue;
    let end = i;
    while (layers[end + 1] === layer) end += 1;
    ranges.push(end === i ? `${i + 1}` : `${i + 1}-${end + 1}`);
    i = end;
  }
  return ranges.join(',');
}
