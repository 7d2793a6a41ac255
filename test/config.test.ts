import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, redactUrl, requireSetting } from '../control-plane/config.ts';

const MAIN = fileURLToPath(new URL('../cli/main.ts', import.meta.url));
const RECORD_IMPORTS = fileURLToPath(new URL('./helpers/record-imports.ts', import.meta.url));

/** The ConfigError that loadConfig throws for `env`. */
function configError(env: Record<string, string>): ConfigError {
  try {
    loadConfig(env);
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error(`expected ${JSON.stringify(env)} to be refused`);
}

/**
 * Runs the CLI as a user would, with nothing inherited but PATH (and a demo folder that
 * does not exist: a demo run in this checkout must not become the database here).
 */
function cli(args: string[], env: Record<string, string> = {}) {
  return execa(process.execPath, [MAIN, ...args], {
    env: { PATH: process.env.PATH ?? '', HD_DEMO_DIR: join(tmpdir(), 'hd-test-no-demo'), ...env },
    extendEnv: false,
    reject: false,
    timeout: 20_000,
  });
}

const PASSWORD = 'hunter2-Secret';

describe('loadConfig', () => {
  it('gives the documented defaults for an empty environment', () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      HD_TRANSPORT: 'postgres',
      HD_STORAGE: 'fs',
      HD_STORAGE_ROOT: './.hd-data/storage',
      HD_BUCKET: 'hd_uploads_raw',
      HD_SLOTS: 2,
      HD_LEASE_SECONDS: 60,
      HD_POLL_INTERVAL_MS: 2000,
      HD_REAP_INTERVAL_MS: 15000,
      HD_SHUTDOWN_GRACE_MS: 30000,
      HD_LAUNCHER: 'process',
      HD_DATABASE_POOL_SIZE: 4,
      HD_IMPORT_BATCH_SIZE: 5000,
      HD_MAX_LINE_BYTES: 1024 * 1024,
      HD_LOG_LEVEL: 'info',
    });
    expect(config.HD_DATABASE_URL).toBeUndefined();
    expect(config.HD_JOB_TYPES).toBeUndefined();
    expect(config.HD_WORKER_ID).toBe(`${hostname()}:${process.pid}`);
  });

  it('turns strings from the environment into numbers and lists', () => {
    const config = loadConfig({
      HD_SLOTS: '8',
      HD_SHUTDOWN_GRACE_MS: '0',
      HD_JOB_TYPES: ' import_assets_jsonl , extract_text,,',
      HD_DATABASE_URL: `postgres://app:${PASSWORD}@db.internal:5432/hd`,
    });
    expect(config).toMatchObject({
      HD_SLOTS: 8,
      HD_SHUTDOWN_GRACE_MS: 0,
      HD_JOB_TYPES: ['import_assets_jsonl', 'extract_text'],
    });
  });

  it.each([
    ['HD_SLOTS', 'abc'],
    ['HD_SLOTS', '0'],
    ['HD_SLOTS', '-3'],
    ['HD_SLOTS', '1.5'],
    ['HD_LEASE_SECONDS', 'sixty'],
    ['HD_LOG_LEVEL', 'loud'],
    ['HD_TRANSPORT', 'mysql'],
    ['HD_STORAGE', 's3'],
    ['HD_IMPORT_BATCH_SIZE', '20000'],
    ['HD_SHUTDOWN_GRACE_MS', '-1'],
    ['HD_WORKER_ID', ''],
  ])('refuses %s=%j in one line naming the variable and the value', (name, value) => {
    const error = configError({ [name]: value });
    expect(error.message).not.toContain('\n');
    expect(error.message).toMatch(new RegExp(`^invalid configuration: ${name}: `));
    expect(error.message).toContain(`(got ${JSON.stringify(value)})`);
  });

  it('names only the first bad variable when several are wrong', () => {
    const error = configError({ HD_SLOTS: 'abc', HD_LOG_LEVEL: 'loud' });
    expect(error.message.split('\n')).toHaveLength(1);
    expect(error.message).toContain('HD_SLOTS');
  });

  it('keeps a value with newlines on one line', () => {
    const error = configError({ HD_LOG_LEVEL: 'info\nHD_EVIL=1\r\n' });
    expect(error.message).not.toMatch(/[\r\n]/);
    expect(error.message).toContain('info\\nHD_EVIL=1\\r\\n');
  });

  describe('never shows a secret in the error', () => {
    it.each([
      ['an unparseable database URL', 'HD_DATABASE_URL', `postgres://app:${PASSWORD}@db:99999/hd`],
      ['a database URL without a host', 'HD_DATABASE_URL', `postgres://app:${PASSWORD}@/hd`],
      ['a URL put in the wrong variable', 'HD_SLOTS', `postgres://app:${PASSWORD}@db/hd`],
      ['a URL with a password parameter', 'HD_LOG_LEVEL', `postgres://db/hd?password=${PASSWORD}`],
      [
        'a JWT put in the wrong variable',
        'HD_SLOTS',
        `eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.${PASSWORD}`,
      ],
      ['a Supabase secret key', 'HD_SLOTS', `sb_secret_${PASSWORD}`],
    ])('%s', (_what, name, value) => {
      const error = configError({ [name]: value });
      expect(error.message).not.toContain(PASSWORD);
      expect(error.message).toContain(name);
    });

    it('still shows the rest of a URL so the mistake can be found', () => {
      const error = configError({ HD_SLOTS: `postgres://app:${PASSWORD}@db.internal/hd` });
      expect(error.message).toContain('postgres://app:***@db.internal/hd');
    });
  });

  it('redactUrl hides passwords and secret-named parameters', () => {
    expect(redactUrl(`postgres://app:${PASSWORD}@h:5432/hd?sslmode=require`)).toBe(
      'postgres://app:***@h:5432/hd?sslmode=require',
    );
    expect(redactUrl(`https://x.supabase.co/?apikey=${PASSWORD}&token=${PASSWORD}`)).not.toContain(
      PASSWORD,
    );
    expect(redactUrl(`not a url ${PASSWORD}`)).toBe('[unparseable url]');
  });

  it('requireSetting names a missing setting and why it is needed', () => {
    const config = loadConfig({});
    expect(() => requireSetting(config, 'HD_DATABASE_URL', 'to migrate')).toThrow(
      new ConfigError(
        'invalid configuration: HD_DATABASE_URL is required to migrate (it is not set)',
      ),
    );
  });
});

