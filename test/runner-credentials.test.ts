import { generateKeyPairSync } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LeasedJob } from '../contract/jobs.ts';
import { loadConfig } from '../control-plane/config.ts';
import { SupabaseDb } from '../control-plane/db/supabase.ts';
import { privateSigningKey, signJobToken } from '../control-plane/job-token.ts';
import { supabaseUrlSigner } from '../control-plane/storage/signed-urls.ts';
import { RunnerAccess } from '../scheduler/runner-access.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { startPostgrest, type Postgrest } from './helpers/postgrest.ts';
import { ACCOUNT_A, ACCOUNT_B, jsonl, tempDir } from './helpers/runtime.ts';
import { startLocalSupabase, type LocalSupabase } from './helpers/supabase-proxy.ts';

// What a runner under a scheduler holds on the supabase transport: a JWT for its one job
// and a signed URL per input object. PostgREST is the real server (it verifies the token
// and sets the claims the SQL checks); Storage is the stand-in, which signs and checks
// URLs as Supabase Storage does (Supabase Storage cannot run here).
let t: TestDatabase;
let supabase: LocalSupabase;
let operatorEnv: Record<string, string>;
let work: string;
const LIMITS = { gpu: false, memoryMb: 512, cpus: 1, timeoutMs: 60_000 };

beforeAll(async () => {
  t = await createTestDatabase();
  supabase = await startLocalSupabase(t.url);
  await supabase.storage.createBucket('hd_uploads_raw');
  work = await tempDir('hd-test-creds-');
  operatorEnv = {
    HD_WORKER_ID: 'creds-test',
    HD_LOG_LEVEL: 'silent',
    HD_TRANSPORT: 'supabase',
    HD_STORAGE: 'supabase',
    SUPABASE_URL: supabase.url,
    SUPABASE_SERVICE_ROLE_KEY: supabase.serviceRoleKey,
    SUPABASE_ANON_KEY: supabase.anonKey,
  };
});
afterAll(async () => {
  await supabase?.stop();
  await t?.drop();
});

function cli(args: string[], env: Record<string, string>) {
  return execa(process.execPath, ['cli/main.ts', ...args], {
    env: { PATH: process.env.PATH ?? '', ...env },
    extendEnv: false,
    reject: false,
  });
}

/** An import job of `account` (its file uploaded by the operator CLI), claimed. */
async function claimedImport(account: string, name: string): Promise<LeasedJob> {
  const file = join(work, name);
  await writeFile(file, jsonl([{ title: name, source_type: 'doc', source_ref: name }]));
  const enqueued = await cli(['enqueue', '--account', account, '--file', file, '--json'], {
    ...operatorEnv,
  });
  expect(enqueued.stderr).toBe('');
  const { id } = JSON.parse(enqueued.stdout) as { id: string };
  const [job] = await t.db.claimJobs({ workerId: 'creds-test', jobId: id, leaseSeconds: 60 });
  return job as LeasedJob;
}

function access() {
  const config = loadConfig({ ...operatorEnv, SUPABASE_JWT_SECRET: supabase.postgrest.jwtSecret });
  return new RunnerAccess(config, t.db, supabaseUrlSigner(supabase.url, supabase.serviceRoleKey));
}

