import { randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_BUCKET, type Job } from '../contract/jobs.ts';
import { tenantPrefix } from '../contract/storage-paths.ts';
import type { ImportStats } from '../runner/handlers/import_assets_jsonl.ts';
import { FsStorage } from '../control-plane/storage/fs.ts';
import { runJob } from '../runner/run-job.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { jsonl, memoryLogger, putObject, tempDir, testConfig } from './helpers/runtime.ts';

let t: TestDatabase;
let root: string;
beforeAll(async () => {
  t = await createTestDatabase();
  root = await tempDir('hd-import-hostile-');
});
afterAll(async () => {
  await t.drop();
  await rm(root, { recursive: true, force: true });
});

interface AssetRecord {
  id: string;
  account_id: string;
  source_type: string;
  source_ref: string;
  title: string;
  metadata: Record<string, unknown>;
  import_job_id: string;
  created_at: Date;
  updated_at: Date;
}

const keyFor = (accountId: string, name = 'x.jsonl') =>
  `${tenantPrefix(accountId)}assets-jsonl/${name}`;

async function assetsOf(accountId: string): Promise<AssetRecord[]> {
  const { rows } = await t.sql.query<AssetRecord>(
    'select * from hd_assets where account_id = $1 order by source_type, source_ref',
    [accountId],
  );
  return rows;
}

/** Runs a job the way `hd-runner run --job-id` does, and reads back what it left. */
async function run(jobId: string, accountId: string, env: Record<string, string> = {}) {
  const { log, lines } = memoryLogger('debug');
  const result = await runJob({
    db: t.db,
    storage: new FsStorage(root),
    config: testConfig(t.url, root, env),
    log,
    jobId,
  });
  const job = (await t.db.getJob(jobId))!;
  return {
    result,
    job,
    stats: job.debug.stats as ImportStats,
    assets: await assetsOf(accountId),
    logLines: lines,
  };
}

/** Puts `content` (unless undefined) into storage, queues an import of it, runs it. */
async function importContent(
  content: string | Buffer | undefined,
  options: {
    strict?: boolean;
    debug?: Record<string, unknown>;
    accountId?: string;
    env?: Record<string, string>;
  } = {},
) {
  const accountId = options.accountId ?? randomUUID();
  const path = keyFor(accountId);
  if (content !== undefined) await putObject(root, DEFAULT_BUCKET, path, content);
  const queued = await t.db.enqueueJob({
    accountId,
    jobType: 'import_assets_jsonl',
    debug: options.debug ?? {
      bucket: DEFAULT_BUCKET,
      path,
      ...(options.strict === undefined ? {} : { strict: options.strict }),
    },
  });
  return { accountId, path, ...(await run(queued.id, accountId, options.env)) };
}

const asset = (n: number, extra: Record<string, unknown> = {}) => ({
  title: `Asset ${n}`,
  source_type: 'upload',
  source_ref: `ref-${n}`,
  ...extra,
});

function expectFailed(job: Job, code: string) {
  expect(job).toMatchObject({
    status: 'failed',
    error_code: code,
    attempts: 1,
    lease_token: null,
  });
}

