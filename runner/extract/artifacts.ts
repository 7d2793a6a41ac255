import { createReadStream } from 'node:fs';
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { toStorageName } from '../../contract/storage-paths.ts';
import { zipWriter } from '../../control-plane/zip-writer.ts';
import type { ArtifactFile } from '../artifacts.ts';
import type { PageStart, TextChunk } from './chunker.ts';
import { ocrDpi } from './ocr.ts';
import { pdfInfo } from './poppler.ts';
import { runTool, type ToolLimits } from './tools.ts';

/** What extract_text was asked to store besides the chunks (payload include_*). */
export interface ExtractOutputs {
  /** Per-page Markdown text files (kind page_text). */
  texts: boolean;
  /** Page images (kind page_image, PNG) at `imageDpi`, fewer pixels for big pages. */
  images: boolean;
  /** Small page previews (kind preview, JPEG, longest side PREVIEW_PIXELS). */
  previews: boolean;
  /** A zip of all of the above (kind archive, `artifacts.zip`). */
  archive: boolean;
  imageDpi: number;
}

/** A file's text as a whole, and where each page of it starts (PDFs and images). */
export interface PagedText {
  text: string;
  pages: readonly PageStart[];
}

const PREVIEW_PIXELS = 256;

/**
 * Produces extract_text's result files file by file and stores each as an artifact as
 * soon as it is made (`upload`), so the job's scratch space holds one page at a time, plus
 * the archive being written: yazl opens each entry when its turn comes and streams the
 * archive to disk, and an entry's file is removed once read. Nothing is made unless asked.
 */
export class ExtractArtifacts {
  readonly #o: ExtractOutputs;
  readonly #dir: string;
  readonly #upload: (file: ArtifactFile) => Promise<{ size_bytes: number }>;
  readonly #limits: (what: string) => ToolLimits;
  readonly #maxPages: number;
  readonly #zip: ReturnType<typeof zipWriter> | undefined;
  readonly #names = new Set<string>();
  #count = 0;
  #bytes = 0;

  constructor(options: {
    outputs: ExtractOutputs;
    workDir: string;
    upload: (file: ArtifactFile) => Promise<{ size_bytes: number }>;
    limits: (what: string) => ToolLimits;
    maxPages: number;
  }) {
    this.#o = options.outputs;
    this.#dir = join(options.workDir, 'artifacts');
    this.#upload = options.upload;
    this.#limits = options.limits;
    this.#maxPages = options.maxPages;
    if (this.#o.archive && this.wanted)
      this.#zip = zipWriter(join(options.workDir, 'artifacts.zip'));
  }

  get wanted(): boolean {
    return this.#o.texts || this.#o.images || this.#o.previews;
  }

  /** The outputs of one extracted file (`pdf` when it is a PDF, for its page renders). */
  async addFile(fileName: string, localPath: string, paged: PagedText | undefined, pdf: boolean) {
    if (!this.wanted) return;
    const folder = this.#folderFor(fileName);
    await mkdir(join(this.#dir, folder), { recursive: true });
    const pageName = (page: number, ext: string) =>
      `${folder}/p${String(page).padStart(4, '0')}.${ext}`;
    if (this.#o.texts && paged)
      for (const [i, start] of paged.pages.entries()) {
        const end = paged.pages[i + 1]?.start ?? paged.text.length;
        const markdown = `# ${fileName}, page ${start.page}\n\n${paged.text.slice(start.start, end).trim()}\n`;
        const name = pageName(start.page, 'md');
        await writeFile(join(this.#dir, name), markdown);
        await this.#store({ kind: 'page_text', name, contentType: 'text/markdown' });
      }
    if (!pdf || !(this.#o.images || this.#o.previews)) return;
    const info = await pdfInfo(localPath, this.#maxPages, this.#limits(`${fileName}: page sizes`));
    for (let page = 1; page <= info.pages; page += 1) {
      const size = info.sizes.get(page);
      if (this.#o.images) {
        // Pixel-capped as OCR renders are (a 36 × 48 inch plan is not 156 MP).
        const dpi = size ? ocrDpi(size.width, size.height, this.#o.imageDpi) : this.#o.imageDpi;
        const name = pageName(page, 'png');
        await this.#render(localPath, page, name, ['-r', String(dpi), '-png'], fileName);
        await this.#store({ kind: 'page_image', name, contentType: 'image/png' });
      }
      if (this.#o.previews) {
        const name = pageName(page, 'jpg');
        await this.#render(
          localPath,
          page,
          name,
          ['-scale-to', String(PREVIEW_PIXELS), '-jpeg'],
          fileName,
        );
        await this.#store({ kind: 'preview', name, contentType: 'image/jpeg' });
      }
    }
  }

  /** The archive, once every file is in; what was stored, for the job's stats. */
  async finish(): Promise<{ artifacts: number; artifact_bytes: number }> {
    if (this.#zip) {
      await this.#zip.close();
      await this.#storeFile({
        kind: 'archive',
        name: 'artifacts.zip',
        path: join(this.#dir, '..', 'artifacts.zip'),
        contentType: 'application/zip',
      });
    }
    return { artifacts: this.#count, artifact_bytes: this.#bytes };
  }

  /** One folder per input file, named after it (made unique within the job). */
  #folderFor(fileName: string): string {
    const base = toStorageName(fileName).slice(0, 120).trim() || 'file';
    let folder = base;
    for (let n = 2; this.#names.has(folder); n += 1) folder = `${base} (${n})`;
    this.#names.add(folder);
    return folder;
  }

  async #render(pdf: string, page: number, name: string, args: string[], fileName: string) {
    const target = join(this.#dir, name);
    // pdftoppm adds the extension itself.
    // prettier-ignore
    await runTool(
      'pdftoppm',
      ['-f', String(page), '-l', String(page), ...args, '-singlefile', pdf, target.replace(/\.\w+$/, '')],
      this.#limits(`rendering page ${page} of ${fileName}`),
    );
  }

  async #store(file: Omit<ArtifactFile, 'path'>) {
    await this.#storeFile({ ...file, path: join(this.#dir, file.name) });
  }

  async #storeFile(file: ArtifactFile) {
    const stored = await this.#upload(file);
    this.#count += 1;
    this.#bytes += stored.size_bytes;
    if (!this.#zip || file.kind === 'archive') return rm(file.path, { force: true });
    // Read when its turn in the archive comes, removed once read.
    const { size } = await stat(file.path);
    this.#zip.add(`${file.kind}/${file.name}`, size, file.contentType, async () => {
      const stream = createReadStream(file.path);
      stream.on('close', () => void rm(file.path, { force: true }));
      return stream;
    });
  }
}

/**
 * The text of a file without pages (text, Markdown, HTML, a transcript) from its chunks,
 * as one page: overlaps taken once, a gap the chunker skipped (white space) a blank line.
 */
export function chunksAsText(chunks: readonly TextChunk[]): PagedText | undefined {
  if (chunks.length === 0) return undefined;
  let text = '';
  let end = 0;
  for (const chunk of chunks) {
    if (text === '') text = chunk.content;
    else if (chunk.char_start >= end) text += `\n\n${chunk.content}`;
    else text += chunk.content.slice(end - chunk.char_start);
    end = Math.max(end, chunk.char_end);
  }
  return { text, pages: [{ page: 1, start: 0 }] };
}
