import { describe, expect, it } from 'vitest';
import type { LeasedJob } from '../contract/jobs.ts';
import type { JobLogLine, NewJobLogLine } from '../control-plane/db/transport.ts';
import { JobLogCollector, type JobLogLimits } from '../scheduler/job-logs.ts';
import { MAX_LINE_CHARS, parseOutputLine } from '../scheduler/output-line.ts';
import { memoryLogger } from './helpers/runtime.ts';

const AT = new Date('2025-01-02T03:04:05.678Z');

describe('parseOutputLine', () => {
  it('takes level, msg and time from a pino line and keeps the rest as fields', () => {
    const line = JSON.stringify({
      level: 50,
      time: '2025-01-01T00:00:00.123Z',
      pid: 7,
      hostname: 'box',
      name: 'runner',
      job_id: 'j1',
      msg: 'it broke',
      err: { message: 'x' },
    });
    expect(parseOutputLine(line, 3, AT)).toEqual({
      seq: 3,
      level: 'error',
      message: 'it broke',
      fields: { name: 'runner', job_id: 'j1', err: { message: 'x' } },
      logged_at: '2025-01-01T00:00:00.123Z',
    });
  });

  it("reads pino's epoch-millisecond time and names every pino level", () => {
    const at = Date.UTC(2024, 5, 1);
    const parsed = [10, 20, 30, 40, 50, 60, 35].map(
      (level) => parseOutputLine(JSON.stringify({ level, time: at, msg: 'm' }), 1, AT).level,
    );
    expect(parsed).toEqual(['trace', 'debug', 'info', 'warn', 'error', 'fatal', '35']);
    expect(parseOutputLine(JSON.stringify({ level: 30, time: at }), 1, AT)).toEqual({
      seq: 1,
      level: 'info',
      message: '',
      fields: null,
      logged_at: new Date(at).toISOString(),
    });
  });

  it('stores any other text as an info line, received now', () => {
    for (const text of ['plain text', '{ not json', '[1, 2]', '{"time": "yesterday"} x', '']) {
      expect(parseOutputLine(text, 2, AT)).toEqual({
        seq: 2,
        level: 'info',
        message: text,
        fields: null,
        logged_at: AT.toISOString(),
      });
    }
    // A time that is no time falls back to the time of receipt.
    expect(parseOutputLine('{"msg":"m","time":"soon"}', 1, AT).logged_at).toBe(AT.toISOString());
    expect(parseOutputLine('{"msg":"m","time":1e20}', 1, AT).logged_at).toBe(AT.toISOString());
  });

  it('replaces what jsonb refuses (NUL, lone surrogates), in text and in fields', () => {
    expect(parseOutputLine('a\0b\uD800c', 1, AT).message).toBe('a\uFFFDb\uFFFDc');
    const pino = parseOutputLine(JSON.stringify({ msg: 'x\0', f: ['\uDC00', '😀'] }), 1, AT);
    expect(pino).toMatchObject({ message: 'x\uFFFD', fields: { f: ['\uFFFD', '😀'] } });
  });

  it('cuts a line that is too long, and says by how much', () => {
    const long = `{"msg":"${'y'.repeat(MAX_LINE_CHARS + 100)}"}`;
    const { message, fields } = parseOutputLine(long, 1, AT);
    expect(message).toMatch(/… \[110 characters cut\]$/);
    expect(message.length).toBeLessThan(MAX_LINE_CHARS + 30);
    expect(fields).toBeNull(); // no longer JSON
  });
});

