import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LeasedJob } from '../contract/jobs.ts';
import { OUTPUTS_BUCKET } from '../contract/storage-paths.ts';
import { configToEnv } from '../control-plane/config.ts';
import { artifactsOf } from '../control-plane/db/artifacts.ts';
import { batchesOf } from '../control-plane/db/batches.ts';
import { FsStorage } from '../control-plane/storage/fs.ts';
import type { StorageBackend } from '../control-plane/storage/storage.ts';
import { SupabaseStorage } from '../control-plane/storage/supabase.ts';
import { ArtifactUploader } from '../runner/artifacts.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, tempDir, testConfig } from './helpers/runtime.ts';
import { startLocalSupabase, type LocalSupabase } from './helpers/supabase-proxy.ts';

// `hd-runner jobs artifacts` as an operator runs it (a child process), on fs storage and on
// Supabase Storage (the stand-in: Storage cannot run here) with the real PostgREST.
let t: TestDatabase;
let work: string;
beforeAll(async () => {
  t = await createTestDatabase();
  work = await tempDir('hd-cli-artifacts-');
});
afterAll(() => t.drop());

const FILES = [
  { kind: 'page_text', name: 'report.pdf/p0001.md', content: '# Page 1\n', type: 'text/markdown' },
  { kind: 'page_image', name: 'report.pdf/p0001.png', content: 'png bytes', type: 'image/png' },
  { kind: 'archive', name: 'artifacts.zip', content: 'zip bytes', type: 'application/zip' },
];

async function jobWithArtifacts(storage: StorageBackend, batchId?: string): Promise<string> {
  let job: { id: string };
  if (batchId) {
    const jobs = await batchesOf(t.db).listBatchJobs(batchId, 10);
    job = jobs.find((j) => j.status === 'queued')!;
  } else job = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'probe', debug: {} });
  const [leased] = await t.db.claimJobs({ workerId: 'w', jobId: job.id, leaseSeconds: 60 });
  const uploader = new ArtifactUploader(artifactsOf(t.db), storage, leased as LeasedJob);
  for (const f of FILES) {
    const path = join(work, `${f.kind}-${job.id}`);
    await writeFile(path, f.content);
    await uploader.upload({ kind: f.kind, name: f.name, path, contentType: f.type });
  }
  return job.id;
}

