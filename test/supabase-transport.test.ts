import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HdError } from '../contract/errors.ts';
import { SupabaseDb, wakeFromChange } from '../control-plane/db/supabase.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { signJwt } from './helpers/postgrest.ts';
import { ACCOUNT_A, ACCOUNT_B, jsonl, tempDir } from './helpers/runtime.ts';
import { startLocalSupabase, type LocalSupabase } from './helpers/supabase-proxy.ts';

// The `supabase` transport and storage end to end: the CLI talks to a real PostgREST
// through supabase-js; Storage is the local stand-in (Supabase Storage cannot run here).
let t: TestDatabase;
let supabase: LocalSupabase;
let pgEnv: Record<string, string>;
let sbEnv: Record<string, string>;
let work: string;

beforeAll(async () => {
  t = await createTestDatabase();
  supabase = await startLocalSupabase(t.url);
  await supabase.storage.createBucket('hd_uploads_raw');
  work = await tempDir('hd-test-sb-');
  const common = { HD_WORKER_ID: 'test-worker', HD_LOG_LEVEL: 'silent' };
  pgEnv = { ...common, HD_DATABASE_URL: t.url, HD_STORAGE_ROOT: join(work, 'fs') };
  sbEnv = {
    ...common,
    HD_TRANSPORT: 'supabase',
    HD_STORAGE: 'supabase',
    SUPABASE_URL: supabase.url,
    SUPABASE_SERVICE_ROLE_KEY: supabase.serviceRoleKey,
  };
});
afterAll(async () => {
  await supabase.stop();
  await t.drop();
});

function cli(args: string[], env: Record<string, string>) {
  return execa(process.execPath, ['cli/main.ts', ...args], {
    env: { PATH: process.env.PATH ?? '', ...env },
    extendEnv: false,
    reject: false,
  });
}

const IMPORT_ROWS = [
  { title: 'One', source_type: 'doc', source_ref: 'sb-1' },
  { title: 'Two', source_type: 'doc', source_ref: 'sb-2', metadata: { k: 1 } },
  { title: 'Three', source_type: 'doc', source_ref: 'sb-3', account_id: ACCOUNT_B },
];

describe('the supabase transport through the CLI', () => {
  it('imports a file end to end: enqueue uploads to Storage, run completes over REST', async () => {
    const file = join(work, 'assets.jsonl');
    await writeFile(file, `${jsonl(IMPORT_ROWS)}not json\n`);
    const stats: Record<string, unknown>[] = [];
    for (const [env, account] of [
      [sbEnv, ACCOUNT_A],
      [pgEnv, ACCOUNT_B],
    ] as const) {
      const enqueued = await cli(['enqueue', '--account', account, '--file', file, '--json'], env);
      expect(enqueued.stderr).toBe('');
      const job = JSON.parse(enqueued.stdout) as { id: string; debug: { path: string } };
      const run = await cli(['run', '--job-id', job.id], env);
      expect(run.exitCode, run.stderr).toBe(0);
      const done = await t.db.getJob(job.id);
      expect(done).toMatchObject({ status: 'completed', account_id: account });
      const { lines, inserted, updated, unchanged, invalid } = done!.debug.stats as Record<
        string,
        unknown
      >;
      stats.push({ lines, inserted, updated, unchanged, invalid });
      if (env === sbEnv) {
        expect(supabase.storage.contentTypes.get(`hd_uploads_raw/${job.debug.path}`)).toBe(
          'application/x-ndjson',
        );
      }
    }
    // Same file, same result, whichever transport and storage carried it.
    expect(stats[0]).toEqual(stats[1]);
    expect(stats[0]).toMatchObject({ inserted: 3 });
    const { rows } = await t.sql.query(
      `select account_id, count(*)::int as n from hd_assets where source_ref like 'sb-%' group by 1 order by 1`,
    );
    expect(rows).toEqual([
      { account_id: ACCOUNT_A, n: 3 },
      { account_id: ACCOUNT_B, n: 3 },
    ]);
  });

  it('prints the same for jobs list|show|requeue|cancel on both transports', async () => {
    const same = async (args: string[]) => {
      const [viaPg, viaSb] = await Promise.all([cli(args, pgEnv), cli(args, sbEnv)]);
      expect(viaSb.stdout, args.join(' ')).toBe(viaPg.stdout);
      expect(viaSb.stderr, args.join(' ')).toBe(viaPg.stderr);
      expect(viaSb.exitCode, args.join(' ')).toBe(viaPg.exitCode);
      return viaPg;
    };
    const queued = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'ops_probe', debug: {} });
    const other = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'ops_probe', debug: {} });
    await same(['jobs', 'list', '--account', ACCOUNT_A]);
    await same(['jobs', 'show', queued.id]);

    const cancelled = await cli(['jobs', 'cancel', queued.id, '--reason', 'ops'], sbEnv);
    expect(cancelled.stdout.trim()).toBe(`${queued.id} failed (CANCELLED)`);
    expect((await cli(['jobs', 'cancel', other.id, '--reason', 'ops'], pgEnv)).stdout.trim()).toBe(
      `${other.id} failed (CANCELLED)`,
    );
    await same(['jobs', 'list', '--status', 'failed', '--type', 'ops_probe', '--json']);
    const requeued = await cli(['jobs', 'requeue', queued.id], sbEnv);
    expect(requeued.stdout.trim()).toBe(`${queued.id} queued`);
    await same(['jobs', 'show', queued.id, '--json']);

    const [leased] = await t.db.claimJobs({ workerId: 'w', jobId: queued.id, leaseSeconds: 60 });
    await t.db.appendJobLogs(
      queued.id,
      leased!.lease_token!,
      ['first', 'second\nline', 'third'].map((message, i) => ({
        seq: i + 1,
        level: i === 2 ? 'warn' : 'info',
        message,
        fields: null,
        logged_at: new Date(Date.UTC(2025, 0, 1, 12, 0, i)).toISOString(),
      })),
    );
    const shown = await same(['jobs', 'show', queued.id, '--logs', '--limit', '2']);
    expect(shown.stdout).toMatch(
      /log \(last 2 lines; older lines exist: --limit N, up to 1000\)\nattempt +time +level +message\n[- ]+\n1 +2025-01-01T12:00:01\.000Z +info +second\\nline\n1 +2025-01-01T12:00:02\.000Z +warn +third$/,
    );
    const json = await same(['jobs', 'show', queued.id, '--logs', '--json']);
    expect(JSON.parse(json.stdout).logs.map((l: { message: string }) => l.message)).toEqual([
      'first',
      'second\nline',
      'third',
    ]);
    const refused = await same(['jobs', 'requeue', queued.id]);
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr).toContain('cancel it before requeueing');
    expect((await same(['jobs', 'show', '00000000-0000-4000-8000-000000000000'])).exitCode).toBe(1);
  }, 60_000);

  it('runs the scheduler over REST: claims by polling, runs the job, stops on SIGTERM', async () => {
    const file = join(work, 'sched.jsonl');
    await writeFile(file, jsonl([{ title: 'S', source_type: 'doc', source_ref: 'sched-1' }]));
    const enqueued = await cli(['enqueue', '--account', ACCOUNT_A, '--file', file], sbEnv);
    const jobId = enqueued.stdout.trim();
    const scheduler = cli(['scheduler', '--slots', '1'], {
      ...sbEnv,
      HD_POLL_INTERVAL_MS: '200',
      HD_LOG_LEVEL: 'info',
    });
    await expect
      .poll(async () => (await t.db.getJob(jobId))?.status, { timeout: 20_000 })
      .toBe('completed');
    scheduler.kill('SIGTERM');
    const result = await scheduler;
    expect(result.exitCode).toBe(0);
    expect(result.stderr).not.toContain(supabase.serviceRoleKey);
    expect(result.stderr).not.toContain(supabase.serviceRoleKey.split('.')[2]);
  });

  it('stops at start with one line on a wrong combination or another project', async () => {
    const missing = await cli(['jobs', 'list'], { HD_TRANSPORT: 'supabase' });
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr.trim()).toBe(
      'hd-runner: invalid configuration: SUPABASE_URL is required for HD_TRANSPORT=supabase (it is not set)',
    );
    const realtime = await cli(['jobs', 'list'], { ...pgEnv, HD_REALTIME: 'true' });
    expect(realtime.stderr.trim().split('\n')).toHaveLength(1);
    expect(realtime.stderr).toContain('HD_REALTIME applies to HD_TRANSPORT=supabase only');
    const elsewhere = await cli(['jobs', 'list'], {
      ...sbEnv,
      HD_EXPECTED_PROJECT_REF: 'abcdefghijklmnopqrst',
    });
    expect(elsewhere.exitCode).toBe(2);
    expect(elsewhere.stderr.trim()).toMatch(
      /^hd-runner: invalid configuration: HD_EXPECTED_PROJECT_REF is abcdefghijklmnopqrst but this worker talks to 127\.0\.0\.1:\d+ \(project local\)/,
    );
    expect(elsewhere.stderr).not.toContain(supabase.serviceRoleKey);
  });
});

