import { randomUUID } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job } from '../contract/jobs.ts';
import { importByUrl } from '../cli/commands/enqueue.ts';
import { createScheduler } from '../cli/commands/scheduler.ts';
import { configToEnv, loadConfig, type Config } from '../control-plane/config.ts';
import type { ControlPlaneDb } from '../control-plane/db/transport.ts';
import { createLogger } from '../control-plane/logger.ts';
import { openDb } from '../control-plane/open.ts';
import type { Scheduler } from '../scheduler/scheduler.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, ACCOUNT_B, tempDir } from './helpers/runtime.ts';
import {
  startLocalSupabase,
  type LocalSupabase,
  supabaseSettings,
} from './helpers/supabase-proxy.ts';
import {
  ASSETS,
  ASSETS_JSONL,
  SERVER_HOST,
  REPORT_TEXT,
  SIZE_LIMIT,
  startUrlServer,
  startVictim,
  type UrlServer,
} from './helpers/url-server.ts';

// Inputs by URL end to end, on both storage backends: `hd-runner enqueue --url`, then a
// scheduler as `hd-runner scheduler` builds it (createScheduler: process launcher, runner
// credentials scoped to the job) fetches the URL from a real local HTTP server, stores it
// under the account's prefix, records it, and its runner imports the stored object.
// The fs backend runs on the postgres transport; the supabase one on a real PostgREST and
// the Storage stand-in (Supabase Storage cannot run here). The test server listens on
// 127.0.0.2, which these schedulers allow (HD_URL_INPUT_ALLOW_CIDRS) and nothing else.
let t: TestDatabase;
let supabase: LocalSupabase;
let server: UrlServer;
let victim: UrlServer;
const BUCKET = 'hd_uploads_raw';
const LIMITS = {
  HD_URL_INPUT_ALLOW_CIDRS: `${SERVER_HOST}/32`,
  HD_URL_INPUT_MAX_BYTES: String(SIZE_LIMIT),
  HD_URL_INPUT_TIMEOUT_MS: '3000',
  HD_POLL_INTERVAL_MS: '200',
  HD_SLOTS: '2',
  HD_LOG_LEVEL: 'silent',
  HD_WORKER_ID: 'url-inputs-test',
};

interface Backend {
  name: string;
  config: Config;
  db: ControlPlaneDb & { close(): Promise<void> };
  /** The stored object's bytes, or undefined. */
  read(key: string): Promise<Buffer | undefined>;
  /** Whether anything was written under this key (requests the store received, or files). */
  wroteUnder(prefix: string): Promise<boolean>;
}
const backends: Backend[] = [];

beforeAll(async () => {
  t = await createTestDatabase();
  supabase = await startLocalSupabase(t.url);
  await supabase.storage.createBucket(BUCKET);
  victim = await startVictim();
  server = await startUrlServer(victim.port, { slowMs: 3000 });
  const root = await tempDir('hd-test-url-fs-');
  const fsConfig = loadConfig({ ...LIMITS, HD_DATABASE_URL: t.url, HD_STORAGE_ROOT: root });
  backends.push({
    name: 'fs storage, postgres transport',
    config: fsConfig,
    db: openDb(fsConfig),
    read: (key) => readFile(join(root, BUCKET, key)).catch(() => undefined),
    wroteUnder: (prefix) =>
      stat(join(root, BUCKET, prefix)).then(
        () => true,
        () => false,
      ),
  });
  const sbConfig = loadConfig({
    ...LIMITS,
    ...supabaseSettings(supabase),
  });
  backends.push({
    name: 'supabase storage (stand-in), supabase transport (PostgREST)',
    config: sbConfig,
    db: openDb(sbConfig),
    read: (key) => supabase.storage.readObject(BUCKET, key),
    wroteUnder: async (prefix) =>
      supabase.storage.requests.some((r) => r.method !== 'GET' && r.key?.startsWith(prefix)),
  });
});
afterAll(async () => {
  for (const b of backends) await b.db.close();
  server?.close();
  victim?.close();
  await supabase?.stop();
  await t?.drop();
});