describe('import_assets_jsonl with hostile input', () => {
  it('skips invalid JSON lines, reports them by line number, and imports the rest', async () => {
    const content = [
      JSON.stringify(asset(1)),
      '{"title":"Broken","source_type":"upload",',
      'not json at all',
      '{"title":"x","source_type":}',
      "{'single':'quotes'}",
      JSON.stringify(asset(2)),
      '{"title":"trailing"} garbage',
    ].join('\n');
    const { job, stats, assets } = await importContent(content);
    expect(job.status).toBe('completed');
    expect(stats).toMatchObject({ lines: 7, valid: 2, invalid: 5, inserted: 2 });
    expect(stats.invalid_samples.map((s) => s.line)).toEqual([2, 3, 4, 5, 7]);
    for (const sample of stats.invalid_samples) expect(sample.reason).toMatch(/^invalid JSON: /);
    expect(assets.map((a) => a.title)).toEqual(['Asset 1', 'Asset 2']);
  });

  it('reports a 50 MB line as invalid (over the limit) and imports the lines after it', async () => {
    const accountId = randomUUID();
    const path = keyFor(accountId);
    const file = join(root, DEFAULT_BUCKET, path);
    await mkdir(dirname(file), { recursive: true });
    const chunk = 'a'.repeat(64 * 1024);
    const total = 50 * 1024 * 1024;
    await pipeline(
      Readable.from(
        (function* () {
          yield `${JSON.stringify(asset(1))}\n{"title":"`;
          for (let sent = 0; sent < total; sent += chunk.length) yield chunk;
          yield `","source_type":"upload"}\n${JSON.stringify(asset(2))}\n${JSON.stringify(asset(3))}\n`;
        })(),
      ),
      createWriteStream(file),
    );
    const queued = await t.db.enqueueJob({
      accountId,
      jobType: 'import_assets_jsonl',
      debug: { bucket: DEFAULT_BUCKET, path },
    });
    const { job, stats, assets } = await run(queued.id, accountId);
    expect(job.status).toBe('completed');
    expect(stats).toMatchObject({ lines: 4, valid: 3, invalid: 1, inserted: 3 });
    expect(stats.bytes).toBeGreaterThan(total);
    expect(stats.invalid_samples).toHaveLength(1);
    expect(stats.invalid_samples[0]!.line).toBe(2);
    expect(stats.invalid_samples[0]!.reason).toMatch(/limit/);
    expect(stats.invalid_samples[0]!.reason).toContain('1048576');
    expect(assets.map((a) => a.source_ref)).toEqual(['ref-1', 'ref-2', 'ref-3']);
  });

  it('reads a file with a UTF-8 BOM, CRLF endings and blank lines', async () => {
    const content = `\ufeff${[
      JSON.stringify(asset(1)),
      '',
      '   \t',
      JSON.stringify(asset(2, { metadata: { note: 'crlf' } })),
      '',
      JSON.stringify(asset(3)),
    ].join('\r\n')}\r\n`;
    const { job, stats, assets } = await importContent(content);
    expect(job.status).toBe('completed');
    expect(stats).toMatchObject({ lines: 6, blank: 3, valid: 3, invalid: 0, inserted: 3 });
    expect(stats.bytes).toBe(Buffer.byteLength(content));
    expect(assets.map((a) => a.title)).toEqual(['Asset 1', 'Asset 2', 'Asset 3']);
    expect(assets[1]!.metadata).toEqual({ note: 'crlf' });
    for (const a of assets) expect(a.title + a.source_ref).not.toMatch(/[\r\ufeff]/);
  });

  it('refuses lines that are not JSON objects, saying what they are', async () => {
    const content = ['[1,2]', '42', '"a string"', 'null', 'true', JSON.stringify(asset(1))].join(
      '\n',
    );
    const { job, stats, assets } = await importContent(content);
    expect(job.status).toBe('completed');
    expect(stats.invalid_samples).toEqual([
      { line: 1, reason: 'expected a JSON object, got an array' },
      { line: 2, reason: 'expected a JSON object, got number' },
      { line: 3, reason: 'expected a JSON object, got string' },
      { line: 4, reason: 'expected a JSON object, got null' },
      { line: 5, reason: 'expected a JSON object, got boolean' },
    ]);
    expect(assets).toHaveLength(1);
  });

  it('refuses lines without a usable title or source_type, naming the field', async () => {
    const content = [
      JSON.stringify({ source_type: 'upload' }),
      JSON.stringify({ title: '   ', source_type: 'upload' }),
      JSON.stringify({ title: 'x', source_type: 7 }),
      JSON.stringify({ title: 'x'.repeat(1001), source_type: 'upload' }),
      JSON.stringify({ title: 'x', source_type: 'upload', metadata: [1, 2] }),
    ].join('\n');
    const { stats, assets } = await importContent(content);
    expect(stats.invalid).toBe(5);
    expect(stats.invalid_samples.map((s) => s.reason.split(':')[0])).toEqual([
      'title',
      'title',
      'source_type',
      'title',
      'metadata',
    ]);
    expect(assets).toHaveLength(0);
  });

  it('reports a line that is not UTF-8 and goes on', async () => {
    const content = Buffer.concat([
      Buffer.from('{"title":"bad \xff byte","source_type":"upload"}\n', 'latin1'),
      Buffer.from(`${JSON.stringify(asset(1))}\n`),
    ]);
    const { stats, assets } = await importContent(content);
    expect(stats.invalid_samples).toEqual([{ line: 1, reason: 'line is not valid UTF-8' }]);
    expect(assets).toHaveLength(1);
  });

  it('bounds deeply nested metadata (10,000 levels)', async () => {
    const deep = `${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}`;
    const deepArray = `${'['.repeat(200_000)}${']'.repeat(200_000)}`;
    const content = [
      `{"title":"Deep","source_type":"upload","source_ref":"deep","metadata":${deep}}`,
      `{"title":"Deeper","source_type":"upload","source_ref":"arr","metadata":{"x":${deepArray}}}`,
    ].join('\n');
    const { job, stats, assets } = await importContent(content);
    expect(job.status).toBe('completed');
    expect(stats).toMatchObject({ valid: 2, inserted: 2 });
    const [arr, deepRow] = assets;
    expect(JSON.stringify(deepRow!.metadata)).toBe(
      '{"a":{"a":{"a":{"a":{"a":{"a":"[truncated: too deep]"}}}}}}',
    );
    expect(arr!.metadata).toEqual({ x: [[[[['[truncated: too deep]']]]]] });
  });

  it('replaces huge metadata with a truncation marker', async () => {
    const metadata = Object.fromEntries(
      Array.from({ length: 100 }, (_, i) => [`field${i}`, 'z'.repeat(4000)]),
    );
    const { stats, assets } = await importContent(jsonl([asset(1, { metadata })]));
    expect(stats.inserted).toBe(1);
    expect(assets[0]!.metadata).toEqual({ _truncated: true, _original_bytes: expect.any(Number) });
  });

  it("ignores another tenant's account_id inside a line", async () => {
    const other = randomUUID();
    const content = jsonl([
      asset(1, { account_id: other }),
      asset(2, { account_id: null }),
      asset(3),
    ]);
    const { accountId, job, stats, assets } = await importContent(content);
    expect(stats).toMatchObject({ valid: 3, inserted: 3, account_id_ignored: 2 });
    expect(assets.map((a) => a.account_id)).toEqual([accountId, accountId, accountId]);
    expect(assets.every((a) => a.import_job_id === job.id)).toBe(true);
    expect(await assetsOf(other)).toEqual([]);
    for (const a of assets) expect(JSON.stringify(a.metadata)).not.toContain(other);
  });

  it('keeps at most 20 invalid samples, with the right line numbers', async () => {
    const lines: string[] = [];
    for (let i = 1; i <= 100; i++) lines.push(i % 2 === 0 ? `bad ${i}` : JSON.stringify(asset(i)));
    const { stats, assets } = await importContent(lines.join('\n'));
    expect(stats).toMatchObject({ lines: 100, valid: 50, invalid: 50, inserted: 50 });
    expect(stats.invalid_samples).toHaveLength(20);
    expect(stats.invalid_samples.map((s) => s.line)).toEqual(
      Array.from({ length: 20 }, (_, i) => 2 * (i + 1)),
    );
    expect(assets).toHaveLength(50);
  });

  it('stores nothing PostgreSQL would refuse: NUL and unpaired surrogates', async () => {
    const content = [
      // In an identity field: refused, with a reason.
      '{"title":"nul \\u0000 title","source_type":"upload","source_ref":"n1"}',
      '{"title":"half \\ud83d","source_type":"upload","source_ref":"n2"}',
      // In metadata: replaced, the row kept.
      '{"title":"meta","source_type":"upload","source_ref":"n3","metadata":{"k\\u0000":"v\\u0000\\udc00"}}',
      // An invalid line whose JSON error quotes a NUL and cuts an emoji in half.
      `x\u0000${'😀'.repeat(80)}`,
      JSON.stringify(asset(1)),
    ].join('\n');
    const { job, stats, assets } = await importContent(content);
    expect(job.status).toBe('completed');
    expect(stats).toMatchObject({ lines: 5, valid: 2, invalid: 3, inserted: 2 });
    expect(stats.invalid_samples.map((s) => s.line)).toEqual([1, 2, 4]);
    expect(stats.invalid_samples[0]!.reason).toMatch(/^title: .*NUL/);
    expect(assets.map((a) => a.source_ref)).toEqual(['n3', 'ref-1']);
    expect(assets[0]!.metadata).toEqual({ 'k\ufffd': 'v\ufffd\ufffd' });
  });

  it('fails strict mode with INVALID_INPUT and writes nothing', async () => {
    const content = [JSON.stringify(asset(1)), '{broken', JSON.stringify(asset(2)), '[]'].join(
      '\n',
    );
    const { job, assets, result } = await importContent(content, { strict: true });
    expectFailed(job, 'INVALID_INPUT');
    expect(result.outcome).toBe('failed');
    expect(job.error).toMatch(/line 2: invalid JSON/);
    expect(job.error).toMatch(/2 invalid line\(s\); strict mode, nothing written/);
    expect(job.error_details).toMatchObject({
      invalid: 2,
      invalid_samples: [{ line: 2 }, { line: 4 }],
    });
    expect(assets).toEqual([]);
  });

  it('writes nothing in strict mode even when full batches precede the bad line', async () => {
    const valid = Array.from({ length: 5 }, (_, i) => JSON.stringify(asset(i)));
    const { job, assets } = await importContent([...valid, '{broken'].join('\n'), {
      strict: true,
      env: { HD_IMPORT_BATCH_SIZE: '2' }, // two full batches before line 6
    });
    expectFailed(job, 'INVALID_INPUT');
    expect(job.error).toMatch(/line 6: invalid JSON/);
    expect(assets).toEqual([]);
  });

  it('fails strict mode cleanly when the bad line carries a NUL', async () => {
    const content = [JSON.stringify(asset(1)), `nope\u0000${'😀'.repeat(80)}`].join('\n');
    const { job, assets } = await importContent(content, { strict: true });
    expectFailed(job, 'INVALID_INPUT');
    expect(job.error).toMatch(/line 2: invalid JSON/);
    expect(assets).toEqual([]);
  });

  it('imports everything in strict mode when every line is valid', async () => {
    const { job, stats, assets } = await importContent(jsonl([asset(1), asset(2)]), {
      strict: true,
    });
    expect(job.status).toBe('completed');
    expect(stats).toMatchObject({ valid: 2, inserted: 2 });
    expect(assets).toHaveLength(2);
  });

  it('completes a zero-byte file with 0 lines', async () => {
    const { job, stats, assets } = await importContent('');
    expect(job.status).toBe('completed');
    expect(stats).toMatchObject({ lines: 0, valid: 0, invalid: 0, inserted: 0, bytes: 0 });
    expect(assets).toEqual([]);
  });

  it('fails a missing file with FILE_NOT_FOUND at once (no retry)', async () => {
    const { job, path } = await importContent(undefined);
    expectFailed(job, 'FILE_NOT_FOUND');
    expect(job.max_attempts).toBeGreaterThan(1);
    expect(job.error).toContain(path);
  });

  it("refuses a path outside the job's tenant prefix, even when the file exists", async () => {
    const victim = randomUUID();
    const victimPath = keyFor(victim);
    await putObject(root, DEFAULT_BUCKET, victimPath, jsonl([asset(1)]));
    const attacker = randomUUID();
    for (const path of [
      victimPath,
      `${tenantPrefix(attacker)}../${victim}/assets-jsonl/x.jsonl`,
      `/${victimPath}`,
    ]) {
      const { job, assets } = await importContent(undefined, {
        accountId: attacker,
        debug: { bucket: DEFAULT_BUCKET, path },
      });
      expectFailed(job, 'PATH_OUTSIDE_TENANT');
      expect(job.error).toMatch(/refused/);
      expect(assets).toEqual([]);
    }
    expect(await assetsOf(victim)).toEqual([]);
  });

  it('fails a payload without path with INVALID_INPUT naming `path`', async () => {
    const { job } = await importContent(undefined, { debug: { bucket: DEFAULT_BUCKET } });
    expectFailed(job, 'INVALID_INPUT');
    expect(job.error).toMatch(/\bpath\b/);
  });

  it('fails an unknown job type with UNKNOWN_JOB_TYPE at once', async () => {
    const accountId = randomUUID();
    const queued = await t.db.enqueueJob({
      accountId,
      jobType: 'no_such_job_type',
      debug: {},
      maxAttempts: 5,
    });
    const { job, result } = await run(queued.id, accountId);
    expectFailed(job, 'UNKNOWN_JOB_TYPE');
    expect(result.outcome).toBe('failed');
    expect(job.error).toContain('"no_such_job_type"');
    expect(job.error).toContain('import_assets_jsonl');
  });

  it('is idempotent: a second run finds every row unchanged', async () => {
    const content = jsonl([
      asset(1, { metadata: { a: 1 } }),
      { title: 'No ref', source_type: 'drive', metadata: { derived: true } },
      asset(3),
    ]);
    const first = await importContent(content);
    expect(first.stats).toMatchObject({ inserted: 3, updated: 0, unchanged: 0 });
    await t.db.requeueJob(first.job.id);
    const second = await run(first.job.id, first.accountId);
    expect(second.job.status).toBe('completed');
    expect(second.stats).toMatchObject({ inserted: 0, updated: 0, unchanged: 3, valid: 3 });
    expect(second.assets).toEqual(first.assets);
    expect(second.assets).toHaveLength(3);
  });
});
