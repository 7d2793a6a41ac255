import { describe, expect, it } from 'vitest';
import { HdError } from '../contract/errors.ts';
import { ProgressSender, type ProgressReport } from '../runner/progress-sender.ts';

// The runner's progress queue on its own, with a database call the test answers by hand
// (the order the row sees is in progress-steps.test.ts, against PostgreSQL).
function harness() {
  const sent: ProgressReport[] = [];
  const pending: { resolve: () => void; reject: (error: unknown) => void }[] = [];
  const stopped: unknown[] = [];
  const sender = new ProgressSender(
    (report) =>
      new Promise<void>((resolve, reject) => {
        sent.push(report);
        pending.push({ resolve, reject });
      }),
    (error) => stopped.push(error),
  );
  /** Answers the call in flight and waits until the next one (if any) went out. */
  const answer = async (error?: unknown) => {
    const call = pending.shift()!;
    if (error) call.reject(error);
    else call.resolve();
    await new Promise((resolve) => setImmediate(resolve));
  };
  return { sender, sent, stopped, answer };
}

describe('progress sender', () => {
  it('does not wait for the database; sends every phase in order, one call at a time, the newest counter of a waiting phase', async () => {
    const { sender, sent, answer } = harness();
    sender.report({ percent: 0, step: 'initializing' });
    sender.report({ percent: 0, step: 'downloading' });
    sender.report({ percent: 0, step: 'processing:0/1' });
    sender.report({ percent: 10, step: 'processing_pages:1/9' });
    sender.report({ percent: 50, step: 'processing_pages:5/9' });
    // Only the first is out; the rest wait for it.
    expect(sent.map((r) => r.step)).toEqual(['initializing']);
    let flushed = false;
    void sender.flush().then(() => (flushed = true));
    await answer();
    await answer();
    await answer();
    expect(flushed).toBe(false);
    await answer();
    expect(sent).toEqual([
      { percent: 0, step: 'initializing' },
      { percent: 0, step: 'downloading' },
      { percent: 0, step: 'processing:0/1' },
      { percent: 50, step: 'processing_pages:5/9' },
    ]);
    await sender.flush();
    expect(flushed).toBe(true);
    // Idle again: the next report goes out at once.
    sender.report({ percent: 90, step: 'postprocessing' });
    expect(sent.at(-1)).toEqual({ percent: 90, step: 'postprocessing' });
  });

  it('a report refused for the lease stops the job at once; another failure is thrown by the next call', async () => {
    const cancelled = harness();
    cancelled.sender.report({ percent: 0, step: 'initializing' });
    cancelled.sender.report({ percent: 0, step: 'downloading' });
    const refusal = new HdError('CANCELLED', 'the job was cancelled');
    await cancelled.answer(refusal);
    expect(cancelled.stopped).toEqual([refusal]);
    expect(cancelled.sent).toHaveLength(1); // nothing more is sent
    await expect(cancelled.sender.flush()).rejects.toBe(refusal);

    const broken = harness();
    broken.sender.report({ percent: 0, step: 'initializing' });
    const failure = new HdError('INTERNAL_ERROR', 'invalid progress step');
    await broken.answer(failure);
    expect(broken.stopped).toEqual([]);
    expect(() => broken.sender.report({ percent: 1, step: 'downloading' })).toThrow(failure);
    await expect(broken.sender.flush()).rejects.toBe(failure);
  });
});
