import { mkdtemp, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import { loadConfig, type Config } from '../../control-plane/config.ts';
import { createLogger, type Logger } from '../../control-plane/logger.ts';

export const ACCOUNT_A = 'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa';
export const ACCOUNT_B = 'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb';

/** Configuration as the CLI would parse it, pointed at a test database and folder. */
export function testConfig(
  url: string,
  storageRoot: string,
  env: Record<string, string> = {},
): Config {
  return loadConfig({
    HD_DATABASE_URL: url,
    HD_STORAGE_ROOT: storageRoot,
    // Beside the storage root: a test's process runners' output files stay its own.
    HD_RUNNER_OUTPUT_DIR: `${storageRoot.replace(/\/+$/, '')}.runner-output`,
    HD_WORKER_ID: 'test-worker',
    HD_LOG_LEVEL: 'silent',
    ...env,
  });
}

/** A logger whose lines are kept in memory (to assert on them). */
export function memoryLogger(
  level = 'info',
  secrets: Iterable<string | undefined> = [],
): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      lines.push(...String(chunk).split('\n').filter(Boolean));
      done();
    },
  });
  return { log: createLogger({ level, secrets }, sink), lines };
}

export async function tempDir(prefix = 'hd-test-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

/** Writes an object into fs storage: {root}/{bucket}/{key}. */
export async function putObject(
  root: string,
  bucket: string,
  key: string,
  content: string | Buffer,
) {
  const file = join(root, bucket, key);
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, content);
}

export function jsonl(rows: unknown[]): string {
  return rows.map((r) => JSON.stringify(r)).join('\n') + '\n';
}
