import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type OpenAI from 'openai';
import type { APIError } from 'openai';
import { HdError } from '../../contract/errors.ts';
import { budgetRefusal } from '../llm/budget-refusal.ts';
import { spanAt } from './chunker.ts';
import { normalizeText } from './text.ts';
import { runTool, ToolFailure } from './tools.ts';

/** From character `start` of the transcript on, what was said from second `from` to `to`. */
export interface SpokenSpan {
  start: number;
  from: number;
  to: number;
}

/** A transcript (normalised text) and when each stretch of it was said. */
export interface Transcript {
  text: string;
  /** In increasing order of `start`. */
  spans: SpokenSpan[];
}

/** Speech to text for audio (and the audio of video files). */
export interface Transcriber {
  /** `mime` is the type sniffed from the file's bytes (sniff.ts), never the declared one. */
  transcribe(path: string, mime: string, name: string, signal: AbortSignal): Promise<Transcript>;
}

/**
 * The ffmpeg demuxer for each sniffed audio type. ffmpeg is never left to pick the input
 * format itself: it would follow an HLS playlist or a concat list hidden behind an ID3
 * header and read files the job has no business with (another tenant's upload).
 */
const DEMUXERS: Record<string, string> = {
  'audio/mpeg': 'mp3',
  'audio/wav': 'wav',
  'audio/ogg': 'ogg',
  'audio/flac': 'flac',
  'video/mp4': 'mov',
  'video/webm': 'matroska',
};

/**
 * ffmpeg's input arguments for one local file: the demuxer named, only the `file`
 * protocol allowed (no http, no data: or subfile: tricks, also for anything the demuxer
 * might open), and the path given as a `file:` URL so that a colon in it is no protocol.
 */
export function ffmpegInputArgs(path: string, mime: string): string[] {
  const demuxer = DEMUXERS[mime];
  if (!demuxer) throw new Error(`no ffmpeg demuxer for ${mime}`);
  return ['-protocol_whitelist', 'file', '-f', demuxer, '-i', `file:${path}`];
}

export interface TranscriberOptions {
  /** An OpenAI-compatible API (OpenAI, a local whisper server …/v1). */
  baseURL: string;
  apiKey: string;
  model: string;
  /** Length of the pieces ffmpeg cuts the audio into, one request each. */
  segmentSeconds: number;
  /** Bounds for ffmpeg, and the time limit of one request. */
  timeoutMs: number;
  maxMemoryMb: number;
  workDir: string;
}

/**
 * Transcribes through `audio/transcriptions` of any OpenAI-compatible endpoint. ffmpeg
 * first takes the audio track (of a video too), makes it mono 16 kHz MP3 and cuts it
 * into pieces, because such endpoints limit the upload (OpenAI: 25 MB); the pieces'
 * texts are joined as paragraphs, in order. Each piece is asked for `verbose_json`, whose
 * segments say when their words were said; an endpoint that has no segments for it (or
 * refuses the format, as gpt-4o-transcribe does) gives the piece's own start and end.
 */
export class OpenAiTranscriber implements Transcriber {
  readonly #options: TranscriberOptions;
  #sdk: Promise<{ client: OpenAI; sdk: typeof import('openai') }> | undefined;

  constructor(options: TranscriberOptions) {
    this.#options = options;
  }

