import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { multipartField } from '../scheduler/llm-gateway/server.ts';
import { OpenAiTranscriber } from '../runner/extract/transcribe.ts';
import { ACCOUNT_A, ACCOUNT_B } from './helpers/runtime.ts';
import { requireTools } from './fixtures/documents.ts';
import { extractHarness } from './fixtures/extract-harness.ts';
import { startOpenAiStandIn, type OpenAiStandIn } from './helpers/openai-server.ts';

// OpenAI's transcription API cannot be reached from here: the OpenAI stand-in
// (test/helpers/openai-server.ts) speaks its wire format (multipart upload of `file` and
// `model` to POST /v1/audio/transcriptions; `{ text }`, or verbose_json with timed
// segments, back). It cannot understand speech, so it answers two sentences per piece
// (0.4 s each, from the piece's start) and records what it was sent. The audio itself is
// real: spoken by espeak-ng, cut into pieces by ffmpeg, whose cut points are real too.
const h = extractHarness();
const { addDocument, extract, chunksOf, statsOf, expectFailure } = h;

let openAi: OpenAiStandIn;
let speech: Buffer;
const uploads = () => openAi.requests.filter((r) => r.audio);
// Two sentences per piece, together longer than the test's chunks of 100 characters.
const heard = (n: number) =>
  `Teil ${n}: Guten Tag aus dem Lautsprecher, dies ist eine kurze Ansage zum Testen. Satz zwei von Teil ${n} folgt hier.`;

beforeAll(async () => {
  requireTools('espeak-ng', 'ffmpeg');
  openAi = await startOpenAiStandIn();
  const wav = join(h.work, 'speech.wav');
  execFileSync('espeak-ng', [
    '-v',
    'de',
    '-w',
    wav,
    'Guten Tag. Dies ist eine kurze Ansage zum Testen.',
  ]);
  speech = readFileSync(wav);
});
afterAll(() => openAi.close());
beforeEach(() => {
  openAi.reset();
  openAi.respond((r) => ({ kind: 'answer', content: heard(uploads().indexOf(r) + 1) }));
});

const env = () => ({
  HD_TRANSCRIBE_BASE_URL: openAi.url,
  HD_TRANSCRIBE_API_KEY: 'test-key',
  HD_TRANSCRIBE_MODEL: 'whisper-stand-in',
  HD_TRANSCRIBE_SEGMENT_SECONDS: '1',
});