/** A running scheduler and the first end of each job it ran (`job:finished`). */
async function startScheduler(backend: Backend, overrides: Record<string, string> = {}) {
  const config = loadConfig({ ...configToEnv(backend.config), ...overrides });
  const scheduler = createScheduler(config, backend.db, createLogger({ level: 'silent' }), {
    PATH: process.env.PATH,
  });
  const ended = new Map<string, Job>();
  const waiting = new Map<string, (job: Job) => void>();
  scheduler.on('job:finished', (job) => {
    if (ended.has(job.id)) return;
    ended.set(job.id, job);
    waiting.get(job.id)?.(job);
  });
  await scheduler.start();
  return {
    scheduler,
    finished: (id: string) =>
      ended.get(id) ?? new Promise<Job>((resolve) => waiting.set(id, resolve)),
    forget: (id: string) => ended.delete(id),
  };
}

/** Runs `body` with a scheduler as `hd-runner scheduler` builds it; stops it after. */
async function withScheduler(
  backend: Backend,
  overrides: Record<string, string>,
  body: (s: Awaited<ReturnType<typeof startScheduler>>) => Promise<void>,
) {
  const started = await startScheduler(backend, overrides);
  try {
    await body(started);
  } finally {
    await stop(started.scheduler, backend.db);
  }
}

async function enqueueUrl(backend: Backend, url: string, maxAttempts = 1): Promise<Job> {
  return backend.db.enqueueJob({
    accountId: ACCOUNT_A,
    ...importByUrl(backend.config, { url, maxAttempts }),
  });
}

async function stop(scheduler: Scheduler, db: ControlPlaneDb) {
  await scheduler.stop(0);
  for (const job of await db.listJobs({ status: 'queued', limit: 100 }))
    await db.cancelJob(job.id, 'left over by a test');
}

