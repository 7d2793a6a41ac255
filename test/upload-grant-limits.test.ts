import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LeasedJob } from '../contract/jobs.ts';
import { jobOutputPrefix, OUTPUTS_BUCKET } from '../contract/storage-paths.ts';
import { loadConfig } from '../control-plane/config.ts';
import { artifactsOf } from '../control-plane/db/artifacts.ts';
import { SignedUrlStorage } from '../control-plane/storage/signed-urls.ts';
import { ArtifactUploader } from '../runner/artifacts.ts';
import { GrantLimits, MAX_URLS_PER_LEASE, signedUrlEnd } from '../scheduler/upload-grant-limits.ts';
import { uploadGrantsFor, type UploadGrants } from '../scheduler/upload-grants.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, memoryLogger, tempDir } from './helpers/runtime.ts';
import {
  startLocalSupabase,
  type LocalSupabase,
  supabaseSettings,
} from './helpers/supabase-proxy.ts';

// The upload grants' per-lease limits (scheduler/upload-grant-limits.ts): the bucket and the
// one-URL-per-key rule on a clock of the test's own, then the grant service as the scheduler
// serves it, against the Storage stand-in (Storage cannot run here), with a runner's upload
// waiting out its 429. The attack from a runner container: test/upload-grant-limit.test.ts.

describe('GrantLimits', () => {
  const clock = () => {
    const c = { at: 1_000_000, now: () => c.at };
    return c;
  };

  it('lets `burst` asks through at once, then `rate` a second, and says how long to wait', () => {
    const c = clock();
    const limits = new GrantLimits({ rate: 2, burst: 3 }, c.now);
    expect([1, 2, 3, 4].map(() => limits.take('j', 'l'))).toEqual([0, 0, 0, 500]);
    expect(limits.take('j', 'other lease')).toBe(0); // a lease of its own
    c.at += 499;
    expect(limits.take('j', 'l')).toBe(1);
    c.at += 1;
    expect(limits.take('j', 'l')).toBe(0);
    c.at += 60_000; // refilled to `burst`, no more
    expect([1, 2, 3, 4].map(() => limits.take('j', 'l'))).toEqual([0, 0, 0, 500]);
    limits.forget('j');
    expect(limits.leases).toBe(0);
  });

  it('signs a key once while its URL lasts (asks at once share it), again once it ends', async () => {
    const c = clock();
    const limits = new GrantLimits({ rate: 1, burst: 1 }, c.now);
    let signed = 0;
    const exp = Math.floor(c.at / 1000) + 7200;
    const payload = Buffer.from(JSON.stringify({ exp })).toString('base64url');
    const sign = async () => `https://s/object/upload/sign/b/k?token=h.${payload}.${++signed}`;
    const [a, b] = await Promise.all([
      limits.signOnce('j', 'l', 'k', sign),
      limits.signOnce('j', 'l', 'k', sign),
    ]);
    expect([a, b, signed]).toEqual([a, a, 1]);
    expect(signedUrlEnd(a, 0)).toBe(exp * 1000);
    expect(await limits.signOnce('j', 'l2', 'k', sign)).not.toBe(a); // another lease
    c.at += 7200_000 - 5 * 60_000 - 1;
    expect(await limits.signOnce('j', 'l', 'k', sign)).toBe(a);
    c.at += 1; // 5 minutes before its end: not given out again
    expect(await limits.signOnce('j', 'l', 'k', sign)).toMatch(/\.3$/);
    // A failed sign is not kept: the next ask signs.
    await expect(
      limits.signOnce('j', 'l', 'k2', () => Promise.reject(new Error('storage down'))),
    ).rejects.toThrow('storage down');
    expect(await limits.signOnce('j', 'l', 'k2', sign)).toMatch(/\.4$/);
  });

  it('keeps at most MAX_URLS_PER_LEASE URLs per lease, dropping the oldest', async () => {
    const limits = new GrantLimits({ rate: 1, burst: 1 }, clock().now);
    let signed = 0;
    const sign = async () => `https://s/object/upload/sign/b/k?token=x.${++signed}`;
    for (let i = 0; i <= MAX_URLS_PER_LEASE; i += 1) await limits.signOnce('j', 'l', `k${i}`, sign);
    expect(signed).toBe(MAX_URLS_PER_LEASE + 1);
    await limits.signOnce('j', 'l', `k${MAX_URLS_PER_LEASE}`, sign); // the newest: kept
    expect(signed).toBe(MAX_URLS_PER_LEASE + 1);
    await limits.signOnce('j', 'l', 'k0', sign); // the oldest: dropped, signed again
    expect(signed).toBe(MAX_URLS_PER_LEASE + 2);
  });
});