describe('a runner with a job-scoped credential (supabase transport and storage)', () => {
  it('runs its import with a job token and one signed URL, holding no service-role key', async () => {
    const job = await claimedImport(ACCOUNT_A, 'scoped.jsonl');
    const a = access();
    const env: Record<string, string> = {
      ...a.baseEnv,
      ...(await a.envFor(job, LIMITS)),
      HD_LEASE_TOKEN: job.lease_token,
    };
    expect(Object.keys(env).filter((k) => /SERVICE_ROLE|JWT_SECRET|RUNNER_/.test(k))).toEqual([]);
    expect(JSON.stringify(env)).not.toContain(supabase.serviceRoleKey);
    expect(Object.keys(JSON.parse(env.HD_JOB_STORAGE_URLS!) as object)).toEqual([
      `hd_uploads_raw/${String(job.debug.path)}`,
    ]);
    const run = await cli(['run', '--job-id', job.id], env);
    expect(run.exitCode, run.stderr).toBe(0);
    expect(await t.db.getJob(job.id)).toMatchObject({ status: 'completed', account_id: ACCOUNT_A });
    const { rows } = await t.sql.query(`select account_id from hd_assets where source_ref = $1`, [
      'scoped.jsonl',
    ]);
    expect(rows).toEqual([{ account_id: ACCOUNT_A }]);
  });

  it("refuses the token on another job, even with that job's lease token", async () => {
    const mine = await claimedImport(ACCOUNT_B, 'mine.jsonl');
    const theirs = await claimedImport(ACCOUNT_A, 'theirs.jsonl');
    const env = await access().envFor(mine, LIMITS);
    const asRunner = new SupabaseDb({
      url: supabase.url,
      serviceRoleKey: supabase.anonKey,
      accessToken: env.HD_JOB_TOKEN,
    });
    await expect(asRunner.adoptLease(mine.id, mine.lease_token, 60)).resolves.toMatchObject({
      id: mine.id,
    });
    await expect(asRunner.heartbeat(theirs.id, theirs.lease_token, 60)).rejects.toThrow(
      `permission denied: this runner credential is for job ${mine.id}, not job ${theirs.id}`,
    );
    await expect(asRunner.completeJob(theirs.id, theirs.lease_token, {})).rejects.toThrow(
      /permission denied: this runner credential is for job/,
    );
    // No claim, no enqueue, no table: role hd_runner has none of these.
    await expect(
      asRunner.claimJobs({ workerId: 'x', leaseSeconds: 60, limit: 10 }),
    ).rejects.toThrow(/permission denied for function hd_claim_jobs/);
    const read = await asRunner.client.from('hd_assets').select('*');
    expect(read.error?.message).toMatch(/permission denied for table hd_assets/);
    expect(await t.db.getJob(theirs.id)).toMatchObject({
      status: 'running',
      lease_token: theirs.lease_token,
    });
  });

  it('gives a signed URL that opens its one object and no other', async () => {
    const mine = await claimedImport(ACCOUNT_B, 'url-mine.jsonl');
    await claimedImport(ACCOUNT_A, 'url-theirs.jsonl');
    const urls = JSON.parse((await access().envFor(mine, LIMITS)).HD_JOB_STORAGE_URLS!) as Record<
      string,
      string
    >;
    const [url] = Object.values(urls);
    expect((await fetch(url!)).status).toBe(200);
    // The same token on A's object: the server refuses it.
    const swapped = url!
      .replace(`accounts/${ACCOUNT_B}`, `accounts/${ACCOUNT_A}`)
      .replace('url-mine', 'url-theirs');
    const refused = await fetch(swapped);
    expect(refused.status).toBe(400);
    expect(await refused.json()).toMatchObject({ error: 'InvalidJWT' });
    expect(supabase.storage.requests.at(-1)).toMatchObject({
      key: expect.stringMatching(new RegExp(`^accounts/${ACCOUNT_A}/`)),
    });
  });

  it('refuses a job whose path names another tenant: no URL is signed for it', async () => {
    const job = await claimedImport(ACCOUNT_B, 'cross.jsonl');
    const crossing = { ...job, debug: { ...job.debug, path: `accounts/${ACCOUNT_A}/x.jsonl` } };
    expect((await access().envFor(crossing, LIMITS)).HD_JOB_STORAGE_URLS).toBe('{}');
  });
});

