import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { ConfigError, redactUrl, type Config } from '../../control-plane/config.ts';
import type { ControlPlaneDb } from '../../control-plane/db/transport.ts';
import type { Logger } from '../../control-plane/logger.ts';
import { openDb, openStorage } from '../../control-plane/open.ts';
import { startMetricsServer } from '../../scheduler/metrics.ts';
import { webhookDeliveryFor } from '../../scheduler/webhooks.ts';
import { Redactor, secretsOf } from '../../control-plane/redact.ts';
import { supabaseUrlSigner } from '../../control-plane/storage/signed-urls.ts';
import { GpuDiscoveryError, GpuSlots, resolveGpuIds } from '../../scheduler/gpu.ts';
import { DockerLauncher } from '../../scheduler/launchers/docker.ts';
import { OutputFiles } from '../../scheduler/launchers/output-file.ts';
import { ProcessLauncher } from '../../scheduler/launchers/process.ts';
import { ProcessReconciler } from '../../scheduler/process-reconcile.ts';
import { DockerReconciler } from '../../scheduler/reconcile.ts';
import { startLlmGateway } from '../../scheduler/llm-gateway/start.ts';
import type { LlmGateway } from '../../scheduler/llm-gateway/server.ts';
import { RunnerAccess } from '../../scheduler/runner-access.ts';
import { handlerResources, Scheduler } from '../../scheduler/scheduler.ts';
import { urlInputStagerFor } from '../../scheduler/url-input.ts';
import { uploadGrantsFor } from '../../scheduler/upload-grants.ts';
import { configFrom, loggerFor, stringOption, type Env, type ParsedArgs } from '../command.ts';

// Runners inherit only these from the scheduler's own environment, plus hd-runner's config.
const INHERITED_ENV = [
  'PATH',
  'HOME',
  'TMPDIR',
  'LANG',
  'TZ',
  'NODE_EXTRA_CA_CERTS',
  'TESSDATA_PREFIX',
];

/**
 * A scheduler wired to the configured launcher (HD_LAUNCHER); runner output goes to
 * `onOutput`. `gpus` are the GPU slots (see resolveGpuSlots); none by default. Runners get
 * credentials scoped to their job (RunnerAccess), and reach the model endpoints through
 * `gateway` when given (startLlmGateway); a misconfiguration throws ConfigError.
 */