describe.each([
  ['fs', 0],
  ['supabase', 1],
])('inputs by URL, %s storage', (_name, index) => {
  it('fetches through a redirect, stores under the tenant prefix first, imports; a requeue does not fetch again', async () => {
    const backend = backends[index]!;
    await withScheduler(backend, {}, async ({ finished, forget }) => {
      const enqueued = await execa(
        process.execPath,
        [
          'cli/main.ts',
          'enqueue',
          '--account',
          ACCOUNT_A,
          '--url',
          `${server.origin}/hop?index=${index}`,
          '--json',
        ],
        {
          env: { PATH: process.env.PATH ?? '', ...configToEnv(backend.config) },
          extendEnv: false,
          reject: false,
        },
      );
      expect(enqueued.stderr, backend.name).toBe('');
      const { id } = JSON.parse(enqueued.stdout) as Job;
      const job = await finished(id);
      expect(job, backend.name).toMatchObject({ status: 'completed', attempts: 1 });
      // Both backends import the same lines into one database: the second finds them there.
      expect(job.debug.stats).toMatchObject({ valid: ASSETS.length, invalid: 0 });
      const { rows } = await t.sql.query(
        'select source_ref from hd_assets where account_id = $1 order by source_ref',
        [ACCOUNT_A],
      );
      expect(rows).toEqual(ASSETS.map((a) => ({ source_ref: a.source_ref })));
      const key = `accounts/${ACCOUNT_A}/url-inputs/${id}/assets.jsonl`;
      // Stored as sniffed: the server called it a PDF; the record keeps what it said.
      expect(job.debug.url_input).toEqual({
        bucket: BUCKET,
        path: key,
        bytes: Buffer.byteLength(ASSETS_JSONL),
        sha256: expect.stringMatching(/^[0-9a-f]{64}$/),
        content_type: 'application/x-ndjson',
        declared_content_type: 'application/pdf',
        fetched_from: `${server.origin}/assets.jsonl`,
        redirects: 1,
      });
      expect((await backend.read(key))?.toString()).toBe(ASSETS_JSONL);
      const fetches = server.requests.filter((p) => p === '/assets.jsonl').length;

      forget(id);
      await backend.db.requeueJob(id);
      expect(await finished(id)).toMatchObject({ status: 'completed', attempts: 1 });
      expect(server.requests.filter((p) => p === '/assets.jsonl').length).toBe(fetches);
      expect((await backend.read(key))?.toString()).toBe(ASSETS_JSONL);
    });
  });

  it("fetches a document's PDF labelled as HTML, stores it as the PDF it is, and extract_text reads it", async () => {
    const backend = backends[index]!;
    await withScheduler(backend, {}, async ({ finished }) => {
      const documentId = randomUUID();
      const { id } = await backend.db.enqueueJob({
        accountId: ACCOUNT_A,
        jobType: 'extract_text',
        documentId,
        debug: { url: `${server.origin}/report.pdf`, ocr: 'off' },
      });
      const job = await finished(id);
      expect(job, backend.name).toMatchObject({ status: 'completed', attempts: 1 });
      const key = `accounts/${ACCOUNT_A}/url-inputs/${id}/report.pdf`;
      expect(job.debug.url_input).toMatchObject({
        path: key,
        content_type: 'application/pdf',
        declared_content_type: 'text/html',
      });
      expect((await backend.read(key))?.subarray(0, 5).toString()).toBe('%PDF-');
      const { rows: files } = await t.sql.query(
        'select storage_path, mime_type from hd_document_files where account_id = $1 and document_id = $2',
        [ACCOUNT_A, documentId],
      );
      expect(files).toEqual([{ storage_path: key, mime_type: 'application/pdf' }]);
      const { rows: chunks } = await t.sql.query(
        'select content from hd_asset_chunks where account_id = $1 and document_id = $2',
        [ACCOUNT_A, documentId],
      );
      expect(chunks.map((c: { content: string }) => c.content).join(' ')).toContain(REPORT_TEXT);
    });
  });

  it('ends each bad URL with its code, storing nothing; the victim on 127.0.0.1 sees nothing', async () => {
    const backend = backends[index]!;
    const cases: [string, Partial<Job>, RegExp][] = [
      ['/missing', { status: 'failed', error_code: 'FILE_NOT_FOUND' }, /answered 404/],
      ['/busy', { status: 'queued', error_code: 'DOWNLOAD_FAILED' }, /answered 503/],
      [
        '/to-loopback',
        { status: 'failed', error_code: 'INVALID_INPUT' },
        /host 127\.0\.0\.1 resolves to 127\.0\.0\.1, a loopback/,
      ],
      [
        '/to-metadata',
        { status: 'failed', error_code: 'INVALID_INPUT' },
        /host 169\.254\.169\.254 resolves to/,
      ],
      ['/loop', { status: 'failed', error_code: 'INVALID_INPUT' }, /redirects more than 5 times/],
      [
        '/huge',
        { status: 'failed', error_code: 'INVALID_INPUT' },
        /larger than the limit of 4096 bytes \(HD_URL_INPUT_MAX_BYTES\)/,
      ],
      [
        '/trickle',
        { status: 'queued', error_code: 'DOWNLOAD_FAILED' },
        /no complete answer within 3000 ms/,
      ],
      ['/reset', { status: 'queued', error_code: 'DOWNLOAD_FAILED' }, /the download broke off/],
      [
        '/pdf-as-jsonl',
        { status: 'failed', error_code: 'UNSUPPORTED_FILE' },
        /the content is a PDF document \(the server said application\/x-ndjson\), not JSONL text/,
      ],
      [
        '/login-page',
        { status: 'failed', error_code: 'UNSUPPORTED_FILE' },
        /the content is an HTML page/,
      ],
    ];
    await withScheduler(backend, {}, async ({ finished }) => {
      // A document's file must be one extract_text reads; and it needs a document.
      const documentId = randomUUID();
      for (const [debug, documentOf, message] of [
        [
          { url: `${server.origin}/archive.zip` },
          documentId,
          /the content is a ZIP container .*\(the server said application\/pdf\), not a document extract_text reads/,
        ],
        [{ url: `${server.origin}/report.pdf` }, null, /extract_text by URL needs a document/],
      ] as const) {
        const { id } = await backend.db.enqueueJob({
          accountId: ACCOUNT_A,
          jobType: 'extract_text',
          documentId: documentOf ?? undefined,
          debug,
        });
        const job = await finished(id);
        expect(job, debug.url).toMatchObject({ status: 'failed', attempts: 1 });
        expect(job.error, debug.url).toMatch(message);
        expect(await backend.wroteUnder(`accounts/${ACCOUNT_A}/url-inputs/${id}`)).toBe(false);
      }
      const { rows } = await t.sql.query('select 1 from hd_document_files where document_id = $1', [
        documentId,
      ]);
      expect(rows).toEqual([]);
      for (const [path, outcome, message] of cases) {
        // Two attempts: a retryable failure goes back to the queue, a permanent one ends.
        const { id } = await enqueueUrl(backend, `${server.origin}${path}`, 2);
        const job = await finished(id);
        expect(job, `${backend.name} ${path}`).toMatchObject({ ...outcome, attempts: 1 });
        expect(job.error, path).toMatch(message);
        expect(job.debug.url_input, path).toBeUndefined();
        expect(await backend.wroteUnder(`accounts/${ACCOUNT_A}/url-inputs/${id}`), path).toBe(
          false,
        );
        if (job.status === 'queued') await backend.db.cancelJob(id, 'retry not wanted here');
      }
      expect(victim.requests).toEqual([]);
    });
  });
});