describe('runner tokens signed with an imported asymmetric key (ES256)', () => {
  let postgrest: Postgrest;
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const kid = 'hd-runner-test-key';

  beforeAll(async () => {
    postgrest = await startPostgrest({
      databaseUrl: t.url,
      publicKeys: [{ ...publicKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' }],
    });
  });
  afterAll(() => postgrest?.stop());

  it('is accepted by PostgREST for its job; a token of another key is not', async () => {
    const job = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'probe', debug: {} });
    const [leased] = await t.db.claimJobs({ workerId: 'w', jobId: job.id, leaseSeconds: 60 });
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      role: 'hd_runner' as const,
      job_id: job.id,
      account_id: ACCOUNT_A,
      iat: now,
      exp: now + 60,
    };
    const pem = privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    const token = signJobToken(claims, privateSigningKey(pem, kid));
    // The same key given as a private JWK (what Supabase's dashboard imports) signs alike.
    const viaJwk = privateSigningKey(JSON.stringify(privateKey.export({ format: 'jwk' })), kid);
    expect(signJobToken(claims, viaJwk).split('.')[0]).toBe(token.split('.')[0]);
    const res = await fetch(`${postgrest.url}/rpc/hd_adopt_lease`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        p_job_id: job.id,
        p_lease_token: leased!.lease_token,
        p_lease_seconds: 60,
      }),
    });
    expect(res.status, await res.clone().text()).toBe(200);
    expect(await res.json()).toMatchObject({ id: job.id, status: 'running' });
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const forged = signJobToken(
      claims,
      privateSigningKey(other.export({ format: 'pem', type: 'pkcs8' }).toString(), kid),
    );
    const refused = await fetch(`${postgrest.url}/rpc/hd_adopt_lease`, {
      method: 'POST',
      headers: { authorization: `Bearer ${forged}`, 'content-type': 'application/json' },
      body: JSON.stringify({ p_job_id: job.id, p_lease_token: leased!.lease_token }),
    });
    expect(refused.status).toBe(401);
  });
});

// The postgres transport's runner logins: the scheduler's RunnerAccess, claimed probe jobs,
// and the runners' own connections (closed after the file).
const pgAccess = () =>
  new RunnerAccess(loadConfig({ HD_DATABASE_URL: t.url, HD_WORKER_ID: 'creds-test' }), t.db);
async function claimed(account: string): Promise<LeasedJob> {
  const job = await t.db.enqueueJob({ accountId: account, jobType: 'probe', debug: {} });
  const [leased] = await t.db.claimJobs({ workerId: 'w', jobId: job.id, leaseSeconds: 600 });
  return leased as LeasedJob;
}
const clients: pg.Client[] = [];
async function connect(url: string) {
  const client = new pg.Client(url);
  client.on('error', () => {}); // a terminated session reports here too
  await client.connect();
  clients.push(client);
  return client;
}
afterAll(() => Promise.all(clients.map((c) => c.end().catch(() => {}))));

describe('a runner with a role of its own job (postgres transport)', () => {
  it('reaches its own job only, and cannot end or read another runner’s session', async () => {
    const access = pgAccess();
    const [a, b] = [await claimed(ACCOUNT_A), await claimed(ACCOUNT_B)];
    const urlA = (await access.envFor(a, LIMITS)).HD_DATABASE_URL!;
    const urlB = (await access.envFor(b, LIMITS)).HD_DATABASE_URL!;
    expect(new URL(urlB).username).toBe(`hd_job_${b.id.replaceAll('-', '')}`);
    expect(urlB).not.toContain(new URL(t.url).password);
    const [runnerA, runnerB] = [await connect(urlA), await connect(urlB)];
    const adopt = 'select id from public.hd_adopt_lease($1, $2, 600)';
    expect((await runnerB.query(adopt, [b.id, b.lease_token])).rows).toEqual([{ id: b.id }]);
    // Even with A's lease token, B's role is refused on A's job.
    await expect(runnerB.query(adopt, [a.id, a.lease_token])).rejects.toThrow(
      `permission denied: this runner credential (${new URL(urlB).username}) is not for job ${a.id}`,
    );
    const { rows } = await runnerA.query<{ pid: number }>('select pg_backend_pid() as pid');
    await runnerA.query(`select 'tenant A query' as marker`);
    await expect(runnerB.query('select pg_terminate_backend($1)', [rows[0]!.pid])).rejects.toThrow(
      /permission denied to terminate process/,
    );
    const seen = await runnerB.query<{ query: string }>(
      'select query from pg_stat_activity where pid = $1',
      [rows[0]!.pid],
    );
    expect(seen.rows).toEqual([{ query: '<insufficient privilege>' }]);
    expect((await runnerA.query('select 1 as alive')).rows).toEqual([{ alive: 1 }]);
  });

  it('drops the role once its job has ended, ending a session that outlived it', async () => {
    const access = pgAccess();
    const job = await claimed(ACCOUNT_A);
    const url = (await access.envFor(job, LIMITS)).HD_DATABASE_URL!;
    const zombie = await connect(url);
    await t.db.completeJob(job.id, job.lease_token, {});
    await access.release();
    const role = new URL(url).username;
    const { rows } = await t.sql.query('select 1 from pg_roles where rolname = $1', [role]);
    expect(rows).toEqual([]);
    await expect(zombie.query('select 1')).rejects.toThrow(/terminat|Connection/i);
    await expect(connect(url)).rejects.toThrow(/password authentication failed|does not exist/);
  });
});