describe('extract_text: audio', () => {
  it('cuts the audio with ffmpeg and transcribes each piece, in order, each chunk with when it was said', async () => {
    const doc = await addDocument(ACCOUNT_A, [{ name: 'ansage.wav', content: speech }]);
    const stats = statsOf(
      await extract(doc, {
        env: env(),
        debug: { chunk_target_chars: 100, chunk_overlap_chars: 0 },
      }),
    );
    expect(stats.file_types).toEqual({ audio: 1 });
    // espeak speaks that sentence in about three seconds: several one-second pieces.
    const sent = uploads();
    expect(sent.length).toBeGreaterThanOrEqual(3);
    for (const upload of sent) {
      expect(upload.authorization).toBe('Bearer test-key');
      const raw = upload.audio!.raw;
      expect(multipartField(raw, 'model')).toBe('whisper-stand-in');
      expect(multipartField(raw, 'response_format')).toBe('verbose_json');
      // Each upload is MP3 (an ID3 tag or an MPEG frame header).
      const text = raw.toString('latin1');
      const file = text.indexOf('\r\n\r\n', text.indexOf('name="file"')) + 4;
      expect(raw.subarray(file, file + 3).toString('latin1') === 'ID3' || raw[file] === 0xff).toBe(
        true,
      );
    }
    const chunks = await chunksOf(doc);
    const text = chunks.map((c) => c.content).join('\n\n');
    expect(text).toMatch(
      /^Teil 1: Guten Tag aus dem Lautsprecher, .* zum Testen\.\s+Satz zwei von Teil 1 folgt hier\.\s+Teil 2:/,
    );
    expect(text).toContain(`Teil ${sent.length}:`);
    // Each piece of about one second starts where ffmpeg cut it (a whole number of MP3
    // frames past the full second); its sentences are 0.4 s each from there.
    const pieceStart = (n: number) => {
      const chunk = chunks.find((c) => c.content.startsWith(`Teil ${n}:`));
      return Number(chunk.seconds_start);
    };
    expect(pieceStart(1)).toBe(0);
    for (let n = 2; n <= sent.length; n += 1) {
      expect(pieceStart(n)).toBeGreaterThanOrEqual(n - 1);
      expect(pieceStart(n)).toBeLessThan(n - 1 + 0.1);
    }
    // A chunk is said from its first sentence's start to its last one's end.
    for (const chunk of chunks) {
      const piece = Number(/Teil (\d+)/.exec(chunk.content)![1]);
      const second = chunk.content.startsWith('Satz zwei');
      const [from, to] = [Number(chunk.seconds_start), Number(chunk.seconds_end)];
      expect(from - pieceStart(piece)).toBeCloseTo(second ? 0.4 : 0, 3);
      expect(to - pieceStart(piece)).toBeCloseTo(
        second || chunk.content.includes('Satz zwei') ? 0.8 : 0.4,
        3,
      );
      expect(chunk).toMatchObject({ page_start: null, page_end: null });
    }
    expect(chunks.some((c) => c.content.startsWith('Satz zwei'))).toBe(true);
  }, 60_000);

  it('an endpoint without verbose_json (gpt-4o-transcribe) still gives each piece its time', async () => {
    // OpenAI answers 400 for response_format verbose_json with gpt-4o-transcribe.
    openAi.respond((r) =>
      multipartField(r.audio!.raw, 'response_format') === 'verbose_json'
        ? {
            kind: 'status',
            status: 400,
            body: {
              error: {
                message:
                  "response_format 'verbose_json' is not compatible with model 'gpt-4o-transcribe', use 'json' or 'text'",
                type: 'invalid_request_error',
                param: 'response_format',
                code: 'unsupported_value',
              },
            },
          }
        : {
            kind: 'answer',
            content: heard(
              uploads()
                .filter((u) => !multipartField(u.audio!.raw, 'response_format'))
                .indexOf(r) + 1,
            ),
          },
    );
    const doc = await addDocument(ACCOUNT_A, [{ name: 'ohne-zeiten.wav', content: speech }]);
    statsOf(await extract(doc, { env: env() }));
    // Refused once, then plain json for every piece.
    const formats = uploads().map((u) => multipartField(u.audio!.raw, 'response_format') ?? 'json');
    expect(formats[0]).toBe('verbose_json');
    expect(formats.slice(1).every((f) => f === 'json')).toBe(true);
    // A piece is known only as a whole: from where ffmpeg cut it to its end.
    const chunks = await chunksOf(doc);
    expect(Number(chunks[0].seconds_start)).toBe(0);
    // espeak's sentence is about 3.5 s long; the last chunk ends with it.
    expect(Number(chunks.at(-1).seconds_end)).toBeGreaterThan(3);
    for (const chunk of chunks) {
      expect(Number(chunk.seconds_end)).toBeGreaterThan(Number(chunk.seconds_start));
    }
  }, 60_000);

  it('fails clearly without a configured endpoint, and retries when the endpoint fails', async () => {
    const doc = await addDocument(ACCOUNT_A, [{ name: 'ohne.wav', content: speech }]);
    await expectFailure(
      await extract(doc),
      doc,
      'UNSUPPORTED_FILE',
      /needs a transcription endpoint, and none is configured \(HD_TRANSCRIBE_BASE_URL\)/,
    );
    openAi.respond(() => ({ kind: 'status', status: 503 }));
    const outcome = await extract(doc, { env: env() });
    expect(outcome.outcome).toBe('retrying');
    if (outcome.outcome === 'retrying') {
      expect(outcome.error).toMatchObject({ code: 'LLM_FAILED', retryable: true });
      expect(outcome.error.message).toMatch(/ohne\.wav: the transcription endpoint answered 503/);
    }
    openAi.respond(() => ({ kind: 'status', status: 400 }));
    const bad = await extract(doc, { env: env() });
    expect(bad).toMatchObject({
      outcome: 'failed',
      error: { code: 'LLM_FAILED', retryable: false },
    });
    expect(await chunksOf(doc)).toEqual([]);
  }, 60_000);
});

