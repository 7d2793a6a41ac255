import type Docker from 'dockerode';
import { toHdError } from '../contract/errors.ts';
import type { Job, ClaimedJob } from '../contract/jobs.ts';
import type { ControlPlaneDb } from '../control-plane/db/transport.ts';
import type { Logger } from '../control-plane/logger.ts';
import type { Resources } from '../runner/handler.ts';
import type { LaunchedRunner } from './launcher.ts';
import { removeContainer } from './launchers/docker-engine.ts';
import { KEPT_PREFIX, LABELS, type DockerLauncher } from './launchers/docker.ts';

/** A runner a previous scheduler started, handed to this one to watch to the end. */
export interface AdoptedRunner {
  job: ClaimedJob;
  runner: LaunchedRunner;
  gpuIds: string[];
}

export interface ReconcileResult {
  adopted: AdoptedRunner[];
  /** Containers killed and removed because their job no longer needs them. */
  removed: { containerId: string; jobId: string; why: string }[];
  /** Jobs of this scheduler whose runner was gone, handed back to the queue. */
  gaveBack: string[];
}

/** Where the output of runners a previous scheduler left goes (hd_job_logs). */
export interface RunnerOutput {
  /**
   * A sink for a re-adopted runner's lines, asked for before it prints anything;
   * `seqBase`: where its launch started the numbering, when known.
   */
  follow(job: ClaimedJob, seqBase?: number): (line: string) => void;
  /**
   * Stores the whole output of a runner that ended unwatched, numbered from `seqBase` as
   * when it ran (lines already stored are kept once); resolves with the lines lost.
   */
  store(job: ClaimedJob, seqBase: number, lines: string[]): Promise<number>;
}

/**
 * Matches what a launcher left running with the job rows. `supervised(jobId)` is the
 * attempt this scheduler is running for that job right now (undefined: none); it is
 * asked at decision time because claims go on while a reconcile runs.
 */
export interface Reconciler {
  reconcile(
    supervised: (jobId: string) => number | undefined,
    output?: RunnerOutput,
  ): Promise<ReconcileResult>;
}

export interface DockerReconcilerDeps {
  launcher: DockerLauncher;
  db: ControlPlaneDb;
  /** This scheduler's stable id: the label on its containers and `locked_by` of its jobs. */
  schedulerId: string;
  log: Logger;
  resourcesFor: (jobType: string) => Resources;
  /**
   * How old another scheduler's stopped container, or a job of ours without a runner,
   * must be before it is cleaned up: they may be between two steps of a launch. Default 15 s.
   */
  graceMs?: number;
  now?: () => number;
}

/**
 * Reconcile for the docker launcher, on start and periodically. For each container
 * labelled with a job id:
 * - its job is running with this container and a valid lease: re-adopt it when it is
 *   ours (running or already exited), leave it to its scheduler otherwise;
 * - otherwise (job completed, failed, requeued, taken over, lease expired, row gone):
 *   kill and remove it — for another scheduler's stopped container only after the grace,
 *   and never another scheduler's container whose job this database does not have.
 * Then each running job locked by this scheduler that no container serves any more is
 * handed back to the queue (the lease reaper would do it later, spending an attempt).
 */
export class DockerReconciler implements Reconciler {
  readonly #d: DockerReconcilerDeps;
  /** The first round runs before anything is claimed: no job of ours can be launching. */
  #first = true;

  constructor(deps: DockerReconcilerDeps) {
    this.#d = deps;
  }

  async reconcile(
    supervised: (jobId: string) => number | undefined,
    output?: RunnerOutput,
  ): Promise<ReconcileResult> {
    const docker = this.#d.launcher.docker;
    const result: ReconcileResult = { adopted: [], removed: [], gaveBack: [] };
    const containers = await docker.listContainers({
      all: true,
      filters: { label: [LABELS.jobId] },
    });
    for (const container of containers) {
      try {
        await this.#reconcileContainer(container, supervised, result, output);
      } catch (error) {
        this.#d.log.warn(
          { container_id: container.Id, err: toHdError(error) },
          'could not reconcile a runner container; trying again next round',
        );
      }
    }
    const removed = new Set(result.removed.map((r) => r.containerId));
    const live = new Set(containers.map((c) => c.Id).filter((id) => !removed.has(id)));
    const adopted = new Set(result.adopted.map((a) => a.job.id));
    const { graceMs = 15_000, now = Date.now } = this.#d;
    result.gaveBack = await giveBackOrphans(
      { ...this.#d, graceMs: this.#first ? 0 : graceMs, now },
      (job) => adopted.has(job.id) || (!!job.container_id && live.has(job.container_id)),
      supervised,
    );
    this.#first = false;
    return result;
  }

