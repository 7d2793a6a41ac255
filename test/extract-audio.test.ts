import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OpenAiTranscriber } from '../runner/extract/transcribe.ts';
import { ACCOUNT_A, ACCOUNT_B } from './helpers/runtime.ts';
import { requireTools } from './fixtures/documents.ts';
import { extractHarness } from './fixtures/extract-harness.ts';

// OpenAI's transcription API cannot be reached from here: a small local HTTP server
// stands in for it, speaking its wire format (multipart upload of `file` and `model` to
// POST /v1/audio/transcriptions, JSON `{ text }` back). It cannot understand speech, so it
// answers a fixed sentence per segment and records what it was sent. The audio itself
// is real: spoken by espeak-ng, cut into segments by ffmpeg.
const h = extractHarness();
const { addDocument, extract, chunksOf, statsOf, expectFailure } = h;

interface Upload {
  authorization: string | undefined;
  model: string | undefined;
  fileBytes: Buffer;
}
const uploads: Upload[] = [];
let failWith: number | undefined;
let server: Server;
let baseURL: string;
let speech: Buffer;

beforeAll(async () => {
  requireTools('espeak-ng', 'ffmpeg');
  server = createServer((req, res) => {
    const body: Buffer[] = [];
    req.on('data', (part: Buffer) => body.push(part));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/audio/transcriptions') {
        res.writeHead(404).end();
        return;
      }
      if (failWith) {
        res.writeHead(failWith, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: 'stand-in failure', type: 'server_error' } }));
        return;
      }
      const raw = Buffer.concat(body);
      const text = raw.toString('latin1');
      const model = /name="model"\r\n\r\n([^\r]*)\r\n/.exec(text)?.[1];
      const fileStart = text.search(/name="file"; filename="[^"]*"\r\n(?:[^\r]+\r\n)*\r\n/);
      const headerEnd = text.indexOf('\r\n\r\n', fileStart) + 4;
      uploads.push({
        authorization: req.headers.authorization,
        model,
        fileBytes: raw.subarray(headerEnd, headerEnd + 16),
      });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({ text: `Segment ${uploads.length}: Guten Tag aus dem Lautsprecher.` }),
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseURL = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
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
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

const env = () => ({
  HD_TRANSCRIBE_BASE_URL: baseURL,
  HD_TRANSCRIBE_API_KEY: 'test-key',
  HD_TRANSCRIBE_MODEL: 'whisper-stand-in',
  HD_TRANSCRIBE_SEGMENT_SECONDS: '1',
});

describe('extract_text: audio', () => {
  it('cuts the audio with ffmpeg and transcribes each segment, in order', async () => {
    const doc = await addDocument(ACCOUNT_A, [{ name: 'ansage.wav', content: speech }]);
    uploads.length = 0;
    const stats = statsOf(await extract(doc, { env: env() }));
    expect(stats.file_types).toEqual({ audio: 1 });
    // espeak speaks that sentence in about three seconds: several one-second segments.
    expect(uploads.length).toBeGreaterThanOrEqual(2);
    for (const upload of uploads) {
      expect(upload).toMatchObject({ authorization: 'Bearer test-key', model: 'whisper-stand-in' });
      // Each upload is MP3 (an ID3 tag or an MPEG frame header).
      const head = upload.fileBytes;
      expect(head.subarray(0, 3).toString('latin1') === 'ID3' || head[0] === 0xff).toBe(true);
    }
    const text = (await chunksOf(doc)).map((c) => c.content).join('\n\n');
    expect(text).toMatch(/^Segment 1: Guten Tag aus dem Lautsprecher\.\s+Segment 2:/);
    expect(text).toContain(`Segment ${uploads.length}:`);
  }, 60_000);

  it('fails clearly without a configured endpoint, and retries when the endpoint fails', async () => {
    const doc = await addDocument(ACCOUNT_A, [{ name: 'ohne.wav', content: speech }]);
    await expectFailure(
      await extract(doc),
      doc,
      'UNSUPPORTED_FILE',
      /needs a transcription endpoint, and none is configured \(HD_TRANSCRIBE_BASE_URL\)/,
    );
    failWith = 503;
    try {
      const outcome = await extract(doc, { env: env() });
      expect(outcome.outcome).toBe('retrying');
      if (outcome.outcome === 'retrying') {
        expect(outcome.error).toMatchObject({ code: 'LLM_FAILED', retryable: true });
        expect(outcome.error.message).toMatch(/ohne\.wav: the transcription endpoint answered 503/);
      }
      failWith = 400;
      const bad = await extract(doc, { env: env() });
      expect(bad).toMatchObject({
        outcome: 'failed',
        error: { code: 'LLM_FAILED', retryable: false },
      });
      expect(await chunksOf(doc)).toEqual([]);
    } finally {
      failWith = undefined;
    }
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
    uploads.length = 0;
    const outcome = await extract(doc, { env: env() });
    await expectFailure(
      outcome,
      doc,
      'UNSUPPORTED_FILE',
      /voice-note\.mp3: the file is a media playlist/,
    );
    expect(uploads).toEqual([]);
  }, 60_000);

  it('ffmpeg reads only the one file, as the sniffed format, even if the sniffing missed a playlist', async () => {
    const target = await victimMp3();
    const attack = join(h.work, 'voice-note.mp3');
    writeFileSync(attack, hlsBehindId3(target));
    const transcriber = new OpenAiTranscriber({
      baseURL,
      apiKey: 'test-key',
      model: 'whisper-stand-in',
      segmentSeconds: 1,
      timeoutMs: 30_000,
      maxMemoryMb: 1024,
      workDir: h.work,
    });
    uploads.length = 0;
    const signal = new AbortController().signal;
    // As MP3 (what the bytes claim) the playlist is no audio: a clear refusal.
    await expect(
      transcriber.transcribe(attack, 'audio/mpeg', 'voice-note.mp3', signal),
    ).rejects.toMatchObject({
      code: 'INVALID_INPUT',
      message: expect.stringMatching(/^voice-note\.mp3: the audio could not be decoded as mp3/),
    });
    expect(uploads).toEqual([]);
    // The same transcriber reads B's real MP3 when it is the file it was given.
    await expect(transcriber.transcribe(target, 'audio/mpeg', 'b.mp3', signal)).resolves.toMatch(
      /Segment 1/,
    );
    expect(uploads.length).toBeGreaterThan(0);
  }, 60_000);
});
