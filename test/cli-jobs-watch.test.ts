import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configToEnv } from '../control-plane/config.ts';
import { batchesOf } from '../control-plane/db/batches.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, tempDir, testConfig } from './helpers/runtime.ts';

// `hd-runner jobs watch` as an operator runs it, against jobs that move while it watches.
// Each change waits for the watcher to have printed the previous state (no sleeps).
let t: TestDatabase;
let env: Record<string, string>;
beforeAll(async () => {
  t = await createTestDatabase();
  env = { PATH: process.env.PATH ?? '', ...configToEnv(testConfig(t.url, await tempDir())) };
});
afterAll(() => t.drop());

function watch(...args: string[]) {
  return execa(process.execPath, ['cli/main.ts', 'jobs', 'watch', '--interval', '100', ...args], {
    env,
    extendEnv: false,
    reject: false,
  });
}

/** Resolves when the child has printed a line matching `test`. */
function printed(child: ResultPromise, test: (line: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    let buffer = '';
    const onData = (chunk: Buffer) => {
      buffer += chunk.toString();
      const line = buffer.split('\n').find(test);
      if (line !== undefined) {
        child.stdout!.off('data', onData);
        resolve(line);
      }
    };
    child.stdout!.on('data', onData);
    void child.then((r) => reject(new Error(`watch exited ${r.exitCode}: ${r.stdout}`)));
  });
}

describe('hd-runner jobs watch', () => {
  it('prints JSON events for a batch as its jobs move, and exits 10 when one failed', async () => {
    const batches = batchesOf(t.db);
    const batch = await batches.enqueueBatch({
      accountId: ACCOUNT_A,
      name: 'watched',
      jobs: [
        { jobType: 'watch_probe', debug: {} },
        { jobType: 'watch_probe', debug: {} },
      ],
    });
    const [first, second] = await batches.listBatchJobs(batch.id, 2);
    const child = watch('--batch', batch.id.slice(0, 8), '--json');
    const event = (pattern: object) => (line: string) => {
      try {
        return expect.objectContaining(pattern).asymmetricMatch(JSON.parse(line));
      } catch {
        return false;
      }
    };
    await printed(child, event({ event: 'batch', status: 'active', queued: 2 }));

    const [a] = await t.db.claimJobs({ workerId: 'w', leaseSeconds: 60, jobId: first!.id });
    await t.db.reportProgress(a!.id, a!.lease_token!, 40, 'processing_pages:2/5');
    await printed(
      child,
      event({
        event: 'job',
        job_id: a!.id,
        progress_percent: 40,
        progress_step: 'processing_pages:2/5',
      }),
    );
    await t.db.completeJob(a!.id, a!.lease_token!, {});
    await printed(child, event({ event: 'job', job_id: a!.id, status: 'completed' }));
    const [b] = await t.db.claimJobs({ workerId: 'w', leaseSeconds: 60, jobId: second!.id });
    await t.db.failJob(b!.id, b!.lease_token!, {
      code: 'INVALID_INPUT',
      message: 'bad',
      retryable: false,
    });
    const result = await child;
    expect(result.exitCode).toBe(10);
    const events = result.stdout.split('\n').map((l) => JSON.parse(l));
    expect(events.at(-1)).toEqual({ event: 'end', exit_code: 10 });
    expect(events).toContainEqual(
      expect.objectContaining({
        event: 'job',
        job_id: b!.id,
        status: 'failed',
        error_code: 'INVALID_INPUT',
      }),
    );
    expect(events).toContainEqual(
      expect.objectContaining({
        event: 'batch',
        status: 'failed',
        completed: 1,
        failed: 1,
        percent: 100,
      }),
    );
  });

  it('prints a plain line per change without a terminal, and exits 0 when all completed', async () => {
    const job = await t.db.enqueueJob({
      accountId: ACCOUNT_A,
      jobType: 'evil\u001b[2J',
      debug: {},
    });
    const child = watch(job.id.slice(0, 8));
    await printed(child, (l) => l.includes('queued'));
    const [c] = await t.db.claimJobs({ workerId: 'w', leaseSeconds: 60, jobId: job.id });
    await t.db.completeJob(c!.id, c!.lease_token!, {});
    const result = await child;
    expect(result.exitCode).toBe(0);
    expect(result.stdout.split('\n')).toEqual([
      `${job.id.slice(0, 8)} evil\\u001b[2J queued`,
      ...(result.stdout.includes(' running')
        ? [`${job.id.slice(0, 8)} evil\\u001b[2J running 0% claimed`]
        : []),
      `${job.id.slice(0, 8)} evil\\u001b[2J completed`,
    ]);
  });

  it('draws progress bars on a terminal, tenant text escaped, cursor codes kept', async () => {
    const job = await t.db.enqueueJob({
      accountId: ACCOUNT_A,
      jobType: 'bar\u001b]0;x\u0007',
      debug: {},
    });
    const [c] = await t.db.claimJobs({ workerId: 'w', leaseSeconds: 60, jobId: job.id });
    await t.db.completeJob(c!.id, c!.lease_token!, {});
    // `script` gives the command a pseudo-terminal, as an operator's shell has.
    const result = await execa(
      'script',
      ['-qec', `${process.execPath} cli/main.ts jobs watch ${job.id}`, '/dev/null'],
      { env: { ...env, COLUMNS: '120', TERM: 'xterm' }, extendEnv: false, reject: false },
    );
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain('\u001b[?25l'); // the library hides the cursor: codes reach the terminal
    expect(result.stdout).toMatch(/bar\\u001b\]0;x\\u0007 +\[█+\] 100% completed/);
    expect(result.stdout).not.toContain('\u001b]0;x');
  });

  it('wants exactly one of ids, --batch or --account', async () => {
    const run = await watch('--account', ACCOUNT_A, '--batch', 'abcd');
    expect(run.exitCode).toBe(2);
    expect(run.stderr).toContain('give job ids, or --batch ID, or --account UUID (one of them)');
  });
});
