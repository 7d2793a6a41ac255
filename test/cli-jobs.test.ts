import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configToEnv } from '../control-plane/config.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, ACCOUNT_B, tempDir, testConfig } from './helpers/runtime.ts';

// `hd-runner jobs …` as an operator runs it: a child process against the suite's PostgreSQL.
let t: TestDatabase;
let env: Record<string, string>;
beforeAll(async () => {
  t = await createTestDatabase();
  env = { PATH: process.env.PATH ?? '', ...configToEnv(testConfig(t.url, await tempDir())) };
});
afterAll(() => t.drop());

function jobs(...args: string[]) {
  return execa(process.execPath, ['cli/main.ts', 'jobs', ...args], {
    env,
    extendEnv: false,
    reject: false,
  });
}

/** A queued job with the id given (to make ids that share a start). */
async function jobWithId(id: string, jobType = 'probe', accountId = ACCOUNT_A) {
  const job = await t.db.enqueueJob({ accountId, jobType, debug: {} });
  await t.sql.query('update hd_ingestion_jobs set id = $2 where id = $1', [job.id, id]);
  return id;
}

describe('hd-runner jobs', () => {
  it('accepts a unique start of a job id, and says when a start is not unique', async () => {
    const one = await jobWithId('c0ffee01-0000-4000-8000-000000000001');
    await jobWithId('c0ffee02-0000-4000-8000-000000000002');
    const shown = await jobs('show', 'C0FFEE01');
    expect(shown.exitCode, shown.stderr).toBe(0);
    expect(shown.stdout).toMatch(new RegExp(`^id +${one}$`, 'm'));

    const ambiguous = await jobs('show', 'c0ffee0');
    expect(ambiguous.exitCode).toBe(1);
    expect(ambiguous.stderr).toBe(
      'hd-runner: AMBIGUOUS: c0ffee0 is the start of several job ids (c0ffee01-0000-4000-8000-000000000001, c0ffee02-0000-4000-8000-000000000002): give more characters',
    );
    expect((await jobs('cancel', 'c0ffee9')).stderr).toBe(
      'hd-runner: NOT_FOUND: no job id starts with c0ffee9',
    );
    const notAnId = await jobs('show', 'c0f');
    expect(notAnId.exitCode).toBe(2);
    expect(notAnId.stderr).toMatch(/"c0f" is not a job id or its start|4\+ characters/);
  });

  it('refuses to cancel or requeue a job in the wrong state: exit 1, the job unchanged', async () => {
    const queued = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'probe', debug: {} });
    const requeue = await jobs('requeue', queued.id);
    expect(requeue.exitCode).toBe(1);
    expect(requeue.stderr).toBe(
      `hd-runner: WRONG_STATE: job ${queued.id} is queued: only a failed or completed job can be requeued; nothing changed`,
    );

    const [claimed] = await t.db.claimJobs({ workerId: 'w', leaseSeconds: 60, jobId: queued.id });
    await t.db.completeJob(claimed!.id, claimed!.lease_token!, {});
    const before = await t.db.getJob(queued.id);
    const cancel = await jobs('cancel', queued.id, '--json');
    expect(cancel.exitCode).toBe(1);
    // --json stays JSON on stdout when the command fails.
    expect(JSON.parse(cancel.stdout)).toEqual({
      error: {
        code: 'WRONG_STATE',
        message: `job ${queued.id} is completed: only a queued or running job can be cancelled; nothing changed`,
      },
    });
    expect(await t.db.getJob(queued.id)).toEqual(before);

    const cancelled = await jobs('cancel', queued.id.slice(0, 8), '--reason', 'by test');
    expect(cancelled.exitCode).toBe(1); // still completed: a prefix changes nothing here
    const fresh = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'probe', debug: {} });
    const ok = await jobs('cancel', fresh.id, '--reason', 'by test');
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(ok.stdout.trim()).toBe(`${fresh.id} failed (CANCELLED)`);
  });

  it('escapes control characters from the queue instead of sending them to the terminal', async () => {
    const hostile = 'evil\u001b]0;owned\u0007\u009b2J\u202ereversed\nsecond line';
    const job = await t.db.enqueueJob({ accountId: ACCOUNT_B, jobType: hostile, debug: {} });
    for (const result of [
      await jobs('list', '--account', ACCOUNT_B),
      await jobs('show', job.id),
      await jobs('list', '--account', ACCOUNT_B, '--json'),
    ]) {
      expect(result.exitCode).toBe(0);
      // eslint-disable-next-line no-control-regex -- looking for control characters
      expect(result.stdout).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e]/);
      expect(result.stdout).toContain('evil\\u001b]0;owned\\u0007\\u009b2J\\u202ereversed');
    }
    // A table row stays one line: the newline inside the job type is shown, not obeyed.
    const table = (await jobs('list', '--account', ACCOUNT_B)).stdout.split('\n');
    expect(table).toHaveLength(3);
    expect(table[2]).toContain('reversed\\nsecond line');
  });

  it('says when a list is cut, and names the bad flag value', async () => {
    const account = 'dddddddd-dddd-4ddd-8ddd-dddddddddddd';
    for (let i = 0; i < 3; i++)
      await t.db.enqueueJob({ accountId: account, jobType: 'probe', debug: {} });
    const cut = await jobs('list', '--account', account, '--limit', '2');
    expect(cut.stdout.split('\n').filter((l) => l.includes(' probe '))).toHaveLength(2);
    expect(cut.stdout).toMatch(/the newest 2 jobs shown; more match \(--limit N/);
    const all = await jobs('list', '--account', account, '--limit', '3');
    expect(all.stdout).not.toContain('more match');
    const json = await jobs('list', '--account', account, '--limit', '2', '--json');
    expect(JSON.parse(json.stdout)).toHaveLength(2);
    expect(json.stderr).toMatch(/^jobs list: the newest 2 jobs shown; more match/);

    const bad = await jobs('list', '--limit', 'lots');
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toBe('hd-runner: jobs list: --limit must be 1..1000 (got "lots")');
  });
});
