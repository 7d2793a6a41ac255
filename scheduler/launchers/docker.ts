import { existsSync, readdirSync } from 'node:fs';
import { chown, mkdir } from 'node:fs/promises';
import { constants } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import type { ClaimedJob } from '../../contract/jobs.ts';
import { jobOutputPrefix, OUTPUTS_BUCKET, tenantPrefix } from '../../contract/storage-paths.ts';
import type { ControlPlaneDb } from '../../control-plane/db/transport.ts';
import type { Resources } from '../../runner/handler.ts';
import type {
  LaunchedRunner,
  LaunchRequest,
  Launcher,
  RunnerExit,
  StopReason,
} from '../launcher.ts';
import { containerRequest, removeContainer } from './docker-engine.ts';
import { demuxLogBuffer, LogLineSplitter, splitLogBuffer } from './docker-logs.ts';

/** Labels on every runner container: how a restarted scheduler finds its containers. */
export const LABELS = {
  jobId: 'hd-runner.job-id',
  attempt: 'hd-runner.attempt',
  schedulerId: 'hd-runner.scheduler-id',
  gpus: 'hd-runner.gpus',
  /** Where the numbering of its output in hd_job_logs starts (see LaunchRequest). */
  logSeqBase: 'hd-runner.log-seq-base',
} as const;

/** Where the fs storage root is mounted (read-only, but for the job's output folder) in a runner container. */
export const CONTAINER_STORAGE_ROOT = '/hd-storage';
/** Prefix a kept failed container is renamed to, so reconcile leaves it alone. */
export const KEPT_PREFIX = 'hd-failed-';
const NO_NVIDIA_RUNTIME = /could not select device driver "nvidia"/;
const OUTPUT_TAIL_LINES = 40;
// Past this much time over its own limit the runner is killed from outside: its own
// timer should have ended it already, so it is stuck (same rule as the process launcher).
const TIMEOUT_BACKSTOP_MS = 15_000;
const V8_HEAP_EXHAUSTED = /JavaScript heap out of memory|Allocation failed - process out of memory/;
const MIB = 1024 * 1024;

export interface DockerLauncherOptions {
  /** Records the container id on the job row before the container starts. */
  db: Pick<ControlPlaneDb, 'setContainerId'>;
  /** Docker client; default the engine of DOCKER_HOST or /var/run/docker.sock. */
  docker?: Docker;
  /** Label value that marks this scheduler's containers (its stable worker id). */
  schedulerId: string;
  image: string;
  /** Image for jobs that declare a GPU. Default: `image`. */
  gpuImage?: string;
  /**
   * Runner configuration, passed as container env (visible in `docker inspect` to
   * whoever can reach the Docker socket, i.e. root on the host: see docs/containers.md).
   * The lease token is added per job.
   */
  env: Record<string, string>;
  /** `bridge` (default), `host`, or a network name. */
  networkMode?: string;
  /** uid:gid; default 1000:1000. */
  user?: string;
  pidsLimit?: number;
  /** Size of the tmpfs at /tmp, the runner's only writable place; default 256 MiB. */
  tmpfsMb?: number;
  /** Host folder of the fs storage backend, mounted read-only. */
  storageRoot?: string | undefined;
  /** Keep (rename to hd-failed-…) the container of a runner that did not exit 0. */
  keepFailed?: boolean;
  /** Time between SIGTERM and SIGKILL on stop(); default 10 s. */
  killGraceMs?: number;
  /** Extra time past resources.timeoutMs before the container is killed; default 15 s. */
  timeoutBackstopMs?: number;
  /** Replaces the image entrypoint; `run --job-id ID` is appended as with the image's. */
  command?: readonly string[];
  /** Receives every line a runner prints, as it prints it. */
  onOutput?: (jobId: string, line: string) => void;
}

/**
 * Launcher `docker`: one ephemeral, hardened container per job (dockerode). The
 * container id reaches the job row before start; the exit is read from `wait` and
 * `inspect` (OOMKilled) before the container is removed.
 */
export class DockerLauncher implements Launcher {
  readonly docker: Docker;
  readonly #o: DockerLauncherOptions;

  constructor(options: DockerLauncherOptions) {
    this.#o = options;
    this.docker = options.docker ?? new Docker();
  }

  /** Throws while the Docker engine does not answer (the scheduler pauses claiming). */
  async ready(): Promise<void> {
    try {
      await this.docker.ping();
    } catch (error) {
      throw new Error(`the Docker engine does not answer: ${(error as Error).message}`, {
        cause: error,
      });
    }
  }

