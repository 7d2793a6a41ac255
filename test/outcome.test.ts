import { describe, expect, it } from 'vitest';
import { EXIT_CODES } from '../contract/errors.ts';
import type { RunnerExit } from '../scheduler/launcher.ts';
import { classifyExit } from '../scheduler/outcome.ts';

const exit = (overrides: Partial<RunnerExit> = {}): RunnerExit => ({
  exitCode: 1,
  signal: null,
  timedOut: false,
  stoppedFor: null,
  oomKilled: false,
  durationMs: 1234,
  outputTail: [],
  ...overrides,
});

describe('classifyExit', () => {
  it('leaves alone what the runner recorded itself, whatever else happened', () => {
    const notRecorded = new Set<number>([1, 2, EXIT_CODES.databaseLost]);
    for (const code of Object.values(EXIT_CODES).filter((c) => !notRecorded.has(c))) {
      expect(classifyExit(exit({ exitCode: code })), `exit ${code}`).toEqual({ kind: 'recorded' });
      expect(
        classifyExit(exit({ exitCode: code, stoppedFor: 'shutdown', oomKilled: true })),
      ).toEqual({ kind: 'recorded' });
    }
  });

  it('leaves a cancelled runner alone: the cancel already failed the job', () => {
    expect(
      classifyExit(exit({ stoppedFor: 'cancelled', exitCode: null, signal: 'SIGKILL' })),
    ).toEqual({ kind: 'recorded' });
    expect(classifyExit(exit({ stoppedFor: 'cancelled', oomKilled: true }))).toEqual({
      kind: 'recorded',
    });
  });

  it('hands the job back when a shutdown stopped a runner that did not', () => {
    expect(
      classifyExit(exit({ stoppedFor: 'shutdown', exitCode: null, signal: 'SIGKILL' })),
    ).toEqual({ kind: 'release' });
    expect(classifyExit(exit({ stoppedFor: 'shutdown', oomKilled: true }))).toEqual({
      kind: 'release',
    });
  });

  it('hands the job back when the runner lost the database (exit 14), unless it was cancelled', () => {
    expect(classifyExit(exit({ exitCode: EXIT_CODES.databaseLost }))).toEqual({ kind: 'release' });
    expect(classifyExit(exit({ exitCode: 14, stoppedFor: 'shutdown' }))).toEqual({
      kind: 'release',
    });
    expect(classifyExit(exit({ exitCode: 14, stoppedFor: 'cancelled' }))).toEqual({
      kind: 'recorded',
    });
  });

  it('classifies a crash by exit code or by signal, with the details kept', () => {
    const tail = Array.from({ length: 30 }, (_, i) => `line ${i}`);
    expect(classifyExit(exit({ exitCode: 3, outputTail: tail }))).toEqual({
      kind: 'fail',
      code: 'CRASHED',
      message: 'the runner exited with code 3 without reporting a result',
      details: { exit_code: 3, signal: null, duration_ms: 1234, output_tail: tail.slice(-20) },
    });
    expect(classifyExit(exit({ exitCode: null, signal: 'SIGSEGV' }))).toMatchObject({
      code: 'CRASHED',
      message: 'the runner was killed by SIGSEGV without reporting a result',
      details: { exit_code: null, signal: 'SIGSEGV' },
    });
    // Exit 1 (unexpected) and 2 (usage) are not results the runner recorded.
    expect(classifyExit(exit({ exitCode: 2 }))).toMatchObject({ code: 'CRASHED' });
  });

  it('classifies out of memory before a timeout, and a timeout before a crash', () => {
    expect(
      classifyExit(exit({ exitCode: 137, signal: 'SIGKILL', oomKilled: true, timedOut: true })),
    ).toMatchObject({
      kind: 'fail',
      code: 'OOM_KILLED',
      message: 'the runner ran out of memory (exit 137)',
    });
    expect(
      classifyExit(exit({ exitCode: null, signal: 'SIGABRT', oomKilled: true })),
    ).toMatchObject({ message: 'the runner ran out of memory (exit SIGABRT)' });
    expect(
      classifyExit(exit({ exitCode: null, signal: 'SIGKILL', timedOut: true, durationMs: 75_000 })),
    ).toEqual({
      kind: 'fail',
      code: 'PROCESSING_TIMEOUT',
      message: 'the runner was killed after 75000 ms',
      details: { exit_code: null, signal: 'SIGKILL', duration_ms: 75_000, output_tail: [] },
    });
  });
});