  async #reconcileContainer(
    c: Docker.ContainerInfo,
    supervised: (jobId: string) => number | undefined,
    result: ReconcileResult,
    output: RunnerOutput | undefined,
  ): Promise<void> {
    const { launcher, db, schedulerId, log } = this.#d;
    const jobId = c.Labels[LABELS.jobId]!;
    const attempt = Number(c.Labels[LABELS.attempt]);
    const ours = c.Labels[LABELS.schedulerId] === schedulerId;
    if (ours && supervised(jobId) === attempt) return; // being launched or watched
    const job = await db.getJob(jobId);
    const why = this.#notNeeded(job, c.Id, attempt);
    if (why === undefined && job) {
      if (!ours || supervised(jobId) !== undefined) return;
      // A scheduler killed between recording the container and starting it: start it now
      // (the lease is still valid); one that will not start is removed, the job given back.
      if (c.State === 'created') {
        const started = await launcher.docker
          .getContainer(c.Id)
          .start()
          .then(
            () => undefined,
            (error: Error) => `it could not be started: ${error.message}`,
          );
        if (started !== undefined) return this.#remove(c, jobId, attempt, started, result);
        log.info({ job_id: jobId, container_id: c.Id }, 'started a runner container left created');
      }
      const info = await launcher.docker.getContainer(c.Id).inspect();
      const leased = job as ClaimedJob;
      const gpuIds = (c.Labels[LABELS.gpus] ?? '').split(',').filter(Boolean);
      const resources = this.#d.resourcesFor(job.job_type);
      const seqBase = seqBaseOf(c);
      const sink = output?.follow(leased, seqBase);
      const runner = launcher.adopt(info, leased, resources, sink, seqBase !== undefined);
      result.adopted.push({ job: leased, runner, gpuIds });
      return;
    }
    // Another scheduler's job this database does not know: it may work for another
    // queue (staging next to production, two test suites), so it is not ours to judge.
    if (!job && !ours) return;
    const stopped = c.State !== 'running';
    if (stopped && (c.Names[0] ?? '').startsWith(`/${KEPT_PREFIX}`)) return; // kept on purpose
    const ageMs = this.#now() - c.Created * 1000;
    if (!ours && stopped && ageMs < (this.#d.graceMs ?? 15_000)) return;
    if (ours && output) await this.#storeOutput(c, jobId, attempt, output);
    await this.#remove(c, jobId, attempt, why ?? 'unknown', result);
  }

  /**
   * Stores what one of our containers printed while no scheduler watched it (it ended
   * its lease meanwhile: completed, handed back), before it is removed. Lines go in under
   * its own lease, which the database takes while it is the job's last (00008).
   */
  async #storeOutput(
    c: Docker.ContainerInfo,
    jobId: string,
    attempt: number,
    output: RunnerOutput,
  ): Promise<void> {
    const seqBase = seqBaseOf(c);
    if (seqBase === undefined) return; // started by a scheduler that did not number it so
    const { launcher } = this.#d;
    const info = await launcher.docker.getContainer(c.Id).inspect();
    const token = (info.Config.Env ?? [])
      .find((e) => e.startsWith('HD_LEASE_TOKEN='))
      ?.slice('HD_LEASE_TOKEN='.length);
    if (!token) return;
    const job = { id: jobId, attempts: attempt, lease_token: token } as ClaimedJob;
    const lost = await output.store(job, seqBase, await launcher.readOutput(c.Id));
    this.#d.log.info(
      { job_id: jobId, container_id: c.Id, lost },
      'stored the output of a runner container that ended while no scheduler watched it',
    );
  }

  async #remove(
    c: Docker.ContainerInfo,
    jobId: string,
    attempt: number,
    why: string,
    result: ReconcileResult,
  ): Promise<void> {
    await removeContainer(this.#d.launcher.docker.getContainer(c.Id));
    result.removed.push({ containerId: c.Id, jobId, why });
    this.#d.log.warn(
      { job_id: jobId, container_id: c.Id, attempt, state: c.State, why },
      'removed a runner container its job no longer needs',
    );
  }

  /** Why a container is no longer needed by its job; undefined while it is. */
  #notNeeded(job: Job | undefined, containerId: string, attempt: number): string | undefined {
    if (!job) return 'the job row is gone';
    if (job.status !== 'running') return `the job is ${job.status}`;
    if (job.container_id !== containerId || job.attempts !== attempt)
      return 'another attempt holds the job';
    if (!job.lease_token || !job.lease_expires_at || job.lease_expires_at.getTime() <= this.#now())
      return 'the lease expired';
    return undefined;
  }

  #now(): number {
    return (this.#d.now ?? Date.now)();
  }
}

/** The hd-runner.log-seq-base label of a container; undefined when absent. */
function seqBaseOf(c: Docker.ContainerInfo): number | undefined {
  const label = c.Labels[LABELS.logSeqBase];
  return label !== undefined && /^\d+$/.test(label) ? Number(label) : undefined;
}

export interface GiveBackDeps {
  db: Pick<ControlPlaneDb, 'listJobs' | 'releaseJob'>;
  schedulerId: string;
  log: Logger;
  /** How long after its claim a job may still be launching; 0 before the first claim. */
  graceMs: number;
  now: () => number;
}

/**
 * Hands back to the queue each running job locked by this scheduler that no runner
 * serves (`served` says which are): its runner is gone, or the scheduler died between
 * claim and launch. Without this the lease reaper would do it later, spending an
 * attempt. Returns the ids handed back.
 */
export async function giveBackOrphans(
  d: GiveBackDeps,
  served: (job: Job) => boolean,
  supervised: (jobId: string) => number | undefined,
): Promise<string[]> {
  const gaveBack: string[] = [];
  const running = await d.db.listJobs({ status: 'running', limit: 1000 });
  for (const job of running) {
    if (job.locked_by !== d.schedulerId || !job.lease_token || served(job)) continue;
    const claimedAt = (job.started_at ?? job.updated_at).getTime();
    if (d.now() - claimedAt < d.graceMs) continue; // may be launching
    if (supervised(job.id) !== undefined) continue;
    try {
      await d.db.releaseJob(job.id, job.lease_token);
      gaveBack.push(job.id);
      d.log.warn(
        { job_id: job.id, runner: job.container_id },
        'handed back a job whose runner is gone',
      );
    } catch (error) {
      const err = toHdError(error);
      if (err.code !== 'LEASE_LOST' && err.code !== 'CANCELLED') throw err;
    }
  }
  return gaveBack;
}
