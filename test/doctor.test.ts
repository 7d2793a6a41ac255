import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkGpus, formatAge } from '../cli/commands/doctor-checks.ts';
import { runDoctor, type DoctorResult } from '../cli/commands/doctor.ts';
import { configToEnv, loadConfig, type Config } from '../control-plane/config.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, tempDir } from './helpers/runtime.ts';
import { startLocalSupabase, type LocalSupabase } from './helpers/supabase-proxy.ts';

// `hd-runner doctor` against real parts: the suite's PostgreSQL, a real PostgREST, and
// the Storage stand-in (Supabase Storage cannot run here).
let worker: TestDatabase; // the database this worker is configured for
let app: TestDatabase; // another one, where "the app" queues its jobs
let supabase: LocalSupabase;
let pgConfig: Config;
let sbConfig: Config;

beforeAll(async () => {
  [worker, app] = await Promise.all([createTestDatabase(), createTestDatabase()]);
  supabase = await startLocalSupabase(worker.url);
  await supabase.storage.createBucket('hd_uploads_raw');
  const root = await tempDir('hd-test-doctor-');
  await mkdir(join(root, 'hd_uploads_raw'));
  // An image no engine has: the docker check's answer does not depend on this machine.
  const common = {
    HD_WORKER_ID: 'doctor-test',
    HD_LOG_LEVEL: 'silent',
    HD_DOCKER_IMAGE: 'hd-runner-doctor-test:absent',
  };
  pgConfig = loadConfig({ ...common, HD_DATABASE_URL: worker.url, HD_STORAGE_ROOT: root });
  sbConfig = loadConfig({
    ...common,
    HD_TRANSPORT: 'supabase',
    HD_STORAGE: 'supabase',
    SUPABASE_URL: supabase.url,
    SUPABASE_SERVICE_ROLE_KEY: supabase.serviceRoleKey,
    HD_EXPECTED_PROJECT_REF: 'local',
  });
  for (let i = 0; i < 3; i++) {
    await worker.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'doctor_probe', debug: {} });
  }
  const [claimed] = await worker.db.claimJobs({ workerId: 'w', leaseSeconds: 60, limit: 1 });
  await worker.db.completeJob(claimed!.id, claimed!.lease_token!, {});
});
afterAll(async () => {
  await supabase.stop();
  await Promise.all([worker.drop(), app.drop()]);
});

const byName = (result: DoctorResult) => new Map(result.checks.map((c) => [c.check, c]));

function cli(args: string[], config: Config) {
  return execa(process.execPath, ['cli/main.ts', 'doctor', ...args], {
    env: { PATH: process.env.PATH ?? '', ...configToEnv(config) },
    extendEnv: false,
    reject: false,
  });
}