describe('hd-runner CLI', () => {
  it('stops with exit 2 and one stderr line naming a wrong variable', async () => {
    const result = await cli(['jobs', 'list'], { HD_SLOTS: 'abc' });
    expect(result.exitCode).toBe(2);
    expect(result.stdout).toBe('');
    const lines = result.stderr.split('\n').filter(Boolean);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^hd-runner: invalid configuration: HD_SLOTS: .*"abc"/);
  });

  it('does not print a password given in the wrong variable', async () => {
    const result = await cli(['jobs', 'list'], {
      HD_LOG_LEVEL: `postgres://app:${PASSWORD}@db/hd`,
    });
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain('HD_LOG_LEVEL');
    expect(result.stderr + result.stdout).not.toContain(PASSWORD);
  });

  it('prints usage for --help and for every command with --help', async () => {
    const main = await cli(['--help']);
    expect(main.exitCode).toBe(0);
    expect(main.stdout).toMatch(/^Usage: hd-runner <command>/m);
    const commands = [...main.stdout.matchAll(/^ {2}([a-z-]+) {2,}\S/gm)].map((m) => m[1]!);
    expect(commands).toEqual(
      expect.arrayContaining(['scheduler', 'run', 'enqueue', 'jobs', 'migrate', 'demo']),
    );
    const results = await Promise.all(commands.map((c) => cli([c, '--help'])));
    results.forEach((result, i) => {
      const command = commands[i]!;
      expect(result.exitCode, command).toBe(0);
      expect(result.stderr, command).toBe('');
      expect(result.stdout, command).toContain(`hd-runner ${command}`);
    });
  });

  it('answers --help without loading any command code or dependency', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'hd-test-imports-'));
    const root = fileURLToPath(new URL('..', import.meta.url));
    for (const args of [['--help'], ['jobs', '--help'], ['run', '--help'], ['demo', '-h']]) {
      const file = join(dir, args.join('_'));
      const result = await execa(process.execPath, ['--import', RECORD_IMPORTS, MAIN, ...args], {
        env: { PATH: process.env.PATH ?? '', HD_TEST_IMPORTS_FILE: file },
        extendEnv: false,
        reject: false,
      });
      expect(result.exitCode, args.join(' ')).toBe(0);
      const loaded = (await readFile(file, 'utf8'))
        .split('\n')
        .filter((url) => url.startsWith('file:'))
        .map((url) => fileURLToPath(url).slice(root.length));
      expect(loaded.sort(), args.join(' ')).toEqual([
        'cli/cli.ts',
        'cli/command-spec.ts',
        'cli/commands/index.ts',
        'cli/commands/run-spec.ts',
        'cli/main.ts',
        'cli/report-error.ts',
        'cli/terminal-safe.ts',
        'contract/errors.ts',
        'control-plane/redact.ts', // secrets out of all output: no dependency of its own
      ]);
    }
    await rm(dir, { recursive: true, force: true });
  });

  it('prints usage and exits 2 without a command, and names an unknown one', async () => {
    const none = await cli([]);
    expect(none.exitCode).toBe(2);
    expect(none.stdout).toMatch(/^Usage: hd-runner/m);
    const unknown = await cli(['frobnicate']);
    expect(unknown.exitCode).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command "frobnicate"/);
  });

  it('refuses an unknown option with exit 2', async () => {
    const result = await cli(['jobs', 'list', '--no-such-option']);
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(/^hd-runner: jobs: .*--no-such-option/);
  });
});
