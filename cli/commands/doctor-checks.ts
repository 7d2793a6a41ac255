import { access, constants, stat } from 'node:fs/promises';
import { join } from 'node:path';
import Docker from 'dockerode';
import { execa } from 'execa';
import type { Config } from '../../control-plane/config.ts';
import { readMigrations } from '../../control-plane/db/migrate.ts';
import type { StorageBackend } from '../../control-plane/storage/storage.ts';
import { SupabaseStorage } from '../../control-plane/storage/supabase.ts';
import { SupabaseDb } from '../../control-plane/db/supabase.ts';
import { projectMismatch, type ControlPlaneTarget } from '../../control-plane/supabase-target.ts';

export type CheckStatus = 'ok' | 'warn' | 'fail' | 'skip';

export interface CheckResult {
  check: string;
  status: CheckStatus;
  detail: string;
  data?: Record<string, unknown>;
}

/** What hd_doctor_report() returns (00006_postgrest.sql). */
export interface DoctorReport {
  database: string;
  server_version: string;
  now: string;
  migrations_source: 'hd_schema_migrations' | 'supabase_migrations' | null;
  migrations: { version: string; name: string; checksum?: string }[] | null;
  queue: {
    by_status: Record<string, number>;
    oldest_queued_at: string | null;
    next_run_after: string | null;
    expired_leases: number;
    newest_created_at: string | null;
  };
  realtime_publication: boolean | null;
}

/** Queued jobs older than this suggest no scheduler serves this queue. */
const STALE_QUEUE_MS = 10 * 60_000;

export function describeWhere(target: ControlPlaneTarget): string {
  const db = target.database ? `/${target.database}` : '';
  return `${target.transport} → ${target.host ?? '?'}${db} (project ${target.projectRef ?? 'unknown'})`;
}

export function checkTarget(config: Config, target: ControlPlaneTarget): CheckResult {
  const data = {
    transport: target.transport,
    host: target.host,
    database: target.database,
    project_ref: target.projectRef,
    expected_project_ref: config.HD_EXPECTED_PROJECT_REF,
    key_role: target.keyRole,
  };
  const where = describeWhere(target);
  const mismatch = projectMismatch(config, target);
  if (mismatch) return { check: 'target', status: 'fail', detail: mismatch, data };
  if (target.keyRole && target.keyRole !== 'service_role') {
    const detail = `${where}; SUPABASE_SERVICE_ROLE_KEY is a ${target.keyRole} key, not the service-role key`;
    return { check: 'target', status: 'fail', detail, data };
  }
  if (!config.HD_EXPECTED_PROJECT_REF) {
    const detail = `${where}; set HD_EXPECTED_PROJECT_REF=${target.projectRef ?? '<ref>'} so a worker pointed elsewhere refuses to start`;
    return { check: 'target', status: 'warn', detail, data };
  }
  return { check: 'target', status: 'ok', detail: `${where}, as expected`, data };
}

export async function checkMigrations(report: DoctorReport): Promise<CheckResult> {
  const shipped = await readMigrations();
  const applied = new Map((report.migrations ?? []).map((m) => [m.version, m]));
  const withChecksums = report.migrations_source === 'hd_schema_migrations';
  const pending = shipped.filter((m) => !applied.has(m.version)).map((m) => m.name);
  const changed = shipped
    .filter((m) => withChecksums && applied.has(m.version))
    .filter((m) => applied.get(m.version)!.checksum !== m.checksum)
    .map((m) => m.name);
  const unknown = [...applied.keys()].filter((v) => !shipped.some((m) => m.version === v));
  const data = { source: report.migrations_source, pending, changed, unknown };
  const last = shipped.at(-1)?.name ?? 'none';
  if (pending.length || changed.length) {
    const parts = [
      pending.length ? `pending: ${pending.join(', ')}` : '',
      changed.length ? `changed since applied: ${changed.join(', ')}` : '',
    ].filter(Boolean);
    const detail = `${parts.join('; ')}; run hd-runner migrate`;
    return { check: 'migrations', status: 'fail', detail, data };
  }
  if (unknown.length) {
    const detail = `all ${shipped.length} applied, plus ${unknown.join(', ')} that this hd-runner does not ship (a newer version migrated this database?)`;
    return { check: 'migrations', status: 'warn', detail, data };
  }
  const detail = `${shipped.length} applied and current (last ${last})`;
  return { check: 'migrations', status: 'ok', detail, data };
}