  /** The exact create options of a job's container (also what tests assert). */
  createOptions(request: LaunchRequest): Docker.ContainerCreateOptions {
    const { job, resources } = request;
    const o = this.#o;
    const gpuIds = request.gpuIds ?? [];
    const env: Record<string, string> = { ...o.env, ...request.env, HD_WORK_DIR: '/tmp' };
    if (o.storageRoot) env.HD_STORAGE_ROOT = CONTAINER_STORAGE_ROOT;
    env.HD_LEASE_TOKEN = job.lease_token;
    // Also where `nvidia` is the engine's default runtime (DGX OS) and the image says
    // NVIDIA_VISIBLE_DEVICES=all: a CPU job sees no GPU, a GPU job only its own.
    env.NVIDIA_VISIBLE_DEVICES = gpuIds.length > 0 ? gpuIds.join(',') : 'void';
    const args = ['run', '--job-id', job.id];
    return {
      name: `hd-job-${job.id}-${job.attempts}`,
      Image: resources.gpu ? (o.gpuImage ?? o.image) : o.image,
      ...(o.command
        ? { Entrypoint: [o.command[0]!], Cmd: [...o.command.slice(1), ...args] }
        : { Cmd: args }),
      Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      User: o.user ?? '1000:1000',
      Labels: {
        [LABELS.jobId]: job.id,
        [LABELS.attempt]: String(job.attempts),
        [LABELS.schedulerId]: o.schedulerId,
        [LABELS.gpus]: gpuIds.join(','),
        ...(request.logSeqBase !== undefined && {
          [LABELS.logSeqBase]: String(request.logSeqBase),
        }),
      },
      StopSignal: 'SIGTERM',
      HostConfig: {
        NetworkMode: o.networkMode ?? 'bridge',
        Memory: resources.memoryMb * MIB,
        MemorySwap: resources.memoryMb * MIB, // no swap: past the limit is an OOM kill
        NanoCpus: Math.round(resources.cpus * 1e9),
        PidsLimit: o.pidsLimit ?? 256,
        ReadonlyRootfs: true,
        Tmpfs: { '/tmp': `rw,noexec,nosuid,nodev,size=${o.tmpfsMb ?? 256}m` },
        CapDrop: ['ALL'],
        SecurityOpt: ['no-new-privileges'],
        Binds: o.storageRoot
          ? [
              ...tenantStorageBinds(o.storageRoot, job.account_id),
              jobOutputBind(o.storageRoot, job),
            ]
          : [],
        LogConfig: { Type: 'json-file', Config: { 'max-size': '20m', 'max-file': '1' } },
        ...(gpuIds.length > 0 && {
          DeviceRequests: [{ Driver: 'nvidia', DeviceIDs: [...gpuIds], Capabilities: [['gpu']] }],
        }),
      },
    };
  }

  async launch(request: LaunchRequest): Promise<LaunchedRunner> {
    const { job, resources, onOutput } = request;
    if (this.#o.storageRoot) await this.#makeOutputDir(this.#o.storageRoot, job);
    const options = this.createOptions(request);
    const container = await this.#create(options);
    try {
      await this.#o.db.setContainerId(job.id, job.lease_token, container.id);
      await container.start();
    } catch (error) {
      await container.remove({ force: true, v: true }).catch(() => {});
      const message = (error as Error).message ?? String(error);
      if (NO_NVIDIA_RUNTIME.test(message))
        throw new Error(
          `no NVIDIA container runtime on this host (install nvidia-container-toolkit): ${message}`,
          { cause: error },
        );
      throw error;
    }
    return this.#watch(container, job, resources, Date.now(), 0, onOutput);
  }

  /**
   * Watches a container a previous scheduler started (reconcile after a restart);
   * `onOutput` receives the lines it prints: from its start when `fromStart` (the sink
   * numbers them as its launch did, so lines already stored are kept once), else from now.
   */
  adopt(
    info: Docker.ContainerInspectInfo,
    job: ClaimedJob,
    resources: Resources,
    onOutput?: (line: string) => void,
    fromStart = false,
  ): LaunchedRunner {
    const startedAt = Date.parse(info.State.StartedAt);
    return this.#watch(
      this.docker.getContainer(info.Id),
      job,
      resources,
      Number.isNaN(startedAt) ? Date.now() : startedAt,
      fromStart ? 0 : Math.floor(Date.now() / 1000),
      onOutput,
    );
  }