function suite(setup: () => { env: Record<string, string>; storage: StorageBackend }) {
  const cli = (...args: string[]) =>
    execa(process.execPath, ['cli/main.ts', 'jobs', 'artifacts', ...args], {
      env: setup().env,
      extendEnv: false,
      reject: false,
    });

  it('lists a job artifacts, with links that fetch their bytes', async () => {
    const jobId = await jobWithArtifacts(setup().storage);
    const listed = await cli(jobId.slice(0, 8), '--url', '--expires', '600', '--json');
    expect(listed.exitCode, listed.stderr).toBe(0);
    const rows = JSON.parse(listed.stdout) as { kind: string; name: string; url: string }[];
    expect(rows.map((r) => `${r.kind}/${r.name}`)).toEqual([
      'archive/artifacts.zip',
      'page_image/report.pdf/p0001.png',
      'page_text/report.pdf/p0001.md',
    ]);
    const text = rows[2]!.url;
    const bytes = text.startsWith('file:')
      ? await readFile(fileURLToPath(text), 'utf8')
      : await (await fetch(text)).text();
    expect(bytes).toBe('# Page 1\n');
    const table = await cli(jobId);
    expect(table.stdout).toMatch(/^page_text +report\.pdf\/p0001\.md +9 /m);
  });

  it('downloads and archives a job, and a batch, each file checked', async () => {
    const jobId = await jobWithArtifacts(setup().storage);
    const dir = join(work, `dl-${jobId}`);
    const got = await cli(jobId, '--download', dir);
    expect(got.exitCode, got.stderr).toBe(0);
    expect(await readFile(join(dir, 'page_text/report.pdf/p0001.md'), 'utf8')).toBe('# Page 1\n');
    expect(await readFile(join(dir, 'archive/artifacts.zip'), 'utf8')).toBe('zip bytes');

    const zip = join(work, `${jobId}.zip`);
    const archived = await cli(jobId, '--archive', zip);
    expect(archived.exitCode, archived.stderr).toBe(0);
    const entries = execFileSync('unzip', ['-Z1', zip], { encoding: 'utf8' }).trim().split('\n');
    // Stored archives are left out: the same files twice.
    expect(entries.sort()).toEqual([
      'page_image/report.pdf/p0001.png',
      'page_text/report.pdf/p0001.md',
    ]);
    expect(
      execFileSync('unzip', ['-p', zip, 'page_image/report.pdf/p0001.png'], { encoding: 'utf8' }),
    ).toBe('png bytes');

    const batch = await batchesOf(t.db).enqueueBatch({
      accountId: ACCOUNT_A,
      name: `artifacts ${jobId}`,
      jobs: [
        { jobType: 'probe', debug: {} },
        { jobType: 'probe', debug: {} },
      ],
    });
    const [one, two] = [
      await jobWithArtifacts(setup().storage, batch.id),
      await jobWithArtifacts(setup().storage, batch.id),
    ];
    const batchZip = join(work, `${batch.id}.zip`);
    const all = await cli('--batch', batch.id.slice(0, 8), '--archive', batchZip);
    expect(all.exitCode, all.stderr).toBe(0);
    const names = execFileSync('unzip', ['-Z1', batchZip], { encoding: 'utf8' }).trim().split('\n');
    expect(names.sort()).toEqual(
      [one, two]
        .flatMap((id) => [
          `${id}/page_image/report.pdf/p0001.png`,
          `${id}/page_text/report.pdf/p0001.md`,
        ])
        .sort(),
    );
  });

  it('a job without artifacts: listed as none, archive refused with NO_ARTIFACTS and no file', async () => {
    const job = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'probe', debug: {} });
    expect((await cli(job.id)).stdout).toBe(`job ${job.id}: no artifacts`);
    const zip = join(work, `none-${job.id}.zip`);
    const refused = await cli(job.id, '--archive', zip);
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr).toBe(
      `hd-runner: NO_ARTIFACTS: job ${job.id} has no artifacts, nothing to archive (extract_text stores them when its payload asks: include_texts, include_images, include_previews)`,
    );
    expect(existsSync(zip)).toBe(false);
    expect((await cli(job.id, '--batch', job.id)).exitCode).toBe(2);
  });
}

describe('fs storage, postgres transport', () => {
  let root: string;
  beforeAll(async () => {
    root = await tempDir('hd-cli-artifacts-fs-');
  });
  suite(() => ({
    env: { PATH: process.env.PATH ?? '', ...configToEnv(testConfig(t.url, root)) },
    storage: new FsStorage(root),
  }));

  it('refuses an object that no longer matches its checksum, leaving no archive', async () => {
    const jobId = await jobWithArtifacts(new FsStorage(root));
    const [row] = (await artifactsOf(t.db).list({ jobId })).filter((a) => a.kind === 'page_text');
    await writeFile(join(root, OUTPUTS_BUCKET, row!.storage_path), '# Tampered\n');
    const zip = join(work, `tampered-${jobId}.zip`);
    const refused = await execa(
      process.execPath,
      ['cli/main.ts', 'jobs', 'artifacts', jobId, '--archive', zip],
      {
        env: { PATH: process.env.PATH ?? '', ...configToEnv(testConfig(t.url, root)) },
        extendEnv: false,
        reject: false,
      },
    );
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr).toMatch(
      /^hd-runner: CHECKSUM_MISMATCH: artifact page_text\/report\.pdf\/p0001\.md of job .* hashes to [0-9a-f]{64}, not the recorded/,
    );
    expect(existsSync(zip)).toBe(false);
    expect((await readdir(work)).filter((f) => f.includes('.partial-'))).toEqual([]);
  });
});

describe('supabase storage (stand-in), supabase transport (real PostgREST)', () => {
  let supabase: LocalSupabase;
  beforeAll(async () => {
    supabase = await startLocalSupabase(t.url);
    await supabase.storage.createBucket(OUTPUTS_BUCKET);
  });
  afterAll(() => supabase.stop());
  suite(() => ({
    env: {
      PATH: process.env.PATH ?? '',
      HD_TRANSPORT: 'supabase',
      HD_STORAGE: 'supabase',
      SUPABASE_URL: supabase.url,
      SUPABASE_SERVICE_ROLE_KEY: supabase.serviceRoleKey,
      HD_LOG_LEVEL: 'silent',
    },
    storage: new SupabaseStorage({ url: supabase.url, serviceRoleKey: supabase.serviceRoleKey }),
  }));
});