export function formatAge(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400)
    return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
}

export function checkQueue(report: DoctorReport): CheckResult {
  const q = report.queue;
  const now = Date.parse(report.now);
  const count = (s: string) => q.by_status[s] ?? 0;
  const oldestAgeMs = q.oldest_queued_at ? now - Date.parse(q.oldest_queued_at) : null;
  const counts = ['queued', 'running', 'completed', 'failed'].map((s) => `${s} ${count(s)}`);
  const oldest =
    oldestAgeMs === null ? 'none queued' : `oldest queued ${formatAge(oldestAgeMs)} ago`;
  const data = { ...q, oldest_queued_age_s: oldestAgeMs === null ? null : oldestAgeMs / 1000 };
  let detail = `${counts.join(' · ')}; ${oldest}`;
  if (oldestAgeMs !== null && oldestAgeMs > STALE_QUEUE_MS) {
    detail += ': is a scheduler running against THIS database?';
    return { check: 'queue', status: 'warn', detail, data };
  }
  if (q.expired_leases > 0) {
    detail += `; ${q.expired_leases} running with an expired lease (a scheduler's reaper requeues them)`;
    return { check: 'queue', status: 'warn', detail, data };
  }
  if (!q.newest_created_at) detail += '; no job was ever queued here';
  return { check: 'queue', status: 'ok', detail, data };
}

/** Subscribes once as the scheduler would; resolves to the last Realtime status seen. */
export async function probeRealtime(config: Config, waitMs = 5000): Promise<string> {
  let last = 'no answer';
  const db = new SupabaseDb({
    url: config.SUPABASE_URL ?? '',
    serviceRoleKey: config.SUPABASE_SERVICE_ROLE_KEY ?? '',
    realtime: true,
    realtimeSubscribeMs: waitMs,
    onRealtimeStatus: (status, error) => (last = error ? `${status}: ${error.message}` : status),
  });
  try {
    const unlisten = await db.listen(() => {});
    await unlisten();
  } finally {
    await db.close();
  }
  return last;
}

export function checkRealtime(
  config: Config,
  report: DoctorReport,
  realtimeStatus?: string,
): CheckResult {
  const polling = `polling every ${config.HD_POLL_INTERVAL_MS} ms`;
  if (config.HD_TRANSPORT !== 'supabase') {
    return { check: 'wake-ups', status: 'ok', detail: `LISTEN/NOTIFY, ${polling} as fallback` };
  }
  if (!config.HD_REALTIME)
    return { check: 'wake-ups', status: 'ok', detail: `${polling} (HD_REALTIME off)` };
  if (realtimeStatus !== undefined && realtimeStatus !== 'SUBSCRIBED') {
    const detail = `HD_REALTIME is on but Realtime did not subscribe (${realtimeStatus}): ${polling} only`;
    return { check: 'wake-ups', status: 'warn', detail };
  }
  if (report.realtime_publication === true) {
    return { check: 'wake-ups', status: 'ok', detail: `Realtime on hd_ingestion_jobs, ${polling}` };
  }
  const detail =
    report.realtime_publication === false
      ? `HD_REALTIME is on but hd_ingestion_jobs is not published: alter publication supabase_realtime add table public.hd_ingestion_jobs; (${polling} meanwhile)`
      : `HD_REALTIME is on but this database has no supabase_realtime publication (${polling})`;
  return { check: 'wake-ups', status: 'warn', detail };
}