describe('hd-runner doctor', () => {
  it('reports a healthy worker on both transports, with the same queue figures', async () => {
    const [viaPg, viaSb] = [await runDoctor(pgConfig, {}), await runDoctor(sbConfig, {})];
    for (const result of [viaPg, viaSb]) {
      const checks = byName(result);
      expect(result.ok, JSON.stringify(result.checks)).toBe(true);
      expect(checks.get('database')?.status).toBe('ok');
      expect(checks.get('migrations')).toMatchObject({ status: 'ok' });
      expect(checks.get('migrations')?.detail).toMatch(/^\d+ applied and current/);
      expect(checks.get('queue')?.detail).toMatch(
        /^queued 2 · running 0 · completed 1 · failed 0; oldest queued \d+s ago$/,
      );
      expect(checks.get('storage')?.status).toBe('ok');
      // The process launcher does not need Docker or its image: skipped, not a warning.
      expect(checks.get('docker')).toMatchObject({ status: 'skip' });
      expect(checks.get('docker')?.detail).toMatch(/; not needed by HD_LAUNCHER=process$/);
    }
    expect(byName(viaPg).get('target')).toMatchObject({ status: 'warn' });
    expect(byName(viaPg).get('target')?.detail).toContain('set HD_EXPECTED_PROJECT_REF=local');
    expect(byName(viaSb).get('target')).toMatchObject({ status: 'ok' });
    expect(byName(viaSb).get('target')?.detail).toMatch(
      /^supabase → 127\.0\.0\.1:\d+ \(project local\), as expected$/,
    );
    const figures = (r: DoctorResult) => ({
      ...byName(r).get('queue')?.data,
      oldest_queued_age_s: 0,
    });
    expect(figures(viaSb)).toEqual(figures(viaPg));
  });

  it('makes "the app writes to another Supabase than the worker polls" impossible to miss', async () => {
    const queuedByApp = await app.db.enqueueJob({
      accountId: ACCOUNT_A,
      jobType: 'import_assets_jsonl',
      debug: {},
    });
    const result = await cli(['--job-id', queuedByApp.id], sbConfig);
    expect(result.exitCode).toBe(1);
    expect(result.stdout).toMatch(/^job +FAIL +job \S+ is not in this database \(supabase → /m);
    expect(result.stdout).toContain('doctor: 1 failing check');
    // The start of an id, as the demo prints them, works too: here and not here.
    const short = await cli(['--job-id', queuedByApp.id.slice(0, 8)], sbConfig);
    expect(short.stdout).toMatch(/^job +FAIL +job [0-9a-f]{8} is not in this database/m);
    const [here] = await worker.db.listJobs({ limit: 1 });
    const found = await cli(['--job-id', here!.id.slice(0, 8)], sbConfig);
    expect(found.stdout).toMatch(
      new RegExp(`^job +ok +job ${here!.id} is here: doctor_probe`, 'm'),
    );

    const cloud = { ...sbConfig, HD_EXPECTED_PROJECT_REF: 'abcdefghijklmnopqrst' };
    const wrongProject = await runDoctor(cloud, {});
    expect(wrongProject.ok).toBe(false);
    expect(byName(wrongProject).get('target')).toMatchObject({ status: 'fail' });
    expect(byName(wrongProject).get('target')?.detail).toContain(
      'HD_EXPECTED_PROJECT_REF is abcdefghijklmnopqrst but this worker talks to 127.0.0.1',
    );
  });

  it('fails the docker check when the docker launcher lacks its engine or image', async () => {
    const result = await runDoctor({ ...pgConfig, HD_LAUNCHER: 'docker' }, {});
    expect(byName(result).get('docker')).toMatchObject({ status: 'fail' });
    expect(byName(result).get('docker')?.detail).toMatch(
      /^(no Docker engine reachable|engine up; image hd-runner-doctor-test:absent missing)/,
    );
    expect(result.ok).toBe(false);
  });

  it('answers --json in JSON even when it cannot start (no configuration)', async () => {
    const result = await execa(process.execPath, ['cli/main.ts', 'doctor', '--json'], {
      env: { PATH: process.env.PATH ?? '', HD_DEMO_DIR: join(await tempDir(), 'no-demo') },
      extendEnv: false,
      reject: false,
    });
    expect(result.exitCode).toBe(2);
    expect(JSON.parse(result.stdout)).toEqual({
      error: {
        code: 'CONFIG',
        message: expect.stringMatching(/^invalid configuration: HD_DATABASE_URL is required/),
      },
    });
  });

  it('prints JSON with --json, and never a secret', async () => {
    const result = await cli(['--json'], sbConfig);
    expect(result.exitCode).toBe(0);
    const report = JSON.parse(result.stdout) as DoctorResult;
    expect(report.ok).toBe(true);
    expect(report.target).toMatchObject({ transport: 'supabase', projectRef: 'local' });
    expect(report.checks.map((c) => c.check)).toEqual(
      expect.arrayContaining(['target', 'database', 'migrations', 'queue', 'storage', 'gpus']),
    );
    const table = await cli([], pgConfig);
    for (const output of [result.stdout, table.stdout, table.stderr, result.stderr]) {
      expect(output).not.toContain(supabase.serviceRoleKey.split('.')[2]);
      expect(output).not.toContain(new URL(worker.url).password);
    }
  });

  it('fails on pending or changed migrations, a missing bucket, and warns on a stale queue', async () => {
    const appConfig = loadConfig({ ...configToEnv(pgConfig), HD_DATABASE_URL: app.url });
    await app.sql.query(
      `update hd_schema_migrations set checksum = 'x' where version = (select min(version) from hd_schema_migrations)`,
    );
    await app.sql.query(
      `delete from hd_schema_migrations where version = (select max(version) from hd_schema_migrations)`,
    );
    await app.sql.query(`update hd_ingestion_jobs set created_at = now() - interval '2 hours'`);
    const result = await runDoctor(appConfig, {});
    const checks = byName(result);
    expect(result.ok).toBe(false);
    expect(checks.get('migrations')?.status).toBe('fail');
    expect(checks.get('migrations')?.detail).toMatch(
      /^pending: \d+_\S+\.sql; changed since applied: 00001_\S+\.sql; run hd-runner migrate$/,
    );
    expect(checks.get('queue')).toMatchObject({ status: 'warn' });
    expect(checks.get('queue')?.detail).toMatch(
      /oldest queued 2h00m ago: is a scheduler running against THIS database\?$/,
    );

    const noBucket = await runDoctor({ ...sbConfig, HD_BUCKET: 'not_there' }, {});
    expect(byName(noBucket).get('storage')).toMatchObject({ status: 'fail' });
    expect(byName(noBucket).get('storage')?.detail).toContain('bucket not_there does not exist');
  });

  it('says which database cannot be reached', async () => {
    const down = loadConfig({ ...configToEnv(sbConfig), SUPABASE_URL: 'http://127.0.0.1:9' });
    const result = await runDoctor(down, {});
    expect(byName(result).get('database')).toMatchObject({ status: 'fail' });
    expect(byName(result).get('database')?.detail).toContain('supabase → 127.0.0.1:9');
  });

  it('formats ages for people', () => {
    expect([5_000, 192_000, 7_260_000, 90_000_000].map(formatAge)).toEqual([
      '5s',
      '3m12s',
      '2h01m',
      '1d1h',
    ]);
  });
});

describe('hd-runner doctor, machine checks', () => {
  it('lists GPUs from nvidia-smi and warns when persistence mode is off', async () => {
    const bin = await tempDir('hd-test-nvsmi-');
    await writeFile(
      join(bin, 'nvidia-smi'),
      '#!/bin/sh\nprintf "0, NVIDIA H100 80GB HBM3, Enabled, 81559 MiB\\n1, NVIDIA H100 80GB HBM3, Disabled, 81559 MiB\\n"\n',
      { mode: 0o755 },
    );
    const result = await checkGpus({ PATH: bin });
    expect(result).toMatchObject({ status: 'warn' });
    expect(result.detail).toBe(
      '0: NVIDIA H100 80GB HBM3 81559 MiB; 1: NVIDIA H100 80GB HBM3 81559 MiB; persistence mode off on 1 (sudo nvidia-smi -pm 1)',
    );
    expect(await checkGpus({ PATH: join(bin, 'empty') })).toMatchObject({ status: 'skip' });
  });

  it('warns when Realtime is on but does not subscribe (the stand-in serves no Realtime)', async () => {
    const result = await runDoctor({ ...sbConfig, HD_REALTIME: true }, {});
    const wake = byName(result).get('wake-ups');
    expect(wake?.status).toBe('warn');
    expect(wake?.detail).toMatch(/^HD_REALTIME is on but Realtime did not subscribe/);
    expect(result.ok).toBe(true);
  });
});
