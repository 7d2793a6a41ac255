import { createReadStream } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type OpenAI from 'openai';
import { HdError } from '../../contract/errors.ts';
import { budgetRefusal } from '../llm/budget-refusal.ts';
import { runTool, ToolFailure } from './tools.ts';

/** Speech to text for audio (and the audio of video files). */
export interface Transcriber {
  /** `mime` is the type sniffed from the file's bytes (sniff.ts), never the declared one. */
  transcribe(path: string, mime: string, name: string, signal: AbortSignal): Promise<string>;
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
 * into segments, because such endpoints limit the upload (OpenAI: 25 MB); the segments'
 * texts are joined as paragraphs, in order.
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

  async transcribe(path: string, mime: string, name: string, signal: AbortSignal): Promise<string> {
    const { segmentSeconds, timeoutMs, maxMemoryMb } = this.#options;
    const dir = await mkdtemp(join(this.#options.workDir, 'audio-'));
    try {
      // prettier-ignore
      const args = [
        '-nostdin', '-hide_banner', '-loglevel', 'error', ...ffmpegInputArgs(path, mime),
        '-vn', '-ac', '1', '-ar', '16000', '-c:a', 'libmp3lame', '-b:a', '48k',
        '-f', 'segment', '-segment_time', String(segmentSeconds), '-reset_timestamps', '1',
        join(dir, 'segment-%05d.mp3'),
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
      const segments = (await readdir(dir)).filter((f) => f.endsWith('.mp3')).sort();
      if (segments.length === 0) {
        throw new HdError('UNSUPPORTED_FILE', `${name}: the file has no audio track`);
      }
      const texts: string[] = [];
      for (const segment of segments) {
        texts.push(await this.#request(join(dir, segment), name, signal));
      }
      return texts.join('\n\n');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  async #request(file: string, name: string, signal: AbortSignal): Promise<string> {
    const { client, sdk } = await this.#client();
    const { APIConnectionError, APIError, APIUserAbortError } = sdk;
    try {
      const result = await client.audio.transcriptions.create(
        { file: createReadStream(file), model: this.#options.model },
        { signal },
      );
      return result.text;
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