/** A database stand-in whose appendJobLogs the test switches between behaviours. */
function fakeDb(last?: Pick<JobLogLine, 'attempt' | 'seq'>) {
  const batches: NewJobLogLine[][] = [];
  const state = { mode: 'ok' as 'ok' | 'down' | 'hang' | 'lost' | 'refused', calls: 0 };
  const fail = (code: string, message: string, detail?: string) =>
    Object.assign(new Error(message), { code, detail });
  const db = {
    async appendJobLogs(_jobId: string, _token: string, lines: readonly NewJobLogLine[]) {
      state.calls++;
      if (state.mode === 'down') throw fail('ECONNREFUSED', 'connect ECONNREFUSED');
      if (state.mode === 'hang') return new Promise<number>(() => {});
      if (state.mode === 'lost') throw fail('HDL01', 'lease lost', '{"status":"running"}');
      if (state.mode === 'refused') throw fail('22P02', 'invalid input syntax');
      batches.push([...lines]);
      return lines.length;
    },
    async listJobLogs() {
      return last ? [{ ...last, level: 'info', message: '', fields: null, logged_at: AT }] : [];
    },
  };
  const stored = () => batches.flat();
  return { db, batches, state, stored };
}

const JOB = { id: 'job-1', attempts: 2, lease_token: 'token' } as LeasedJob;

function collector(
  db: ReturnType<typeof fakeDb>['db'],
  limits: Partial<JobLogLimits> = {},
  job = JOB,
) {
  const { log, lines } = memoryLogger('warn');
  const logs = new JobLogCollector({
    db,
    job,
    log,
    limits: { flushIntervalMs: 60_000, ...limits },
  });
  return { logs, warnings: lines };
}

const pushAll = (logs: JobLogCollector, n: number, from = 1) => {
  for (let i = from; i < from + n; i++) logs.push(`line ${i}`);
};