describe('without an allowed range', () => {
  it('refuses the loopback test server: INVALID_INPUT naming the setting, no request made', async () => {
    const backend = backends[0]!;
    await withScheduler(
      backend,
      {
        HD_URL_INPUT_ALLOW_CIDRS: '',
      },
      async ({ finished }) => {
        const seen = server.requests.length;
        const { id } = await enqueueUrl(backend, `${server.origin}/assets.jsonl`, 3);
        const job = await finished(id);
        expect(job).toMatchObject({ status: 'failed', error_code: 'INVALID_INPUT', attempts: 1 });
        expect(job.error).toContain(
          `URL input host ${SERVER_HOST} resolves to ${SERVER_HOST}, a loopback, private, link-local, multicast or metadata address (allow it with HD_URL_INPUT_ALLOW_CIDRS)`,
        );
        expect(server.requests.length).toBe(seen);
      },
    );
  });
});

describe('staging within the job', () => {
  it('renews the lease while a download outlasts it', async () => {
    const backend = backends[0]!;
    // A 2 s lease, reaped every 200 ms; the download takes 3 s. What happens after the
    // staging (a runner starting slower than such a short lease) is not this test's matter:
    // the input was recorded, so the lease was held through the download.
    await withScheduler(
      backend,
      {
        HD_LEASE_SECONDS: '2',
        HD_REAP_INTERVAL_MS: '200',
        HD_URL_INPUT_TIMEOUT_MS: '10000',
      },
      async ({ finished }) => {
        const { id } = await enqueueUrl(backend, `${server.origin}/slow`, 1);
        const job = await finished(id);
        expect(job.debug.url_input).toMatchObject({ bytes: Buffer.byteLength(ASSETS_JSONL) });
      },
    );
  });

  it('runs other jobs meanwhile; hands the job back, attempt refunded, when the scheduler stops mid-download', async () => {
    const backend = backends[0]!;
    const { scheduler, finished } = await startScheduler(backend, {
      HD_URL_INPUT_TIMEOUT_MS: '60000',
    });
    const seen = server.requests.length;
    const { id } = await enqueueUrl(backend, `${server.origin}/trickle?stop`, 3);
    await expect.poll(() => server.requests.slice(seen)).toContain('/trickle?stop');
    // The download holds its own slot only: a second job is claimed, staged and run.
    const other = await enqueueUrl(backend, `${server.origin}/assets.jsonl?meanwhile`, 1);
    expect(await finished(other.id)).toMatchObject({ status: 'completed' });
    expect(await backend.db.getJob(id)).toMatchObject({ status: 'running' });
    await scheduler.stop(0);
    expect(await backend.db.getJob(id)).toMatchObject({ status: 'queued', attempts: 0 });
    expect(await backend.wroteUnder(`accounts/${ACCOUNT_A}/url-inputs/${id}`)).toBe(false);
    await backend.db.cancelJob(id, 'left over by a test');
  });
});

