import { mkdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HdError } from '../contract/errors.ts';
import { DEFAULT_BUCKET } from '../contract/jobs.ts';
import {
  assertBucketName,
  assertStorageKey,
  assertTenantPath,
  tenantPrefix,
  toStorageName,
} from '../contract/storage-paths.ts';
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
    // A URL parser decodes %2e%2e to ".." and then climbs: escapes are refused outright.
    ['an encoded ".." (lower case)', `${B}%2e%2e/${ACCOUNT_A}/secret.jsonl`, /"%"/],
    ['an encoded ".." (upper case)', `${A}%2E%2E/%2E%2E/${ACCOUNT_B}/x.jsonl`, /"%"/],
    ['a half-encoded ".."', `${A}.%2E/${ACCOUNT_B}/x.jsonl`, /"%"/],
    ['an encoded slash', `${A}..%2F..%2F${ACCOUNT_B}%2Fx.jsonl`, /"%"/],
    ['a literal percent sign', `${A}100%.jsonl`, /"%"/],
    ['a "?" (the URL query would start there)', `${A}x.jsonl?download=1`, /"\?" or "#"/],
    ['a "#" (the URL fragment would start there)', `${A}x.jsonl#frag`, /"\?" or "#"/],
    ['a "#" and a "%"', `${A}a#b%c.txt`, /"%"/],
    ['a letter outside ASCII', `${A}Müller.txt`, /does not accept in keys: "ü"/],
    ['a decomposed accent', `${A}cafe\u0301.txt`, /does not accept in keys: "é"/],
    ['fullwidth dots and slash', `${A}\uff0e\uff0e\uff0f${ACCOUNT_B}/x.jsonl`, /does not accept/],
    ['a quote and angle brackets', `${A}"<x>".txt`, /does not accept in keys: "\\"<>"/],
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
    // Every punctuation character Supabase Storage accepts in a key, but "?".
    `${A}with space/(1) a&b$c@d=e;f:g+h,i!j*k'l_m-n.jsonl`,
    `${A}${'x'.repeat(1024 - A.length)}`, // exactly the limit
  ])('%s', (path) => {
    expect(assertTenantPath(ACCOUNT_A, path)).toBe(path);
  });
});

describe('assertStorageKey and assertBucketName (what every backend checks)', () => {
  it('refuses the same keys without an account, naming no account', () => {
    const error = refusal(() => assertStorageKey(`${B}%2e%2e/${ACCOUNT_A}/secret.jsonl`));
    expect(error.code).toBe('PATH_OUTSIDE_TENANT');
    expect(error.details).not.toHaveProperty('accountId');
    expect(assertStorageKey(`${B}x.jsonl`)).toBe(`${B}x.jsonl`);
  });

  it.each([
    'hd_uploads_raw/accounts/x/secret.jsonl#',
    'hd_uploads_raw?x=1',
    'hd_uploads_raw#',
    'a/b',
    '..',
    '.hidden',
    '',
    'with space',
    'b%2F..',
    'x'.repeat(64),
  ])('refuses the bucket name %j', (bucket) => {
    const error = refusal(() => assertBucketName(bucket));
    expect(error.code).toBe('INVALID_INPUT');
    expect(error.message).toContain('bucket name');
  });

  it('accepts plain bucket names', () => {
    for (const bucket of ['hd_uploads_raw', 'tiny', 'Media-2.v1', '_x'])
      expect(assertBucketName(bucket)).toBe(bucket);
  });
});

describe('toStorageName (enqueue: any file name into one allowed key segment)', () => {
  it.each([
    ['Müller Bericht (final).jsonl', 'Muller Bericht (final).jsonl'],
    ['Straße_Æon_øst.jsonl', 'Strasse_AEon_ost.jsonl'],
    ['cafe\u0301 déjà.jsonl', 'cafe deja.jsonl'],
    ['ｆｕｌｌ／ｗｉｄｔｈ.jsonl', 'full_width.jsonl'],
    ['a#b%c?d.jsonl', 'a_b_c_d.jsonl'],
    ['..', 'file'],
    ['', 'file'],
    ['東京.jsonl', '_.jsonl'],
    ['tab\there\u0000.jsonl', 'tab_here_.jsonl'],
  ])('%j → %j', (name, expected) => {
    const mapped = toStorageName(name);
    expect(mapped).toBe(expected);
    expect(assertTenantPath(ACCOUNT_A, `${A}assets-jsonl/1-${mapped}`)).toBe(
      `${A}assets-jsonl/1-${mapped}`,
    );
  });

  it('keeps a long name within the key length limit', () => {
    expect(toStorageName(`${'ä'.repeat(1000)}.jsonl`).length).toBeLessThanOrEqual(200);
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
    for (const bucket of ['..', '../x', 'a/b', '', '.hidden', `${DEFAULT_BUCKET}/${B}x#`]) {
      const error = await rejection(() => new FsStorage(root).download(bucket, `${A}ok.jsonl`));
      expect(error.code, bucket).toBe('INVALID_INPUT');
    }
  });

  it('refuses a key that is not canonical even when called without TenantStorage', async () => {
    for (const key of [`${B}%2e%2e/${ACCOUNT_A}/ok.jsonl`, `${A}x/../ok.jsonl`, `${A}ok.jsonl#`]) {
      const error = await rejection(() => new FsStorage(root).download(DEFAULT_BUCKET, key));
      expect(error.code, key).toBe('PATH_OUTSIDE_TENANT');
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