export async function checkStorage(config: Config, storage: StorageBackend): Promise<CheckResult> {
  const bucket = config.HD_BUCKET;
  if (storage instanceof SupabaseStorage) {
    try {
      const { listed } = await storage.checkBucket(bucket);
      const detail = `supabase bucket ${bucket} exists and lists (${listed ? 'has' : 'no'} accounts/ entries)`;
      return { check: 'storage', status: 'ok', detail };
    } catch (error) {
      return { check: 'storage', status: 'fail', detail: (error as Error).message };
    }
  }
  const dir = join(config.HD_STORAGE_ROOT, bucket);
  const info = await stat(dir).catch(() => undefined);
  if (!info?.isDirectory()) {
    const detail = `fs bucket folder ${dir} does not exist (created by the first upload)`;
    return { check: 'storage', status: 'warn', detail };
  }
  const readable = await access(dir, constants.R_OK | constants.X_OK).then(
    () => true,
    () => false,
  );
  return readable
    ? { check: 'storage', status: 'ok', detail: `fs bucket folder ${dir} is readable` }
    : { check: 'storage', status: 'fail', detail: `fs bucket folder ${dir} is not readable` };
}

/** Detects Docker and the runner images; the docker launcher needs them, `process` does not. */
export async function checkDocker(config: Config, docker = new Docker()): Promise<CheckResult> {
  const needed = config.HD_LAUNCHER === 'docker';
  const missing: CheckStatus = needed ? 'fail' : 'skip';
  const timeout = <T>(p: Promise<T>) =>
    Promise.race([
      p,
      new Promise<never>((_, no) => setTimeout(no, 5000, new Error('timed out')).unref()),
    ]);
  try {
    await timeout(docker.ping());
  } catch (error) {
    const detail = `no Docker engine reachable (${(error as Error).message})${needed ? '' : '; not needed by HD_LAUNCHER=process'}`;
    return { check: 'docker', status: missing, detail };
  }
  const images = [config.HD_DOCKER_IMAGE, config.HD_DOCKER_GPU_IMAGE];
  const present = await Promise.all(
    images.map((name) =>
      timeout(docker.getImage(name).inspect()).then(
        () => true,
        () => false,
      ),
    ),
  );
  const absent = images.filter((_, i) => !present[i]);
  const data = { images: Object.fromEntries(images.map((name, i) => [name, present[i]])) };
  if (!present[0]) {
    const detail = `engine up; image ${images[0]} missing (docker build -t ${images[0]} .)${needed ? '' : '; not needed by HD_LAUNCHER=process'}`;
    return { check: 'docker', status: missing, detail, data };
  }
  const detail = `engine up; ${absent.length ? `present: ${images[0]}; missing: ${absent.join(', ')}` : `images ${images.join(', ')} present`}`;
  return { check: 'docker', status: 'ok', detail, data };
}

/** GPUs and their persistence mode, from nvidia-smi when it is installed. */
export async function checkGpus(env: Record<string, string | undefined>): Promise<CheckResult> {
  const result = await execa(
    'nvidia-smi',
    ['--query-gpu=index,name,persistence_mode,memory.total', '--format=csv,noheader'],
    { env, extendEnv: false, reject: false, timeout: 15_000, stdin: 'ignore' },
  );
  if ((result as { code?: string }).code === 'ENOENT') {
    return { check: 'gpus', status: 'skip', detail: 'no nvidia-smi: CPU jobs only' };
  }
  if (result.exitCode !== 0) {
    const why = String(result.stderr || result.stdout || result.shortMessage)
      .trim()
      .split('\n')[0];
    return { check: 'gpus', status: 'fail', detail: `nvidia-smi failed: ${why}` };
  }
  const gpus = String(result.stdout)
    .split('\n')
    .filter((l) => l.trim())
    .map((line) => {
      const [index, name, persistence, memory] = line.split(',').map((s) => s.trim());
      return { index, name, persistence, memory };
    });
  const off = gpus.filter((g) => g.persistence !== 'Enabled').map((g) => g.index);
  const listed = gpus.map((g) => `${g.index}: ${g.name} ${g.memory}`).join('; ');
  if (off.length) {
    const detail = `${listed}; persistence mode off on ${off.join(',')} (sudo nvidia-smi -pm 1)`;
    return { check: 'gpus', status: 'warn', detail, data: { gpus } };
  }
  return { check: 'gpus', status: 'ok', detail: `${listed}; persistence mode on`, data: { gpus } };
}