describe('hd-runner enqueue --url', () => {
  it('refuses a URL with credentials or another scheme, queueing nothing', async () => {
    const backend = backends[0]!;
    const before = (await backend.db.listJobs({ limit: 1000 })).length;
    for (const url of ['https://user:pw@files.example/a.jsonl', 'file:///etc/passwd']) {
      const run = await execa(
        process.execPath,
        ['cli/main.ts', 'enqueue', '--account', ACCOUNT_A, '--url', url],
        {
          env: { PATH: process.env.PATH ?? '', ...configToEnv(backend.config) },
          extendEnv: false,
          reject: false,
        },
      );
      expect(run.exitCode, url).toBe(2);
      expect(run.stderr, url).toBe(
        'hd-runner: enqueue: --url: an http(s) URL without credentials or spaces',
      );
    }
    expect((await backend.db.listJobs({ limit: 1000 })).length).toBe(before);
  });
});

describe('a runner started by hand', () => {
  it('refuses a URL input no scheduler has fetched yet, naming why', async () => {
    const backend = backends[0]!;
    const { id } = await enqueueUrl(backend, `${server.origin}/assets.jsonl?token=own`, 1);
    const seen = server.requests.length;
    const run = await execa(process.execPath, ['cli/main.ts', 'run', '--job-id', id], {
      env: { PATH: process.env.PATH ?? '', ...configToEnv(backend.config) },
      extendEnv: false,
      reject: false,
    });
    expect(run.exitCode, run.stderr).toBe(10);
    const job = await backend.db.getJob(id);
    expect(job).toMatchObject({ status: 'failed', error_code: 'INVALID_INPUT' });
    expect(job?.error).toBe(
      `the URL input ${server.origin}/assets.jsonl has not been fetched yet: a scheduler fetches and stores it before it starts the runner`,
    );
    expect(server.requests.length).toBe(seen);
  });
});

describe('hd_record_url_input', () => {
  it("takes the job's lease, a path in its own url-inputs folder, and a job that names a url", async () => {
    const job = await t.db.enqueueJob({
      accountId: ACCOUNT_A,
      ...importByUrl(backends[0]!.config, { url: 'https://example.com/a.jsonl' }),
    });
    const [leased] = await t.db.claimJobs({ workerId: 'w', jobId: job.id, leaseSeconds: 60 });
    const info = (path: string) => ({
      bucket: BUCKET,
      path,
      bytes: 1,
      sha256: 'x',
      content_type: 'application/x-ndjson',
      declared_content_type: null,
      fetched_from: 'https://example.com/a.jsonl',
      redirects: 0,
    });
    const own = `accounts/${ACCOUNT_A}/url-inputs/${job.id}/a.jsonl`;
    for (const path of [
      `accounts/${ACCOUNT_B}/url-inputs/${job.id}/a.jsonl`,
      `accounts/${ACCOUNT_A}/url-inputs/${randomUUID()}/a.jsonl`,
      `accounts/${ACCOUNT_A}/url-inputs/${job.id}/../../assets-jsonl/x.jsonl`,
      `accounts/${ACCOUNT_A}/url-inputs/${job.id}/..`,
    ])
      await expect(
        t.db.recordUrlInput(job.id, leased!.lease_token!, info(path)),
        path,
      ).rejects.toThrow(/is not an object under/);
    await expect(t.db.recordUrlInput(job.id, randomUUID(), info(own))).rejects.toMatchObject({
      code: 'HDL01',
    });
    const recorded = await t.db.recordUrlInput(job.id, leased!.lease_token!, info(own));
    expect(recorded.debug).toMatchObject({
      url: 'https://example.com/a.jsonl',
      url_input: { path: own },
    });
    await t.db.cancelJob(job.id, 'done');
  });
});
