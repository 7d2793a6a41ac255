import { toHdError } from '../../contract/errors.ts';
import type { Config } from '../../control-plane/config.ts';
import { PostgresDb } from '../../control-plane/db/postgres.ts';
import { SupabaseDb } from '../../control-plane/db/supabase.ts';
import type { ControlPlaneDb } from '../../control-plane/db/transport.ts';
import { openDb, openStorage } from '../../control-plane/open.ts';
import { describeTarget, type ControlPlaneTarget } from '../../control-plane/supabase-target.ts';
import { formatTable } from '../format.ts';
import {
  CommandError,
  configFrom,
  stringOption,
  UsageError,
  type Env,
  type ParsedArgs,
} from '../command.ts';
import { resolveJobId, uuidPrefixRange } from '../job-id.ts';
import {
  checkDocker,
  checkGpus,
  checkMigrations,
  checkQueue,
  checkRealtime,
  checkStorage,
  checkTarget,
  describeWhere,
  probeRealtime,
  type CheckResult,
  type DoctorReport,
} from './doctor-checks.ts';

export interface DoctorResult {
  ok: boolean;
  target: ControlPlaneTarget;
  checks: CheckResult[];
}

const CHECK_TIMEOUT_MS = 20_000;

function withTimeout<T>(promise: Promise<T>, what: string): Promise<T> {
  return Promise.race([
    promise,
    new Promise<never>((_, reject) =>
      setTimeout(
        reject,
        CHECK_TIMEOUT_MS,
        new Error(`${what} did not answer in ${CHECK_TIMEOUT_MS / 1000} s`),
      ).unref(),
    ),
  ]);
}

async function readReport(db: ControlPlaneDb): Promise<DoctorReport> {
  if (db instanceof SupabaseDb) return (await db.doctorReport()) as unknown as DoctorReport;
  if (db instanceof PostgresDb) {
    const { rows } = await db.pool.query('select public.hd_doctor_report() as r');
    return rows[0].r as DoctorReport;
  }
  throw new Error('doctor: unknown transport');
}

function isMissingReport(error: unknown): boolean {
  const code = (error as { code?: string }).code;
  return code === '42883' || /not known to PostgREST/.test((error as Error).message ?? '');
}

async function checkJob(db: ControlPlaneDb, typed: string, target: ControlPlaneTarget) {
  // A start of an id as well: "no job starts with it here" is the same finding.
  const jobId = await resolveJobId(db, typed, '--job-id').catch((error: unknown) => {
    if (error instanceof CommandError && error.code === 'NOT_FOUND') return undefined;
    throw error;
  });
  const job = jobId ? await db.getJob(jobId) : undefined;
  if (job) {
    const detail = `job ${jobId} is here: ${job.job_type} ${job.status}, account ${job.account_id}`;
    return { check: 'job', status: 'ok', detail } satisfies CheckResult;
  }
  const detail = `job ${typed} is not in this database (${describeWhere(target)}): the app that queued it writes to another control plane; compare its Supabase URL with this worker's`;
  return { check: 'job', status: 'fail', detail } satisfies CheckResult;
}

/** Runs every check; never throws for a failing check, only reports it. */
export async function runDoctor(
  config: Config,
  env: Record<string, string | undefined>,
  options: { jobId?: string | undefined } = {},
): Promise<DoctorResult> {
  const target = describeTarget(config);
  const checks: CheckResult[] = [checkTarget(config, target)];
  const db = openDb(config, { checkProject: false });
  try {
    const started = performance.now();
    let report: DoctorReport | undefined;
    try {
      report = await withTimeout(readReport(db), 'the database');
      const ms = Math.round(performance.now() - started);
      const detail = `reachable in ${ms} ms: database ${report.database}, PostgreSQL ${report.server_version}`;
      checks.push({ check: 'database', status: 'ok', detail });
    } catch (error) {
      if (isMissingReport(error)) {
        checks.push({ check: 'database', status: 'ok', detail: 'reachable' });
        const detail =
          'hd_doctor_report() is missing: the migrations are not applied here (run hd-runner migrate)';
        checks.push({ check: 'migrations', status: 'fail', detail });
      } else {
        const detail = `${describeWhere(target)}: ${toHdError(error).message}`;
        checks.push({ check: 'database', status: 'fail', detail });
      }
    }
    if (report) {
      checks.push(await checkMigrations(report));
      checks.push(checkQueue(report));
      const realtime =
        config.HD_TRANSPORT === 'supabase' && config.HD_REALTIME
          ? await withTimeout(probeRealtime(config), 'Realtime').catch((e: Error) => e.message)
          : undefined;
      checks.push(checkRealtime(config, report, realtime));
    }
    if (options.jobId && report) {
      checks.push(await withTimeout(checkJob(db, options.jobId, target), 'the database'));
    }
  } finally {
    await db.close().catch(() => {});
  }
  const guarded = async (name: string, run: () => Promise<CheckResult>): Promise<CheckResult> => {
    try {
      return await withTimeout(run(), name);
    } catch (error) {
      return { check: name, status: 'fail', detail: (error as Error).message };
    }
  };
  checks.push(await guarded('storage', () => checkStorage(config, openStorage(config))));
  checks.push(await guarded('docker', () => checkDocker(config)));
  checks.push(await guarded('gpus', () => checkGpus(env)));
  return { ok: checks.every((c) => c.status !== 'fail'), target, checks };
}

export function formatDoctor(result: DoctorResult): string {
  const rows = result.checks.map((c) => ({
    check: c.check,
    status: c.status === 'ok' ? 'ok' : c.status.toUpperCase(),
    detail: c.detail,
  }));
  const failing = result.checks.filter((c) => c.status === 'fail').length;
  const warnings = result.checks.filter((c) => c.status === 'warn').length;
  const summary = failing
    ? `doctor: ${failing} failing check${failing === 1 ? '' : 's'}`
    : `doctor: no failing check${warnings ? ` (${warnings} warning${warnings === 1 ? '' : 's'})` : ''}`;
  return `${formatTable(rows, ['check', 'status', 'detail'])}\n\n${summary}`;
}

export async function doctorCommand(args: ParsedArgs, env: Env): Promise<number> {
  const config = configFrom(env);
  const jobId = stringOption(args, 'job-id');
  const result = await runDoctor(config, env, {
    jobId: jobId ? jobIdArg(jobId) : undefined,
  });
  console.log(args.values.json ? JSON.stringify(result, null, 2) : formatDoctor(result));
  return result.ok ? 0 : 1;
}

function jobIdArg(typed: string): string {
  if (typed.length < 4 || !uuidPrefixRange(typed))
    throw new UsageError(
      `doctor: --job-id must be a job id or its start (got ${JSON.stringify(typed)})`,
    );
  return typed.toLowerCase();
}