/**
 * The attack from issue 13: a 100-byte "voice note" that is an ID3 header followed by an
 * HLS playlist naming another tenant's upload by its absolute path. Left to probe the
 * format itself, ffmpeg followed the playlist and that file was transcribed into the
 * attacker's chunks.
 */
describe('extract_text: audio sandbox', () => {
  function hlsBehindId3(target: string): Buffer {
    const playlist = `#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:10.0,\n${target}\n#EXT-X-ENDLIST\n`;
    return Buffer.concat([Buffer.from('ID3\x04\0\0\0\0\0\0', 'latin1'), Buffer.from(playlist)]);
  }

  /** Account B's real MP3 upload, where the fs storage keeps it. */
  async function victimMp3(): Promise<string> {
    const wav = join(h.work, 'victim.wav');
    writeFileSync(wav, speech);
    const mp3 = join(h.work, 'victim.mp3');
    execFileSync('ffmpeg', ['-nostdin', '-loglevel', 'error', '-y', '-i', wav, mp3]);
    const doc = await addDocument(ACCOUNT_B, [
      { name: 'b-secret.mp3', content: readFileSync(mp3) },
    ]);
    const { rows } = await h.db.sql.query(
      `select bucket, storage_path from hd_document_files where document_id = $1`,
      [doc],
    );
    return join(h.root, rows[0].bucket, rows[0].storage_path);
  }

  it("a playlist behind an ID3 header is refused: nothing of B's file is read or stored", async () => {
    const target = await victimMp3();
    const doc = await addDocument(ACCOUNT_A, [
      { name: 'voice-note.mp3', content: hlsBehindId3(target), mime: 'audio/mpeg' },
    ]);
    const outcome = await extract(doc, { env: env() });
    await expectFailure(
      outcome,
      doc,
      'UNSUPPORTED_FILE',
      /voice-note\.mp3: the file is a media playlist/,
    );
    expect(uploads()).toEqual([]);
  }, 60_000);

  it('ffmpeg reads only the one file, as the sniffed format, even if the sniffing missed a playlist', async () => {
    const target = await victimMp3();
    const attack = join(h.work, 'voice-note.mp3');
    writeFileSync(attack, hlsBehindId3(target));
    const transcriber = new OpenAiTranscriber({
      baseURL: openAi.url,
      apiKey: 'test-key',
      model: 'whisper-stand-in',
      segmentSeconds: 1,
      timeoutMs: 30_000,
      maxMemoryMb: 1024,
      workDir: h.work,
    });
    const signal = new AbortController().signal;
    // As MP3 (what the bytes claim) the playlist is no audio: a clear refusal.
    await expect(
      transcriber.transcribe(attack, 'audio/mpeg', 'voice-note.mp3', signal),
    ).rejects.toMatchObject({
      code: 'INVALID_INPUT',
      message: expect.stringMatching(/^voice-note\.mp3: the audio could not be decoded as mp3/),
    });
    expect(uploads()).toEqual([]);
    // The same transcriber reads B's real MP3 when it is the file it was given.
    await expect(
      transcriber.transcribe(target, 'audio/mpeg', 'b.mp3', signal),
    ).resolves.toMatchObject({ text: expect.stringMatching(/^Teil 1: Guten Tag/) });
    expect(uploads().length).toBeGreaterThan(0);
  }, 60_000);
});