describe('the grant service (Storage stand-in)', () => {
  let t: TestDatabase;
  let supabase: LocalSupabase;
  let grants: UploadGrants;
  let work: string;
  beforeAll(async () => {
    t = await createTestDatabase();
    supabase = await startLocalSupabase(t.url);
    await supabase.storage.createBucket(OUTPUTS_BUCKET);
    work = await tempDir('hd-grant-limits-');
    const config = loadConfig({
      ...supabaseSettings(supabase),
      HD_TRANSPORT: 'postgres',
      HD_DATABASE_URL: t.url,
      HD_UPLOAD_GRANT_RATE: '0.5', // Retry-After: 2 s
      HD_UPLOAD_GRANT_BURST: '2',
    });
    grants = (await uploadGrantsFor(config, t.db, memoryLogger().log))!;
  });
  afterAll(async () => {
    await grants?.close();
    await supabase?.stop();
    await t?.drop();
  });

  it('rejects limits that are not positive numbers, naming the setting', () => {
    expect(() => loadConfig({ HD_UPLOAD_GRANT_RATE: '0' })).toThrow(/HD_UPLOAD_GRANT_RATE/);
    expect(() => loadConfig({ HD_UPLOAD_GRANT_BURST: '1.5' })).toThrow(/HD_UPLOAD_GRANT_BURST/);
    expect(loadConfig({})).toMatchObject({ HD_UPLOAD_GRANT_RATE: 10, HD_UPLOAD_GRANT_BURST: 20 });
  });

  it('answers a repeat ask with the same URL, past the burst 429; the runner waits it out', async () => {
    const queued = await t.db.enqueueJob({
      accountId: ACCOUNT_A,
      jobType: 'extract_text',
      debug: {},
    });
    const [job] = (await t.db.claimJobs({
      workerId: 'w',
      jobId: queued.id,
      leaseSeconds: 600,
    })) as [LeasedJob];
    const store = artifactsOf(t.db);
    const spec = { kind: 'preview', name: 'a.txt', contentType: 'text/plain' };
    const hello = {
      ...spec,
      sizeBytes: 5,
      sha256: createHash('sha256').update('hello').digest('hex'),
    };
    const key = `${jobOutputPrefix(ACCOUNT_A, job.id)}preview/a.txt`;
    await store.begin(job.id, job.lease_token, hello);
    const ask = async (leaseToken = job.lease_token) => {
      const res = await fetch(grants.url, {
        method: 'POST',
        body: JSON.stringify({
          job_id: job.id,
          lease_token: leaseToken,
          bucket: OUTPUTS_BUCKET,
          key,
        }),
      });
      return {
        status: res.status,
        retryAfter: res.headers.get('retry-after'),
        body: (await res.json()) as { url?: string; error?: string },
      };
    };
    const before = supabase.storage.requests.length;
    // The third in upper case: the same lease to the database, so the same bucket.
    const [first, second, third] = [
      await ask(),
      await ask(),
      await ask(job.lease_token.toUpperCase()),
    ];
    expect(second.body).toEqual(first.body); // the same URL (a runner retrying after an error)
    expect(third).toEqual({
      status: 429,
      retryAfter: '2',
      body: { error: `too many upload grants for job ${job.id}: retry after 2 s` },
    });
    // Each grant removes what is at the key; the URL is signed once.
    expect(
      supabase.storage.requests.slice(before).map((r) => `${r.method} ${r.path.split('?')[0]}`),
    ).toEqual([
      'DELETE /object/hd_outputs',
      `POST /object/upload/sign/hd_outputs/${key}`,
      'DELETE /object/hd_outputs',
    ]);
    // The runner's upload, with the bucket empty: it waits Retry-After, then stores.
    const path = join(work, 'b.txt');
    await writeFile(path, 'world!');
    const row = await new ArtifactUploader(store, new SignedUrlStorage({}, grants.url), job).upload(
      { kind: 'preview', name: 'b.txt', path, contentType: 'text/plain' },
    );
    expect(String(await supabase.storage.readObject(OUTPUTS_BUCKET, row.storage_path))).toBe(
      'world!',
    );
    // The URL given twice stores the object once, as the runner's retry would.
    const put = await fetch(first.body.url!, { method: 'PUT', body: 'hello' });
    expect(put.status).toBe(200);
    await store.record(job.id, job.lease_token, hello);
  });
});