  /** The SDK is loaded with the first audio file: a runner reading PDFs never loads it. */
  #client() {
    this.#sdk ??= import('openai').then((sdk) => ({
      sdk,
      client: new sdk.default({
        baseURL: this.#options.baseURL,
        apiKey: this.#options.apiKey,
        timeout: this.#options.timeoutMs,
        maxRetries: 2,
      }),
    }));
    return this.#sdk;
  }

  /** Set once an endpoint refused `verbose_json`: plain `json` from then on. */
  #plainJson = false;

  async transcribe(
    path: string,
    mime: string,
    name: string,
    signal: AbortSignal,
  ): Promise<Transcript> {
    const { segmentSeconds, timeoutMs, maxMemoryMb } = this.#options;
    const dir = await mkdtemp(join(this.#options.workDir, 'audio-'));
    try {
      const list = join(dir, 'pieces.csv');
      // prettier-ignore
      const args = [
        '-nostdin', '-hide_banner', '-loglevel', 'error', ...ffmpegInputArgs(path, mime),
        '-vn', '-ac', '1', '-ar', '16000', '-c:a', 'libmp3lame', '-b:a', '48k',
        '-f', 'segment', '-segment_time', String(segmentSeconds), '-reset_timestamps', '1',
        // Where each piece starts and ends in the recording: "piece-00001.mp3,30.024,60.048".
        '-segment_list', list, '-segment_list_type', 'csv',
        join(dir, 'piece-%05d.mp3'),
      ];
      await runTool('ffmpeg', args, {
        timeoutMs,
        maxMemoryMb,
        signal,
        what: `reading the audio of ${name}`,
      }).catch((error: unknown) => {
        // ffmpeg's own words stay in the cause, for the runner's log.
        if (error instanceof ToolFailure) {
          throw new HdError(
            'INVALID_INPUT',
            `${name}: the audio could not be decoded as ${DEMUXERS[mime]}; the file may be damaged or not what its first bytes claim`,
            { cause: error },
          );
        }
        throw error;
      });
      const pieces = await readPieceList(list);
      if (pieces.length === 0) {
        throw new HdError('UNSUPPORTED_FILE', `${name}: the file has no audio track`);
      }
      const transcript = new TranscriptBuilder();
      for (const piece of pieces) {
        const heard = await this.#request(join(dir, piece.file), name, signal);
        transcript.addPiece(piece, heard);
      }
      return transcript.result();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  async #request(file: string, name: string, signal: AbortSignal): Promise<Heard> {
    const { client, sdk } = await this.#client();
    const { APIConnectionError, APIError, APIUserAbortError } = sdk;
    const model = this.#options.model;
    try {
      if (!this.#plainJson) {
        try {
          const verbose = await client.audio.transcriptions.create(
            {
              file: createReadStream(file),
              model,
              response_format: 'verbose_json',
              timestamp_granularities: ['segment'],
            },
            { signal },
          );
          return { text: verbose.text, segments: verbose.segments ?? [] };
        } catch (error) {
          if (!refusesVerboseJson(error, APIError)) throw error;
          this.#plainJson = true;
        }
      }
      const plain = await client.audio.transcriptions.create(
        { file: createReadStream(file), model },
        { signal },
      );
      return { text: plain.text, segments: [] };
    } catch (error) {
      if (signal.aborted || error instanceof APIUserAbortError) throw signal.reason ?? error;
      const refused = budgetRefusal(error);
      if (refused) throw refused;
      const status = error instanceof APIError ? error.status : undefined;
      // A 4xx other than timeout/rate limit will not change on retry (bad audio, bad model).
      const permanent =
        status !== undefined && status >= 400 && status < 500 && ![408, 429].includes(status);
      const why =
        error instanceof APIConnectionError
          ? 'could not be reached'
          : `answered ${status ?? 'with an error'}`;
      throw new HdError(
        'LLM_FAILED',
        `${name}: the transcription endpoint ${why}: ${(error as Error).message.slice(0, 300)}`,
        {
          cause: error,
          retryable: !permanent,
        },
      );
    }
  }
}

/** What the endpoint heard in one piece: its text and, where it says, its timed segments. */
interface Heard {
  text: string;
  segments: readonly { start: number; end: number; text: string }[];
}

/** A 400 that names the response format: the model has no `verbose_json` (gpt-4o-transcribe). */
function refusesVerboseJson(error: unknown, apiError: typeof APIError): boolean {
  return (
    error instanceof apiError &&
    error.status === 400 &&
    /response_format|verbose_json|timestamp_granularities/i.test(error.message)
  );
}

interface Piece {
  file: string;
  from: number;
  to: number;
}

/** ffmpeg's segment list (csv): one "file,start,end" line per piece, in order. */
async function readPieceList(path: string): Promise<Piece[]> {
  const pieces: Piece[] = [];
  for (const line of (await readFile(path, 'utf8')).split('\n')) {
    const [file, from, to] = line.trim().split(',');
    if (!file || !/^piece-\d+\.mp3$/.test(file)) continue;
    pieces.push({ file, from: Number(from), to: Number(to) });
  }
  return pieces;
}

/**
 * Joins the pieces' texts (paragraphs between pieces, a space between the segments of one),
 * each normalised, and notes where each segment starts and when it was said, in seconds
 * from the start of the file to the millisecond.
 */
class TranscriptBuilder {
  #text = '';
  readonly #spans: SpokenSpan[] = [];

  addPiece(piece: Piece, heard: Heard): void {
    const timed = heard.segments
      .map((s) => ({ text: normalizeText(s.text), from: s.start, to: s.end }))
      .filter((s) => s.text !== '' && Number.isFinite(s.from) && Number.isFinite(s.to));
    const parts =
      timed.length > 0
        ? timed
        : [{ text: normalizeText(heard.text), from: 0, to: piece.to - piece.from }];
    let separator = this.#text === '' ? '' : '\n\n';
    for (const part of parts) {
      if (part.text === '') continue;
      this.#text += separator;
      separator = ' ';
      const from = seconds(piece.from + Math.max(0, part.from));
      const to = Math.max(from, seconds(piece.from + part.to));
      this.#spans.push({ start: this.#text.length, from, to });
      this.#text += part.text;
    }
  }

  result(): Transcript {
    return { text: this.#text, spans: this.#spans };
  }
}

const seconds = (value: number) => Math.round(value * 1000) / 1000;

/** The seconds of a chunk of a transcript: from its first character's span to its last one's. */
export function chunkSeconds(
  chunk: { char_start: number; char_end: number },
  spans: readonly SpokenSpan[],
): { seconds_start: number; seconds_end: number } | undefined {
  const first = spanAt(spans, chunk.char_start);
  const last = spanAt(spans, chunk.char_end - 1);
  if (!first || !last) return undefined;
  return { seconds_start: first.from, seconds_end: Math.max(first.from, last.to) };
}
