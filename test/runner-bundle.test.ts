import { randomUUID } from 'node:crypto';
import { readFile, symlink, writeFile } from 'node:fs/promises';
import { stripTypeScriptTypes } from 'node:module';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LeasedJob } from '../contract/jobs.ts';
import { configToEnv } from '../control-plane/config.ts';
import { PACKAGE_ROOT } from '../control-plane/package-root.ts';
import { ProcessLauncher } from '../scheduler/launchers/process.ts';
import { bundleRunner } from '../scripts/bundle-runner.ts';
import { GERMAN, requireTools } from './fixtures/documents.ts';
import { makePdf, wrap } from './fixtures/make-pdf.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, putObject, tempDir, testConfig } from './helpers/runtime.ts';

// The runner's bundle (issue 13) as a scheduler's process launcher starts it once built:
// `node dist/cli/main.js run --job-id ID`, where main.js hands `run` to runner.mjs beside
// it. Built here from this checkout (scripts/bundle-runner.ts) into a folder laid out like
// dist/cli, with main.ts's own code as main.js; the images run the same through
// test/helpers/docker.ts's build (docker-launcher.test.ts checks the entry there).
let t: TestDatabase;
let root: string;
let home: string;
let main: string;

beforeAll(async () => {
  requireTools('pdftotext', 'pdfinfo');
  const built = await tempDir('hd-bundle-');
  await bundleRunner(join(built, 'cli'));
  const source = await readFile(join(PACKAGE_ROOT, 'cli', 'main.ts'), 'utf8');
  main = join(built, 'cli', 'main.js');
  await writeFile(main, stripTypeScriptTypes(source));
  await writeFile(join(built, 'package.json'), '{ "type": "module" }\n');
  // Dependencies left out of the bundle resolve as in an install: node_modules above it.
  await symlink(join(PACKAGE_ROOT, 'node_modules'), join(built, 'node_modules'));
  [t, root, home] = await Promise.all([
    createTestDatabase(),
    tempDir('hd-bundle-storage-'),
    tempDir('hd-bundle-home-'),
  ]);
}, 120_000);
afterAll(() => t?.drop());

/** An extract_text job of a new document with this PDF, claimed as a scheduler would. */
async function claimedExtract(pdf: Buffer): Promise<LeasedJob> {
  const documentId = randomUUID();
  const key = `accounts/${ACCOUNT_A}/documents/${documentId}/bundle.pdf`;
  await putObject(root, 'hd_uploads_raw', key, pdf);
  await t.sql.query(
    `insert into hd_document_files (account_id, document_id, bucket, storage_path, mime_type, size_bytes)
     values ($1, $2, 'hd_uploads_raw', $3, 'application/pdf', $4)`,
    [ACCOUNT_A, documentId, key, pdf.length],
  );
  const job = await t.db.enqueueJob({
    accountId: ACCOUNT_A,
    jobType: 'extract_text',
    documentId,
    debug: {},
  });
  const [leased] = await t.db.claimJobs({
    workerId: 'bundle-test',
    jobId: job.id,
    leaseSeconds: 60,
  });
  return leased as LeasedJob;
}

/** Runs the job through the process launcher; its exit and output lines. */
async function launch(job: LeasedJob, env: Record<string, string> = {}) {
  const launcher = new ProcessLauncher({
    // HOME: the runner's compile cache (~/.cache/hd-runner) starts empty, and is this test's.
    env: {
      PATH: process.env.PATH ?? '',
      HOME: home,
      ...configToEnv(testConfig(t.url, root, { HD_LOG_LEVEL: 'info' })),
      ...env,
    },
    command: [process.execPath, main],
  });
  const lines: string[] = [];
  const runner = await launcher.launch({
    job,
    resources: { gpu: false, memoryMb: 512, cpus: 1, timeoutMs: 60_000 },
    onOutput: (line) => lines.push(line),
  });
  return { exit: await runner.wait(), lines };
}

const logged = (lines: string[], message: string) =>
  lines.map((l) => (l.startsWith('{') ? JSON.parse(l) : {})).find((l) => l.msg === message);

describe('the runner bundle (dist/cli/runner.mjs)', () => {
  it('runs an extract_text job end to end, the PDF parser child beside it, from V8 compile cache the second time', async () => {
    // Page 2 is blank to poppler, so pdf.js is asked too: pdf-child.mjs, in its own process.
    const pdf = makePdf([
      { kind: 'text', lines: wrap(GERMAN) },
      { kind: 'text', lines: [] },
    ]);
    const first = await claimedExtract(pdf);
    const { exit, lines } = await launch(first);
    expect(exit, lines.join('\n')).toMatchObject({ exitCode: 0 });
    expect(logged(lines, 'job started')).toMatchObject({
      job_id: first.id,
      code_file: 'runner.mjs',
    });
    const done = await t.db.getJob(first.id);
    expect(done).toMatchObject({ status: 'completed', progress_percent: 100 });
    expect(done!.debug.stats).toMatchObject({ pages: 2, blank_pages: 1, pages_failed: 0 });
    // The child ran (its peak memory is recorded); a child not found would be swallowed
    // (poppler's reading stands) and leave 0 here.
    expect(
      (done!.debug.stats as { parser_peak_rss_mb: number }).parser_peak_rss_mb,
    ).toBeGreaterThan(0);
    const { rows } = await t.sql.query(
      `select string_agg(content, ' ' order by chunk_index) as text from hd_asset_chunks where document_id = $1`,
      [first.document_id],
    );
    expect(rows[0].text).toMatch(/Grüße aus München/);

    // The first run wrote the bundle's compile cache under HOME; the second reads it.
    const second = await claimedExtract(pdf);
    const cached = await launch(second, { NODE_DEBUG_NATIVE: 'COMPILE_CACHE' });
    expect(cached.exit).toMatchObject({ exitCode: 0 });
    expect(cached.lines).toContainEqual(
      expect.stringMatching(/V8 code cache for ESM file:\/\/\S+\/cli\/runner\.mjs was accepted/),
    );
  }, 120_000);
});