describe('a warm runner’s role, made before its job (postgres transport, migration 00032)', () => {
  // Tried as the runner holding it would: real connections with its login.
  const roleExists = async (role: string) =>
    (await t.sql.query('select 1 from pg_roles where rolname = $1', [role])).rows.length > 0;
  const adopt = 'select id from public.hd_adopt_lease($1, $2, 600)';
  const files = 'select * from public.hd_list_document_files($1, $2)';

  it('reaches no job until it is bound to one, then that job only; it is bound once', async () => {
    const access = pgAccess();
    const login = (await access.warmLogin(60_000))!;
    const url = login.env.HD_DATABASE_URL!;
    const role = new URL(url).username;
    expect(role).toMatch(/^hd_job_warm_[0-9a-f]{32}$/);
    expect(url).not.toContain(new URL(t.url).password);
    const [a, b] = [await claimed(ACCOUNT_A), await claimed(ACCOUNT_B)];
    const runner = await connect(url); // logged in before any job is its
    for (const job of [a, b])
      for (const call of [adopt, files])
        await expect(runner.query(call, [job.id, job.lease_token])).rejects.toThrow(
          `permission denied: this runner credential (${role}) is not for job ${job.id}`,
        );

    // Valid while its runner may wait; from the hand-over, as long as its job may run.
    const validUntil = async () =>
      (
        await t.sql.query<{ until: Date }>(
          'select rolvaliduntil as until from pg_roles where rolname = $1',
          [role],
        )
      ).rows[0]!.until.getTime();
    expect(await validUntil()).toBeLessThanOrEqual(Date.now() + 60_000 + 5_000);
    // Handed job a: its environment carries no database login (the runner has one).
    const env = await access.envFor(a, LIMITS, login);
    expect(env.HD_DATABASE_URL).toBeUndefined();
    expect(await validUntil()).toBeGreaterThan(Date.now() + LIMITS.timeoutMs);
    expect((await runner.query(adopt, [a.id, a.lease_token])).rows).toEqual([{ id: a.id }]);
    await expect(runner.query(adopt, [b.id, b.lease_token])).rejects.toThrow(
      `permission denied: this runner credential (${role}) is not for job ${b.id}`,
    );
    // Never rebound, not even by its scheduler: b gets a role of its own.
    const envOfB = await access.envFor(b, LIMITS, login);
    expect(new URL(envOfB.HD_DATABASE_URL!).username).toBe(`hd_job_${b.id.replaceAll('-', '')}`);
    await expect(
      t.sql.query('select public.hd_bind_warm_role($1, $2, $3, now() + interval $$1 hour$$)', [
        role,
        b.id,
        b.lease_token,
      ]),
    ).rejects.toThrow(/is not an unbound warm runner role/);
    await expect(runner.query(adopt, [b.id, b.lease_token])).rejects.toThrow(/permission denied/);
    // It goes with its job, as a job's own role does.
    await login.release();
    expect(await roleExists(role)).toBe(true);
    await t.db.completeJob(a.id, a.lease_token, {});
    await access.release();
    expect(await roleExists(role)).toBe(false);
    await expect(runner.query('select 1')).rejects.toThrow(/terminat|Connection/i);
  });

  it('warms its session before its job: every call inside is refused, nothing is written', async () => {
    // hd_warm_up_session (00036) calls a job's functions with no job, refusals caught.
    const access = pgAccess();
    const login = (await access.warmLogin(60_000))!;
    const role = new URL(login.env.HD_DATABASE_URL!).username;
    const job = await claimed(ACCOUNT_A);
    const before = await t.db.getJob(job.id);
    const chunks = async () =>
      (await t.sql.query<{ n: number }>('select count(*)::int as n from hd_asset_chunks')).rows[0]!
        .n;
    const chunksBefore = await chunks();
    const runner = await connect(login.env.HD_DATABASE_URL!);
    const pid = (await runner.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!
      .pid;
    const sample = JSON.stringify([{ chunk_index: 0, content: 'Grüße', file_id: job.id }]);
    const warmUp = 'select public.hd_warm_up_session($1::jsonb) as refused';
    expect((await runner.query(warmUp, [sample])).rows).toEqual([{ refused: 6 }]);
    // Any credential finds no job: the operator's too.
    expect((await t.sql.query(warmUp, [null])).rows).toEqual([{ refused: 6 }]);
    expect(await t.db.getJob(job.id)).toEqual(before);
    expect(await chunks()).toBe(chunksBefore);
    // Still refused on the job itself, on the same session, until bound to it.
    await expect(runner.query(adopt, [job.id, job.lease_token])).rejects.toThrow(
      `permission denied: this runner credential (${role}) is not for job ${job.id}`,
    );
    await access.envFor(job, LIMITS, login);
    expect((await runner.query(adopt, [job.id, job.lease_token])).rows).toEqual([{ id: job.id }]);
    expect((await runner.query('select pg_backend_pid() as pid')).rows).toEqual([{ pid }]);
    await t.db.completeJob(job.id, job.lease_token, {});
    await access.release();
  });

  it('is dropped unused by its scheduler; one a dead scheduler left, by any sweep once past its validity', async () => {
    const access = pgAccess();
    const unused = (await access.warmLogin(60_000))!;
    const unusedRole = new URL(unused.env.HD_DATABASE_URL!).username;
    const waiting = await connect(unused.env.HD_DATABASE_URL!);
    await unused.release();
    expect(await roleExists(unusedRole)).toBe(false);
    await expect(waiting.query('select 1')).rejects.toThrow(/terminat|Connection/i);

    // Another scheduler's runner may still wait with it: a sweep leaves it while valid.
    const left = (await access.warmLogin(60_000))!;
    const leftRole = new URL(left.env.HD_DATABASE_URL!).username;
    await access.release();
    expect(await roleExists(leftRole)).toBe(true);
    await t.sql.query(
      `update hd_private.job_roles set expires_at = now() - interval '1 second' where role_name = $1`,
      [leftRole],
    );
    await access.release();
    expect(await roleExists(leftRole)).toBe(false);

    // A runner that ended as its job was handed over: its role went, the job gets its own.
    const gone = (await access.warmLogin(60_000))!;
    await gone.release();
    const job = await claimed(ACCOUNT_A);
    const own = await access.envFor(job, LIMITS, gone);
    expect(new URL(own.HD_DATABASE_URL!).username).toBe(`hd_job_${job.id.replaceAll('-', '')}`);
    // Not valid for long: at most a day, as a job's role.
    await expect(
      t.sql.query(`select public.hd_create_warm_role($1, 'infinity')`, ['x'.repeat(24)]),
    ).rejects.toThrow(/valid for up to a day/);

    // Only unbound warm roles are dropped by name: never another role.
    const { rows } = await t.sql.query<{ dropped: boolean }>(
      'select public.hd_drop_warm_role(current_user) as dropped',
    );
    expect(rows).toEqual([{ dropped: false }]);
  });
});
