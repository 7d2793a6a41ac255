import { mkdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HdError } from '../contract/errors.ts';
import { DEFAULT_BUCKET } from '../contract/jobs.ts';
import { assertTenantPath, tenantPrefix } from '../contract/storage-paths.ts';
import { FsStorage } from '../control-plane/storage/fs.ts';
import { TenantStorage } from '../control-plane/storage/storage.ts';
import { ACCOUNT_A, ACCOUNT_B, putObject, tempDir } from './helpers/runtime.ts';

const A = tenantPrefix(ACCOUNT_A); // accounts/aaaa…/
const B = tenantPrefix(ACCOUNT_B);

/** The HdError thrown by `fn`, or a test failure when it does not throw one. */
function refusal(fn: () => unknown): HdError {
  try {
    fn();
  } catch (error) {
    if (error instanceof HdError) return error;
    throw error;
  }
  throw new Error('expected the path to be refused');
}

/** The HdError that `fn` throws or rejects with (TenantStorage throws before any await). */
async function rejection(fn: () => Promise<unknown>): Promise<HdError> {
  try {
    await fn();
  } catch (error) {
    if (error instanceof HdError) return error;
    throw error;
  }
  throw new Error('expected a rejection');
}

describe('assertTenantPath refuses', () => {
  const cases: [string, unknown, RegExp][] = [
    ['a ".." segment', `${A}assets/../../${ACCOUNT_B}/x.jsonl`, /"\." or "\.\." segment/],
    ['a ".." that climbs back into the prefix', `${A}x/../y.jsonl`, /"\." or "\.\." segment/],
    ['a "." segment', `${A}./x.jsonl`, /"\." or "\.\." segment/],
    ['a trailing ".."', `${A}..`, /"\." or "\.\." segment/],
    ['an absolute path', `/${A}x.jsonl`, /absolute/],
    ['an absolute path outside storage', '/etc/passwd', /absolute/],
    ['a backslash', `${A}x\\..\\..\\y.jsonl`, /backslash/],
    ['a Windows separator alone', `${A}dir\\x.jsonl`, /backslash/],
    ['a NUL byte', `${A}x.jsonl\u0000.png`, /control character/],
    ['a newline', `${A}x\n.jsonl`, /control character/],
    ['a carriage return', `${A}x\r.jsonl`, /control character/],
    ['a tab', `${A}x\t.jsonl`, /control character/],
    ['an escape character', `${A}x\u001b[31m.jsonl`, /control character/],
    ['DEL', `${A}x\u007f.jsonl`, /control character/],
    ['an empty segment', `${A}assets//x.jsonl`, /empty segment/],
    ['a trailing slash', `${A}assets/`, /trailing slash/],
    ['the bare prefix', A, /trailing slash/],
    ['the prefix without its slash', `accounts/${ACCOUNT_A}`, /not inside accounts\/aaaa/],
    ["another account's prefix", `${B}x.jsonl`, /not inside accounts\/aaaa/],
    ['a lookalike prefix (id + suffix)', `accounts/${ACCOUNT_A}x/y.jsonl`, /not inside/],
    [
      'a lookalike prefix (id - last char)',
      `accounts/${ACCOUNT_A.slice(0, -1)}/y.jsonl`,
      /not inside/,
    ],
    ['the id in upper case', `accounts/${ACCOUNT_A.toUpperCase()}/y.jsonl`, /not inside/],
    ['a path that is not under accounts/', `uploads/${ACCOUNT_A}/x.jsonl`, /not inside/],
    ['a prefix then a hop to another tenant', `${A}../${ACCOUNT_B}/x.jsonl`, /"\.\." segment/],
    ['a hop to another tenant from the top', `accounts/${ACCOUNT_A}/../${ACCOUNT_B}/x`, /"\.\."/],
    ['an empty string', '', /empty/],
    ['a number', 42, /empty/],
    ['null', null, /empty/],
    ['an array', [A, 'x.jsonl'], /empty/],
    ['a path longer than 1024 characters', `${A}${'x'.repeat(1024)}`, /longer than 1024/],
  ];

  it.each(cases)('%s', (_name, path, why) => {
    const error = refusal(() => assertTenantPath(ACCOUNT_A, path));
    expect(error.code).toBe('PATH_OUTSIDE_TENANT');
    expect(error.retryable).toBe(false);
    expect(error.message).toMatch(why);
    expect(error.message).toMatch(/^storage path .* refused: /s);
  });

  it('names the path in the message without letting a control character through raw', () => {
    const error = refusal(() => assertTenantPath(ACCOUNT_A, `${A}x\u0000\n.jsonl`));
    expect(error.message).not.toContain('\u0000');
    expect(error.message).not.toContain('\n');
    expect(error.message).toContain('\\u0000\\n');
    expect(error.details).toMatchObject({ accountId: ACCOUNT_A });
  });

  it('applies the length limit to the normalised form too', () => {
    // U+0958 is one code unit that NFC turns into two (it is a composition exclusion).
    const path = `${A}${'\u0958'.repeat(900)}`;
    expect(path.length).toBeLessThanOrEqual(1024);
    expect(path.normalize('NFC').length).toBeGreaterThan(1024);
    const error = refusal(() => assertTenantPath(ACCOUNT_A, path));
    expect(error.code).toBe('PATH_OUTSIDE_TENANT');
    expect(error.message).toMatch(/longer than 1024/);
  });
});

