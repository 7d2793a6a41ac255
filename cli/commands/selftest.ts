import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { toHdError } from '../../contract/errors.ts';
import { ConfigError, loadConfig, redactUrl, type Config } from '../../control-plane/config.ts';
import { openDb } from '../../control-plane/open.ts';
import { listGpus } from '../../scheduler/gpu.ts';
import type { Env, ParsedArgs } from '../command.ts';

type Status = 'ok' | 'FAIL' | 'skip';
interface Check {
  name: string;
  status: Status;
  detail: string;
}

const CHECK_TIMEOUT_MS = 10_000;
const NIL_UUID = '00000000-0000-0000-0000-000000000000';

export async function selftestCommand(args: ParsedArgs, env: Env): Promise<number> {
  const checks: Check[] = [checkUser()];
  let config: Config | undefined;
  try {
    config = loadConfig(env);
    checks.push({ name: 'config', status: 'ok', detail: `launcher ${config.HD_LAUNCHER}` });
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    checks.push({ name: 'config', status: 'FAIL', detail: error.message });
  }
  if (config) {
    checks.push(await timed('workdir', () => checkWorkDir(config)));
    checks.push(await timed('database', () => checkDatabase(config)));
    checks.push(await timed('storage', () => checkStorage(config, env)));
  }
  if (args.values.gpu === true) checks.push(await timed('gpu', () => checkGpu(env)));
  if (args.values.json === true) console.log(JSON.stringify({ checks }, null, 2));
  else for (const c of checks) console.log(`${c.status.padEnd(5)} ${c.name.padEnd(9)} ${c.detail}`);
  return checks.some((c) => c.status === 'FAIL') ? 1 : 0;
}

function checkUser(): Check {
  const uid = process.getuid?.();
  const gid = process.getgid?.();
  if (uid === undefined) return { name: 'user', status: 'skip', detail: 'no POSIX user here' };
  return uid === 0
    ? { name: 'user', status: 'FAIL', detail: 'running as root (uid 0); run as a non-root user' }
    : { name: 'user', status: 'ok', detail: `uid ${uid}, gid ${gid} (not root)` };
}

/** Runs one check with a time limit; a thrown error is a failed check. */
async function timed(name: string, check: () => Promise<Omit<Check, 'name'>>): Promise<Check> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<Omit<Check, 'name'>>((resolve) => {
    timer = setTimeout(
      () => resolve({ status: 'FAIL', detail: `no answer within ${CHECK_TIMEOUT_MS / 1000} s` }),
      CHECK_TIMEOUT_MS,
    );
  });
  try {
    return { name, ...(await Promise.race([check(), limit])) };
  } catch (error) {
    return { name, status: 'FAIL', detail: (error as Error).message ?? String(error) };
  } finally {
    clearTimeout(timer);
  }
}

async function checkWorkDir(config: Config): Promise<Omit<Check, 'name'>> {
  const base = config.HD_WORK_DIR ?? tmpdir();
  const dir = await mkdtemp(join(base, 'hd-selftest-'));
  try {
    await writeFile(join(dir, 'probe'), 'ok');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const rootfs = await writeFile('/.hd-selftest', '').then(
    () => rm('/.hd-selftest').then(() => 'writable'),
    (error: NodeJS.ErrnoException) => (error.code === 'EROFS' ? 'read-only' : 'not writable'),
  );
  return { status: 'ok', detail: `${base} is writable; root fs ${rootfs}` };
}

async function checkDatabase(config: Config): Promise<Omit<Check, 'name'>> {
  if (!config.HD_DATABASE_URL) return { status: 'skip', detail: 'HD_DATABASE_URL is not set' };
  const db = openDb({ ...config, HD_DATABASE_POOL_SIZE: 1 });
  try {
    // A runner may call only lease-checked functions: one refusing a lease nobody holds
    // proves the connection, the credentials and the schema (role hd_runner suffices).
    const refusal = await db.adoptLease(NIL_UUID, NIL_UUID, 1).then(
      () => undefined,
      (error: unknown) => toHdError(error),
    );
    if (refusal?.code !== 'LEASE_LOST')
      throw refusal ?? new Error('a lease nobody holds was granted');
    return { status: 'ok', detail: `${redactUrl(config.HD_DATABASE_URL)} answers` };
  } finally {
    await db.close().catch(() => {});
  }
}

async function checkStorage(
  config: Config,
  env: Record<string, string | undefined>,
): Promise<Omit<Check, 'name'>> {
  const root = config.HD_STORAGE_ROOT;
  const info = await stat(root).catch(() => undefined);
  if (!info && !env.HD_STORAGE_ROOT)
    return { status: 'skip', detail: `HD_STORAGE_ROOT is not set (default ${root} is absent)` };
  if (!info?.isDirectory())
    return { status: 'FAIL', detail: `storage root ${root} is not a directory` };
  const buckets = await readdir(root);
  return {
    status: 'ok',
    detail: `fs storage ${root} is readable (${buckets.length} bucket${buckets.length === 1 ? '' : 's'})`,
  };
}

async function checkGpu(env: Record<string, string | undefined>): Promise<Omit<Check, 'name'>> {
  const gpus = await listGpus(env);
  const visible = env.NVIDIA_VISIBLE_DEVICES
    ? ` (NVIDIA_VISIBLE_DEVICES=${env.NVIDIA_VISIBLE_DEVICES})`
    : '';
  if (gpus === undefined)
    return {
      status: 'FAIL',
      detail: `nvidia-smi not found${visible}: start the container with --gpus and the NVIDIA runtime`,
    };
  if (gpus.length === 0) return { status: 'FAIL', detail: `nvidia-smi lists no GPU${visible}` };
  return {
    status: 'ok',
    detail: gpus.map((g) => `GPU ${g.index}: ${g.name}${g.uuid ? ` (${g.uuid})` : ''}`).join('; '),
  };
}