  /** The job's output folder, owned by the container's user where this scheduler may chown. */
  async #makeOutputDir(storageRoot: string, job: ClaimedJob): Promise<void> {
    const dir = join(storageRoot, OUTPUTS_BUCKET, jobOutputPrefix(job.account_id, job.id));
    await mkdir(dir, { recursive: true });
    const [uid, gid] = (this.#o.user ?? '1000:1000').split(':').map(Number);
    if (process.getuid?.() === 0 && Number.isInteger(uid))
      await chown(dir, uid!, Number.isInteger(gid) ? gid! : uid!);
  }

  /**
   * Everything a container printed so far (since `since`, in epoch seconds), split into
   * lines as a followed stream is.
   */
  async readOutput(containerId: string, since = 0): Promise<string[]> {
    const buffer = await containerRequest(this.docker.getContainer(containerId), {
      method: 'GET',
      what: 'logs',
      query: { stdout: true, stderr: true, follow: false, since },
    });
    return splitLogBuffer(buffer);
  }

  /** Creates the container; a same-named leftover of an earlier attempt is removed first. */
  async #create(options: Docker.ContainerCreateOptions): Promise<Docker.Container> {
    try {
      return await this.docker.createContainer(options);
    } catch (error) {
      if ((error as { statusCode?: number }).statusCode !== 409) throw error;
      // The leftover's own watcher may remove it first: removeContainer takes that as done.
      await removeContainer(this.docker.getContainer(options.name!));
      return this.docker.createContainer(options);
    }
  }

  #watch(
    container: Docker.Container,
    job: ClaimedJob,
    resources: Resources,
    startedAt: number,
    outputSince: number,
    onOutput: ((line: string) => void) | undefined,
  ): LaunchedRunner {
    const o = this.#o;
    let stoppedFor: StopReason | null = null;
    let timedOut = false;
    const launcherOutput = o.onOutput;
    const output =
      launcherOutput || onOutput
        ? this.#followOutput(container, outputSince, (line) => {
            launcherOutput?.(job.id, line);
            onOutput?.(line);
          })
        : undefined;
    const limit = resources.timeoutMs + (o.timeoutBackstopMs ?? TIMEOUT_BACKSTOP_MS);
    const timer = setTimeout(
      () => {
        timedOut = true;
        // Straight to SIGKILL: a SIGTERM would let the runner hand the job back, and a
        // stuck job would then never use up its attempts.
        container.kill().catch(() => {});
      },
      Math.max(0, startedAt + limit - Date.now()),
    );
    const exit = (async (): Promise<RunnerExit> => {
      try {
        await waitForExit(container);
      } finally {
        clearTimeout(timer);
      }
      const info = await inspectAfterExit(container);
      const exitCode = info?.State.ExitCode ?? null;
      const tail = await this.#tail(container);
      await output?.catchUp();
      // A followed runner's container stays until its output is stored (outputStored):
      // a scheduler killed meanwhile leaves it to the next one, which reads it again.
      if (!onOutput) await this.#dispose(container, job, exitCode);
      const finishedAt = Date.parse(info?.State.FinishedAt ?? '');
      return {
        exitCode,
        signal: exitCode !== null && exitCode > 128 ? signalName(exitCode - 128) : null,
        timedOut,
        stoppedFor,
        oomKilled: info?.State.OOMKilled === true || tail.some((l) => V8_HEAP_EXHAUSTED.test(l)),
        durationMs: Math.max(0, (Number.isNaN(finishedAt) ? Date.now() : finishedAt) - startedAt),
        outputTail: tail,
      };
    })();
    return {
      id: container.id,
      wait: () => exit,
      stop(reason) {
        stoppedFor ??= reason;
        // The engine sends SIGTERM, then SIGKILL after the grace period.
        const t = Math.ceil((o.killGraceMs ?? 10_000) / 1000);
        container.stop({ t }).catch(() => {});
      },
      ...(onOutput && {
        outputStored: async () => {
          const { exitCode } = await exit;
          await this.#dispose(container, job, exitCode);
        },
      }),
    };
  }

  /**
   * Follows the container's output and hands each line to `onLine` as it is printed; once
   * the container has exited, `catchUp()` ends the following and hands on, from the
   * container's log, the lines the stream did not: those printed while it was cut (an
   * engine restart drops it) and those it had not passed on yet (a loaded engine). Lines
   * are counted by their place in the output, which both readings split alike.
   */
  #followOutput(container: Docker.Container, since: number, onLine: (line: string) => void) {
    let handedOn = 0;
    let following = true;
    const take = (line: string) => {
      if (!following) return;
      handedOn++;
      onLine(line);
    };
    let stream: NodeJS.ReadableStream | undefined;
    const started = container.logs({ follow: true, stdout: true, stderr: true, since }).then(
      (s) => {
        stream = s;
        s.on('error', () => {}); // dropped by the engine, or by the catch-up
        // A last line without its newline comes with the catch-up, whole.
        this.docker.modem.demuxStream(s, new LogLineSplitter(take), new LogLineSplitter(take));
      },
      () => {}, // the catch-up reads it all
    );
    return {
      catchUp: async () => {
        await started;
        following = false;
        (stream as { destroy?: () => void } | undefined)?.destroy?.();
        const lines = await retriedWhileUnreachable(() => this.readOutput(container.id, since));
        for (const line of lines?.slice(handedOn) ?? []) onLine(line);
      },
    };
  }

  async #tail(container: Docker.Container): Promise<string[]> {
    try {
      const buffer = await containerRequest(container, {
        method: 'GET',
        what: 'logs',
        query: { stdout: true, stderr: true, follow: false, tail: OUTPUT_TAIL_LINES },
      });
      return demuxLogBuffer(buffer).slice(-OUTPUT_TAIL_LINES);
    } catch {
      return [];
    }
  }

  async #dispose(container: Docker.Container, job: ClaimedJob, exitCode: number | null) {
    if (this.#o.keepFailed && exitCode !== 0) {
      const name = `${KEPT_PREFIX}${job.id}-${job.attempts}`;
      const renamed = await container.rename({ name }).then(
        () => true,
        () => false,
      );
      if (renamed) return;
    }
    await removeContainer(container);
  }
}