describe('assertTenantPath accepts', () => {
  it.each([
    `${A}x.jsonl`,
    `${A}assets-jsonl/1700000000000-import.jsonl`,
    `${A}deep/er/still/x.jsonl`,
    `${A}..hidden/x..jsonl`, // dots inside a name are not a "." or ".." segment
    `${A}with space/and%2e%2e/x.jsonl`, // percent signs are literal characters in a key
    `${A}${'x'.repeat(1024 - A.length)}`, // exactly the limit
  ])('%s', (path) => {
    expect(assertTenantPath(ACCOUNT_A, path)).toBe(path);
  });

  it('returns the NFC form of a decomposed name', () => {
    const decomposed = `${A}cafe\u0301/re\u0301sume\u0301.jsonl`;
    const composed = `${A}caf\u00e9/r\u00e9sum\u00e9.jsonl`;
    expect(decomposed).not.toBe(composed);
    expect(assertTenantPath(ACCOUNT_A, decomposed)).toBe(composed);
    expect(assertTenantPath(ACCOUNT_A, composed)).toBe(composed);
  });

  it('keeps lookalike dots and slashes from other scripts as plain characters', () => {
    // Fullwidth full stop and solidus are not "." and "/" under NFC (only under NFKC).
    const path = `${A}\uff0e\uff0e\uff0f${ACCOUNT_B}/x.jsonl`;
    expect(assertTenantPath(ACCOUNT_A, path)).toBe(path);
  });
});

describe('FsStorage', () => {
  let root: string;
  let outside: string;
  beforeAll(async () => {
    root = await tempDir('hd-storage-');
    outside = await tempDir('hd-outside-');
    await writeFile(join(outside, 'secret.jsonl'), 'top secret\n');
    await putObject(root, DEFAULT_BUCKET, `${A}ok.jsonl`, 'hello\n');
    await putObject(root, DEFAULT_BUCKET, `${B}theirs.jsonl`, 'tenant b only\n');
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
    await rm(outside, { recursive: true, force: true });
  });

  const bucketPath = (key: string) => join(root, DEFAULT_BUCKET, key);

  it('hands out an object inside the tenant prefix', async () => {
    const storage = new TenantStorage(new FsStorage(root), ACCOUNT_A, root);
    const file = await storage.download(DEFAULT_BUCKET, `${A}ok.jsonl`);
    expect(file).toEqual({ path: bucketPath(`${A}ok.jsonl`), size: 6 });
  });

  it('refuses a symlink inside the bucket that points outside it', async () => {
    await symlink(join(outside, 'secret.jsonl'), bucketPath(`${A}link.jsonl`));
    const error = await rejection(() =>
      new FsStorage(root).download(DEFAULT_BUCKET, `${A}link.jsonl`),
    );
    expect(error.code).toBe('PATH_OUTSIDE_TENANT');
    expect(error.message).toContain(`${A}link.jsonl`);
  });

  it('refuses a symlinked folder that points outside the bucket', async () => {
    await symlink(outside, bucketPath(`${A}linked-dir`));
    const error = await rejection(() =>
      new FsStorage(root).download(DEFAULT_BUCKET, `${A}linked-dir/secret.jsonl`),
    );
    expect(error.code).toBe('PATH_OUTSIDE_TENANT');
  });

  it("refuses a symlink that points into another tenant's prefix", async () => {
    await symlink(join('..', ACCOUNT_B, 'theirs.jsonl'), bucketPath(`${A}to-b.jsonl`));
    const error = await rejection(() =>
      new TenantStorage(new FsStorage(root), ACCOUNT_A, root).download(
        DEFAULT_BUCKET,
        `${A}to-b.jsonl`,
      ),
    );
    expect(error.code).toBe('PATH_OUTSIDE_TENANT');
  });

  it('refuses to upload through a symlinked folder that points outside the bucket', async () => {
    await symlink(outside, bucketPath(`${A}upload-dir`));
    const local = join(root, 'local.jsonl');
    await writeFile(local, 'x\n');
    const error = await rejection(() =>
      new FsStorage(root).upload(DEFAULT_BUCKET, `${A}upload-dir/planted.jsonl`, local),
    );
    expect(error.code).toBe('PATH_OUTSIDE_TENANT');
    await expect(stat(join(outside, 'planted.jsonl'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('reports a missing object as FILE_NOT_FOUND (not retryable)', async () => {
    const error = await rejection(() =>
      new FsStorage(root).download(DEFAULT_BUCKET, `${A}missing.jsonl`),
    );
    expect(error.code).toBe('FILE_NOT_FOUND');
    expect(error.retryable).toBe(false);
    expect(error.message).toContain(`${DEFAULT_BUCKET}/${A}missing.jsonl`);
  });

  it('reports a folder as FILE_NOT_FOUND, not as a file', async () => {
    await mkdir(bucketPath(`${A}a-folder`), { recursive: true });
    const error = await rejection(() =>
      new FsStorage(root).download(DEFAULT_BUCKET, `${A}a-folder`),
    );
    expect(error.code).toBe('FILE_NOT_FOUND');
  });

  it('refuses a bucket name that could leave the storage root', async () => {
    for (const bucket of ['..', '../x', 'a/b', '', '.hidden']) {
      const error = await rejection(() => new FsStorage(root).download(bucket, `${A}ok.jsonl`));
      expect(error.code, bucket).toBe('INVALID_INPUT');
    }
  });

  it('checks the key before touching the backend', async () => {
    const error = await rejection(() =>
      new TenantStorage(new FsStorage(root), ACCOUNT_A, root).download(
        DEFAULT_BUCKET,
        `${B}theirs.jsonl`,
      ),
    );
    expect(error.code).toBe('PATH_OUTSIDE_TENANT');
  });
});