describe('SupabaseDb error classification', () => {
  const errorOf = (promise: Promise<unknown>) =>
    promise.then(
      () => {
        throw new Error('expected a rejection');
      },
      (e: unknown) => e as HdError,
    );

  it('reports an unreachable API as DATABASE_UNAVAILABLE (retryable)', async () => {
    const db = new SupabaseDb({ url: 'http://127.0.0.1:9', serviceRoleKey: 'x'.repeat(40) });
    const error = await errorOf(db.claimJobs({ workerId: 'w', leaseSeconds: 60 }));
    expect(error).toMatchObject({ code: 'DATABASE_UNAVAILABLE', retryable: true });
  });

  it("refuses another project's key permanently, naming the variable", async () => {
    const key = signJwt('not-this-projects-secret-0123456789abcdef', { role: 'service_role' });
    const db = new SupabaseDb({ url: supabase.url, serviceRoleKey: key });
    const error = await errorOf(db.claimJobs({ workerId: 'w', leaseSeconds: 60 }));
    expect(error).toMatchObject({ code: 'INTERNAL_ERROR', retryable: false });
    expect(error.message).toContain('SUPABASE_SERVICE_ROLE_KEY');
  });

  it('says what to do when PostgREST does not know a function', async () => {
    const db = new SupabaseDb({ url: supabase.url, serviceRoleKey: supabase.serviceRoleKey });
    const error = await errorOf(db.rpc('hd_no_such_function', {}));
    expect(error).toMatchObject({ code: 'INTERNAL_ERROR', retryable: false });
    expect(error.message).toContain("NOTIFY pgrst, 'reload schema'");
  });

  it('turns Realtime changes into the wake-ups the scheduler acts on', () => {
    const row = { id: 'j1', job_type: 'extract_text' };
    expect(wakeFromChange({ eventType: 'INSERT', new: { ...row, status: 'queued' } })).toEqual({
      kind: 'queued',
      jobType: 'extract_text',
    });
    expect(
      wakeFromChange({
        eventType: 'UPDATE',
        new: { ...row, status: 'failed', error_code: 'CANCELLED' },
      }),
    ).toEqual({ kind: 'cancelled', jobId: 'j1' });
    expect(wakeFromChange({ eventType: 'UPDATE', new: { ...row, status: 'running' } })).toBe(
      undefined,
    );
  });
});