/**
 * The fs storage a job's container sees: `accounts/{account_id}/` of each bucket that has
 * one, read-only, at the same place under CONTAINER_STORAGE_ROOT. Other tenants' folders
 * are not in the container at all. Missing folders are not bound (Docker would create
 * them on the host, as root).
 */
export function tenantStorageBinds(storageRoot: string, accountId: string): string[] {
  const tenant = tenantPrefix(accountId).slice(0, -1);
  const binds: string[] = [];
  if (!existsSync(storageRoot)) return binds;
  const buckets = readdirSync(storageRoot, { withFileTypes: true });
  for (const bucket of buckets.sort((a, b) => a.name.localeCompare(b.name))) {
    if (!bucket.isDirectory()) continue;
    const source = join(storageRoot, bucket.name, tenant);
    if (existsSync(source))
      binds.push(`${source}:${CONTAINER_STORAGE_ROOT}/${bucket.name}/${tenant}:ro`);
  }
  return binds;
}

/**
 * The one writable storage folder of a job's container: `accounts/{a}/jobs/{job}/` of the
 * outputs bucket, where its artifacts go (on top of the read-only tenant folder).
 */
export function jobOutputBind(storageRoot: string, job: Pick<ClaimedJob, 'id' | 'account_id'>) {
  const path = `${OUTPUTS_BUCKET}/${jobOutputPrefix(job.account_id, job.id).slice(0, -1)}`;
  return `${join(storageRoot, path)}:${CONTAINER_STORAGE_ROOT}/${path}:rw`;
}

/**
 * `call()`, retried while the engine is out of reach (it restarts; the container runs on);
 * undefined once the engine answers with an error (the container is gone).
 */
async function retriedWhileUnreachable<T>(call: () => Promise<T>): Promise<T | undefined> {
  for (;;) {
    try {
      return await call();
    } catch (error) {
      if ((error as { statusCode?: number }).statusCode !== undefined) return undefined;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

/**
 * Until the container has stopped, through an engine that restarts meanwhile: giving up
 * would classify a live runner as crashed.
 */
async function waitForExit(container: Docker.Container): Promise<void> {
  await retriedWhileUnreachable(() =>
    containerRequest(container, {
      method: 'POST',
      what: 'wait',
      query: { condition: 'not-running' },
    }),
  );
}

/** `inspect()` of an exited container, retried the same way; undefined once it is gone. */
const inspectAfterExit = (container: Docker.Container) =>
  retriedWhileUnreachable(() => container.inspect());

function signalName(signo: number): string | null {
  for (const [name, value] of Object.entries(constants.signals)) if (value === signo) return name;
  return null;
}