export function createScheduler(
  config: Config,
  db: ControlPlaneDb,
  log: Logger,
  env: Record<string, string | undefined>,
  onOutput?: (jobId: string, line: string) => void,
  gpus?: GpuSlots,
  gateway?: LlmGateway,
): Scheduler {
  // What tenants read (hd_job_logs, a job's error) never carries this scheduler's secrets.
  const redactor = new Redactor(secretsOf(config));
  // Runner output printed to this log (a crash's raw stderr included) loses secrets too.
  const output =
    onOutput && ((jobId: string, line: string) => onOutput(jobId, redactor.text(line)));
  // Inputs by URL are fetched and stored here, before the runner starts (docs/containers.md).
  const stager = urlInputStagerFor(config, db, openStorage(config), log);
  // What the scheduler needs of RunnerAccess, the redactor and the stager, either launcher.
  const runnersOf = (access: RunnerAccess) => ({
    runnerEnv: access.envFor.bind(access),
    warmLogin: access.warmLogin.bind(access),
    releaseRunner: access.release.bind(access),
    stageInput: stager.stage.bind(stager),
    redactor,
  });
  if (config.HD_LAUNCHER === 'docker') {
    if (Number(env.HD_WARM_RUNNERS) > 0)
      log.warn(
        'HD_WARM_RUNNERS is ignored by the docker launcher: a container is made for its job (its mounts, limits and image are the job’s); see docs/containers.md',
      );
    const access = runnerAccess(config, db, log, gateway);
    warnIfUnreachable(config, log);
    const launcher = new DockerLauncher({
      db,
      schedulerId: config.HD_WORKER_ID,
      image: config.HD_DOCKER_IMAGE,
      gpuImage: config.HD_DOCKER_GPU_IMAGE,
      env: access.baseEnv,
      networkMode: config.HD_DOCKER_NETWORK,
      user: config.HD_DOCKER_USER,
      pidsLimit: config.HD_DOCKER_PIDS_LIMIT,
      tmpfsMb: config.HD_DOCKER_TMPFS_MB,
      storageRoot: config.HD_STORAGE === 'fs' ? resolve(config.HD_STORAGE_ROOT) : undefined,
      keepFailed: config.HD_DOCKER_KEEP_FAILED,
      killGraceMs: config.HD_DOCKER_KILL_GRACE_MS,
      onOutput: output,
    });
    const reconciler = new DockerReconciler({
      launcher,
      db,
      schedulerId: config.HD_WORKER_ID,
      log,
      resourcesFor: handlerResources,
    });
    return new Scheduler({ db, launcher, config, log, gpus, reconciler, ...runnersOf(access) });
  }
  // A child process runs as this user and could read this process's environment anyway;
  // scoped credentials are used where configured, so both launchers behave alike.
  const scoped = hasScopedCredentials(config);
  if (!scoped && config.HD_RUNNER_CREDENTIALS === 'scoped')
    log.warn(
      'process launcher: runners get the scheduler’s own credentials (no SUPABASE_JWT_SECRET or HD_RUNNER_JWT_PRIVATE_KEY); use the docker launcher to isolate tenants (docs/containers.md)',
    );
  const access = runnerAccess(
    scoped ? config : { ...config, HD_RUNNER_CREDENTIALS: 'operator' },
    db,
    log,
    gateway,
  );
  const inherited: Record<string, string> = {};
  for (const name of INHERITED_ENV) if (env[name]) inherited[name] = env[name];
  // Runner output goes to files that outlive this process (a folder per worker id).
  const outputFiles = new OutputFiles(
    join(resolve(config.HD_RUNNER_OUTPUT_DIR), encodeURIComponent(config.HD_WORKER_ID)),
  );
  const launcher = new ProcessLauncher({
    env: { ...inherited, ...access.baseEnv },
    onOutput: output,
    db,
    outputFiles,
    warmIdleMs: config.HD_WARM_RUNNER_IDLE_MS,
  });
  // Finds the runners a killed scheduler left (recorded in their job rows) and stops them,
  // and stores the output they left.
  const reconciler = new ProcessReconciler({
    db,
    schedulerId: config.HD_WORKER_ID,
    log,
    outputFiles,
    watching: launcher.watching,
  });
  return new Scheduler({
    db,
    launcher,
    config,
    log,
    gpus,
    reconciler,
    warmRunners: config.HD_WARM_RUNNERS,
    ...runnersOf(access),
  });
}

function runnerAccess(
  config: Config,
  db: ControlPlaneDb,
  log: Logger,
  gateway: LlmGateway | undefined,
): RunnerAccess {
  if (config.HD_RUNNER_CREDENTIALS === 'operator' && config.HD_LAUNCHER === 'docker')
    log.warn(
      'HD_RUNNER_CREDENTIALS=operator: every runner container holds the scheduler’s credentials (all tenants); for trusted single-tenant setups only',
    );
  const signer =
    config.HD_STORAGE === 'supabase' && config.SUPABASE_URL && config.SUPABASE_SERVICE_ROLE_KEY
      ? supabaseUrlSigner(config.SUPABASE_URL, config.SUPABASE_SERVICE_ROLE_KEY)
      : undefined;
  return new RunnerAccess(config, db, signer, gateway);
}

/** Whether runner credentials are configured for the transport in use. */
function hasScopedCredentials(config: Config): boolean {
  // postgres: a role per job (or HD_RUNNER_DATABASE_URL); supabase: a key to sign tokens.
  return (
    config.HD_TRANSPORT === 'postgres' ||
    Boolean(config.SUPABASE_JWT_SECRET || config.HD_RUNNER_JWT_PRIVATE_KEY)
  );
}

