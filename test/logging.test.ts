import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_BUCKET } from '../contract/jobs.ts';
import { configSchema } from '../control-plane/config.ts';
import { prepareLogger } from '../control-plane/logger.ts';
import { secretsOf } from '../control-plane/redact.ts';
import { tenantPrefix } from '../contract/storage-paths.ts';
import type { ControlPlaneDb } from '../control-plane/db/transport.ts';
import { FsStorage } from '../control-plane/storage/fs.ts';
import { runJob } from '../runner/run-job.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { jsonl, memoryLogger, putObject, tempDir, testConfig } from './helpers/runtime.ts';

const SECRET = 'hunter2-DoNotLog';
const TOKEN = randomUUID();

/** Asserts that a log line was written and that none of the secrets is in any line. */
function expectNoSecrets(lines: string[], secrets: string[]) {
  expect(lines.length).toBeGreaterThan(0);
  for (const line of lines) {
    for (const secret of secrets) expect(line).not.toContain(secret);
  }
}

describe('log redaction', () => {
  it('blanks the database URL of a logged config', () => {
    const { log, lines } = memoryLogger();
    const config = testConfig(`postgres://app:${SECRET}@db.internal:5432/hd`, '/tmp/storage');
    log.info({ config }, 'starting');
    expectNoSecrets(lines, [SECRET]);
    const line = JSON.parse(lines[0]!);
    expect(line.config.HD_DATABASE_URL).toBe('[redacted]');
    expect(line.config.HD_SLOTS).toBe(config.HD_SLOTS); // the rest stays useful
  });

  it('blanks every secret setting of a logged config, whichever it is', () => {
    // Each credential the configuration can hold, by name, with a value of its own.
    const secretNames = Object.keys(configSchema.shape).filter((name) =>
      /(API_KEY|SERVICE_ROLE_KEY|SECRET|PRIVATE_KEY|PASSWORD|TOKEN|DATABASE_URL)$/.test(name),
    );
    expect(secretNames).toEqual(
      expect.arrayContaining([
        'SUPABASE_SERVICE_ROLE_KEY',
        'HD_LLM_API_KEY',
        'HD_TRANSCRIBE_API_KEY',
      ]),
    );
    const secrets = secretNames.map((name) => `${SECRET}-${name}`);
    const config = {
      ...testConfig('postgres://u@h/d', '/tmp/storage'),
      ...Object.fromEntries(secretNames.map((name, i) => [name, secrets[i]])),
    };
    const { log, lines } = memoryLogger();
    log.info({ config }, 'starting');
    log.info(config, 'flat');
    expectNoSecrets(lines, secrets);
  });

  it('blanks lease tokens, top-level and in a logged job', () => {
    const { log, lines } = memoryLogger();
    log.info({ lease_token: TOKEN }, 'claimed');
    log.info({ job: { id: 'j1', lease_token: TOKEN } }, 'job');
    log.info({ leaseToken: TOKEN }, 'camel');
    log.info({ launch: { leaseToken: TOKEN } }, 'launch');
    expectNoSecrets(lines, [TOKEN]);
    expect(lines).toHaveLength(4);
    expect(JSON.parse(lines[1]!).job).toEqual({ id: 'j1', lease_token: '[redacted]' });
  });

  it('blanks API keys, service-role keys, passwords and connection strings', () => {
    const { log, lines } = memoryLogger();
    log.info({ apiKey: SECRET }, 'a');
    log.info({ openai: { apiKey: SECRET } }, 'b');
    log.info({ serviceRoleKey: SECRET }, 'c');
    log.info({ supabase: { serviceRoleKey: SECRET, url: 'https://x.supabase.co' } }, 'd');
    log.info({ password: SECRET }, 'e');
    log.info({ pg: { password: SECRET, connectionString: `postgres://u:${SECRET}@h/d` } }, 'f');
    log.info({ connectionString: `postgres://u:${SECRET}@h/d` }, 'g');
    expectNoSecrets(lines, [SECRET]);
    expect(lines).toHaveLength(7);
    expect(JSON.parse(lines[3]!).supabase.url).toBe('https://x.supabase.co');
  });

  it('blanks authorization headers', () => {
    const { log, lines } = memoryLogger();
    log.info({ headers: { authorization: `Bearer ${SECRET}`, accept: 'json' } }, 'a');
    log.info({ request: { headers: { authorization: `Bearer ${SECRET}` } } }, 'b');
    expectNoSecrets(lines, [SECRET]);
    expect(JSON.parse(lines[0]!).headers.accept).toBe('json');
  });

  it('blanks a logged environment as a whole', () => {
    const { log, lines } = memoryLogger();
    log.info(
      { env: { HD_DATABASE_URL: `postgres://u:${SECRET}@h/d`, OPENAI_API_KEY: SECRET } },
      'env',
    );
    expectNoSecrets(lines, [SECRET]);
    expect(JSON.parse(lines[0]!).env).toBe('[redacted]');
  });

  it("a warm runner's logger, made before its job, hides the job's secrets by value and by key", () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk, _enc, done) {
        lines.push(...String(chunk).split('\n').filter(Boolean));
        done();
      },
    });
    // Before its job: no secret at all.
    const prepared = prepareLogger({ name: 'runner', base: { worker_id: 'w1' } }, sink);
    const log = prepared({
      level: 'debug',
      name: 'runner',
      base: { worker_id: 'w1' },
      secrets: secretsOf({ HD_DATABASE_URL: `postgres://u:${SECRET}@h/d` }),
    });
    log.debug(`connect failed: password ${SECRET} refused`);
    log.info({ lease_token: TOKEN }, 'claimed');
    expectNoSecrets(lines, [SECRET, TOKEN]);
    expect(lines).toHaveLength(2); // at the job's level
    expect(JSON.parse(lines[0]!)).toMatchObject({ name: 'runner', worker_id: 'w1' });
    expect(JSON.parse(lines[0]!).msg).toBe('connect failed: password [redacted] refused');
    // Other bindings: a logger of its own, with them.
    const other = prepared({ name: 'scheduler', secrets: [SECRET] });
    other.info(`again ${SECRET}`);
    expectNoSecrets(lines, [SECRET]);
    expect(JSON.parse(lines[2]!)).toMatchObject({ name: 'scheduler', msg: 'again [redacted]' });
  });

  it('blanks secrets bound to a child logger', () => {
    const { log, lines } = memoryLogger();
    log.child({ lease_token: TOKEN, job_id: 'j1' }).info('from the child');
    expectNoSecrets(lines, [TOKEN]);
    expect(JSON.parse(lines[0]!).job_id).toBe('j1');
  });
});