describe('JobLogCollector', () => {
  it('sends full batches at once, the rest on finish, numbered from 1', async () => {
    const f = fakeDb();
    const { logs, warnings } = collector(f.db, { batchLines: 200 });
    pushAll(logs, 450);
    await expect.poll(() => f.batches.map((b) => b.length)).toEqual([200, 200]);
    await logs.finish();
    expect(f.batches.map((b) => b.length)).toEqual([200, 200, 50]);
    expect(f.stored().map((l) => l.seq)).toEqual(Array.from({ length: 450 }, (_, i) => i + 1));
    expect(warnings).toEqual([]);
    logs.push('after the end'); // ignored, not thrown
    await logs.finish();
    expect(f.stored()).toHaveLength(450);
  });

  it('sends what waited longer than the flush interval', async () => {
    const f = fakeDb();
    const { logs } = collector(f.db, { flushIntervalMs: 20 });
    logs.push('only line');
    await expect.poll(() => f.stored().map((l) => l.message)).toEqual(['only line']);
    await logs.finish();
  });

  it('numbers on after the lines already stored for the same attempt', async () => {
    const same = fakeDb({ attempt: 2, seq: 41 });
    const a = collector(same.db).logs;
    pushAll(a, 2);
    await a.finish();
    expect(same.stored().map((l) => l.seq)).toEqual([42, 43]);
    const earlier = fakeDb({ attempt: 1, seq: 41 });
    const b = collector(earlier.db).logs;
    pushAll(b, 2);
    await b.finish();
    expect(earlier.stored().map((l) => l.seq)).toEqual([1, 2]);
  });

  it('holds bounded memory while the database is down, and marks what it dropped', async () => {
    const f = fakeDb();
    const line = 'line 10'.length + 64; // each pushed line counts its text + 64
    const { logs, warnings } = collector(f.db, {
      batchLines: 5,
      maxPendingChars: 10 * line,
      flushIntervalMs: 20,
    });
    f.state.mode = 'down';
    pushAll(logs, 100);
    await expect.poll(() => f.state.calls).toBeGreaterThanOrEqual(3);
    expect(warnings).toHaveLength(1); // told once, not per try
    f.state.mode = 'ok';
    await expect.poll(() => f.stored()).toHaveLength(10);
    logs.push('back');
    await logs.finish();
    const stored = f.stored();
    // Each line keeps its place in the output as its seq; the marker takes the first
    // dropped line's (the output read again from the start is numbered the same).
    expect(stored.map((l) => l.seq)).toEqual([...Array.from({ length: 11 }, (_, i) => i + 1), 101]);
    expect(stored.slice(0, 10).map((l) => l.message)).toEqual(
      Array.from({ length: 10 }, (_, i) => `line ${i + 1}`),
    );
    expect(stored[10]).toMatchObject({
      level: 'warn',
      message: 'hd-runner: 90 output lines dropped here: the database did not keep up',
      fields: { dropped_lines: 90 },
    });
    expect(stored[11]!.message).toBe('back');
    expect(JSON.parse(warnings.at(-1)!)).toMatchObject({
      msg: 'not every line the runner printed reached hd_job_logs',
      stored: 12,
      lost: 90,
    });
  });

  it('holds the job up for finalFlushMs at most, and gives up after keepTryingMs', async () => {
    const f = fakeDb();
    const { logs, warnings } = collector(f.db, { finalFlushMs: 50, keepTryingMs: 400 });
    f.state.mode = 'hang';
    pushAll(logs, 3);
    await logs.finish(); // resolves although the database never answers
    expect(warnings).toEqual([]);
    expect(await logs.done()).toBe(3);
    expect(JSON.parse(warnings.at(-1)!)).toMatchObject({ stored: 0, lost: 3 });
  });

  it('counts a line that comes after the runner ended as lost, not silently', async () => {
    const f = fakeDb();
    const { logs, warnings } = collector(f.db, { finalFlushMs: 10, keepTryingMs: 300 });
    f.state.mode = 'hang';
    pushAll(logs, 2);
    await logs.finish();
    const lost = logs.done();
    logs.push('printed after the end'); // a pipe's last data after the exit
    expect(await lost).toBe(3);
    expect(JSON.parse(warnings.at(-1)!)).toMatchObject({ stored: 0, lost: 3 });
  });

  it('keeps sending after the runner exited until the database is back', async () => {
    const f = fakeDb();
    const { logs, warnings } = collector(f.db, { finalFlushMs: 10 });
    f.state.mode = 'down';
    pushAll(logs, 3);
    await logs.finish();
    await expect.poll(() => f.state.calls).toBeGreaterThanOrEqual(2); // tried again
    expect(f.stored()).toEqual([]);
    f.state.mode = 'ok';
    expect(await logs.done()).toBe(0);
    expect(f.stored().map((l) => l.message)).toEqual(['line 1', 'line 2', 'line 3']);
    expect(warnings.map((w) => JSON.parse(w).code)).toEqual(['DATABASE_UNAVAILABLE']);
  });

  it('tries again after a dropped connection, which is not a verdict on the batch', async () => {
    const f = fakeDb();
    const { logs } = collector(f.db, { finalFlushMs: 10 });
    const original = f.db.appendJobLogs.bind(f.db);
    let dropped = false;
    f.db.appendJobLogs = async (...args) => {
      if (dropped) return original(...args);
      dropped = true;
      throw new Error('Connection terminated unexpectedly'); // what pg throws, no SQLSTATE
    };
    pushAll(logs, 2);
    await logs.finish();
    expect(await logs.done()).toBe(0);
    expect(f.stored()).toHaveLength(2);
  });

  it('stops for good when the lease is gone, and drops a batch the database refuses', async () => {
    const lost = fakeDb();
    const a = collector(lost.db, { batchLines: 2 });
    lost.state.mode = 'lost';
    pushAll(a.logs, 4);
    await expect.poll(() => a.warnings.length).toBe(1);
    lost.state.mode = 'ok';
    a.logs.push('later');
    await a.logs.finish();
    expect(lost.stored()).toEqual([]);
    expect(JSON.parse(a.warnings[0]!)).toMatchObject({ code: 'LEASE_LOST' });

    const refused = fakeDb();
    const b = collector(refused.db, { batchLines: 2 });
    refused.state.mode = 'refused';
    pushAll(b.logs, 2);
    await expect.poll(() => b.warnings.length).toBe(1);
    refused.state.mode = 'ok';
    pushAll(b.logs, 2, 3);
    await b.logs.finish();
    expect(refused.stored().map((l) => l.message)).toEqual(['line 3', 'line 4']);
    expect(JSON.parse(b.warnings.at(-1)!)).toMatchObject({ stored: 2, lost: 2 });
  });
});