/** GPU slots from HD_GPUS / `nvidia-smi -L` and HD_GPU_JOBS_PER_GPU. */
export async function resolveGpuSlots(
  config: Config,
  env: Record<string, string | undefined>,
  log: Logger,
): Promise<GpuSlots> {
  const { ids, source } = await resolveGpuIds(config.HD_GPUS, env).catch((error: unknown) => {
    if (error instanceof GpuDiscoveryError)
      throw new ConfigError(`invalid configuration: HD_GPUS: ${error.message}`);
    throw error;
  });
  log.info({ gpus: ids, source, jobs_per_gpu: config.HD_GPU_JOBS_PER_GPU }, 'GPU slots');
  return new GpuSlots(ids, config.HD_GPU_JOBS_PER_GPU);
}

/** A database on the host's loopback is out of reach of a container on a bridge network. */
function warnIfUnreachable(config: Config, log: Logger) {
  if (config.HD_DOCKER_NETWORK === 'host' || !config.HD_DATABASE_URL) return;
  const host = URL.canParse(config.HD_DATABASE_URL) ? new URL(config.HD_DATABASE_URL).hostname : '';
  if (host === 'localhost' || host.startsWith('127.') || host === '[::1]')
    log.warn(
      { database: redactUrl(config.HD_DATABASE_URL), network: config.HD_DOCKER_NETWORK },
      'HD_DATABASE_URL points at this host loopback, which runner containers cannot reach on this network; set HD_DOCKER_NETWORK=host (see docs/containers.md)',
    );
}

export async function schedulerCommand(args: ParsedArgs, env: Env): Promise<number> {
  const config = configFrom(
    env,
    // A restarted scheduler finds its runners by this id: keep it stable.
    { HD_WORKER_ID: env.HD_WORKER_ID || hostname() },
    {
      HD_SLOTS: { flag: '--slots', value: stringOption(args, 'slots') },
      HD_JOB_TYPES: { flag: '--job-types', value: stringOption(args, 'job-types') },
      HD_LAUNCHER: { flag: '--launcher', value: stringOption(args, 'launcher') },
    },
  );
  const log = loggerFor(config, 'scheduler');
  const gpus = await resolveGpuSlots(config, env, log);
  const db = openDb(config);
  // Holds the provider keys; runners get its URL and a credential of their lease.
  const gateway = await startLlmGateway(config, db, log);
  // Runners with scoped Supabase credentials get their artifact upload URLs here.
  const grants = await uploadGrantsFor(config, db, log);
  const scheduler = createScheduler(
    grants ? { ...config, HD_UPLOAD_GRANT_URL: grants.url } : config,
    db,
    log,
    env,
    (_jobId, line) => process.stderr.write(`${line}\n`),
    gpus,
    gateway,
  );
  // What a runner stored through a grant and never recorded goes once it ended (00030).
  if (grants) scheduler.on('job:finished', (job) => void grants.sweep(job.id));
  const stopAsked = new Promise<void>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      log.info({ signal }, 'shutting down');
      process.once(signal, () => process.exit(130));
      resolve();
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  });
  // Webhook events of ended jobs and batches (00013's outbox), once the database answers.
  const webhooks = webhookDeliveryFor(config, db, log);
  // start() waits while the database is out of reach; a signal meanwhile ends the wait.
  const metrics = config.HD_METRICS_ADDRESS
    ? await startMetricsServer(config, db, scheduler, { gpus, webhooks, gateway })
    : undefined;
  const started = scheduler.start();
  try {
    await Promise.race([started, stopAsked]);
    webhooks.start();
    await stopAsked;
  } finally {
    try {
      await webhooks.stop();
      await scheduler.stop();
    } finally {
      await gateway?.close();
      await metrics?.close();
      await grants?.close();
      await db.close();
    }
  }
  await started;
  return 0;
}