describe('a real job, logged at debug level', () => {
  let t: TestDatabase;
  let root: string;
  let password: string;
  beforeAll(async () => {
    t = await createTestDatabase();
    root = await tempDir('hd-logging-');
    password = decodeURIComponent(new URL(t.url).password);
  });
  afterAll(async () => {
    await t.drop();
    await rm(root, { recursive: true, force: true });
  });

  /** The test database, recording every lease token it hands out. */
  function recordingDb(tokens: string[]): ControlPlaneDb {
    return new Proxy(t.db, {
      get(target, prop) {
        if (prop === 'claimJobs') {
          return async (...args: Parameters<ControlPlaneDb['claimJobs']>) => {
            const jobs = await target.claimJobs(...args);
            for (const job of jobs) if (job.lease_token) tokens.push(job.lease_token);
            return jobs;
          };
        }
        const value: unknown = Reflect.get(target, prop, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
  }

  async function runLogged(content: string | undefined, leaseHandedOver: boolean) {
    const accountId = randomUUID();
    const path = `${tenantPrefix(accountId)}assets-jsonl/x.jsonl`;
    if (content !== undefined) await putObject(root, DEFAULT_BUCKET, path, content);
    const job = await t.db.enqueueJob({
      accountId,
      jobType: 'import_assets_jsonl',
      debug: { bucket: DEFAULT_BUCKET, path },
    });
    const tokens: string[] = [];
    const db = recordingDb(tokens);
    // A scheduler claims and hands the lease over; `hd-runner run` alone claims itself.
    const leaseToken = leaseHandedOver
      ? (await db.claimJobs({ workerId: 'sched', jobId: job.id, leaseSeconds: 60 }))[0]!
          .lease_token!
      : undefined;
    const { log, lines } = memoryLogger('debug');
    const result = await runJob({
      db,
      storage: new FsStorage(root),
      config: testConfig(t.url, root, { HD_LOG_LEVEL: 'debug' }),
      log,
      jobId: job.id,
      leaseToken,
    });
    expect(tokens).toHaveLength(1);
    return { result, lines, token: tokens[0]!, jobId: job.id };
  }

  it('has a password in its connection string (or this test would prove nothing)', () => {
    expect(password.length).toBeGreaterThanOrEqual(8);
  });

  it.each([
    ['claimed by the runner', false],
    ['handed over by a scheduler', true],
  ])('never logs the password or the lease token of a completed job %s', async (_, handed) => {
    const content = jsonl([{ title: 'A', source_type: 'upload' }, { nope: 1 }]) + '{broken\n';
    const { result, lines, token, jobId } = await runLogged(content, handed);
    expect(result.outcome).toBe('completed');
    expect(lines.some((l) => l.includes('job completed') && l.includes(jobId))).toBe(true);
    expectNoSecrets(lines, [password, token]);
  });

  it('never logs the password or the lease token of a failed job', async () => {
    const { result, lines, token } = await runLogged(undefined, true);
    expect(result.outcome).toBe('failed');
    expect(lines.some((l) => l.includes('FILE_NOT_FOUND'))).toBe(true);
    expectNoSecrets(lines, [password, token]);
  });
});
