import type Docker from 'dockerode';
import { toHdError } from '../contract/errors.ts';
import type { Job, LeasedJob } from '../contract/jobs.ts';
import type { ControlPlaneDb } from '../control-plane/db/transport.ts';
import type { Logger } from '../control-plane/logger.ts';
import type { Resources } from '../runner/handler.ts';
import type { LaunchedRunner } from './launcher.ts';
import { KEPT_PREFIX, LABELS, type DockerLauncher } from './launchers/docker.ts';

/** A runner a previous scheduler started, handed to this one to watch to the end. */
export interface AdoptedRunner {
  job: LeasedJob;
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

/** Where the output of a re-adopted runner goes, line by line. */
export type OutputFor = (job: LeasedJob) => ((line: string) => void) | undefined;

/**
 * Matches what a launcher left running with the job rows. `supervised(jobId)` is the
 * attempt this scheduler is running for that job right now (undefined: none); it is
 * asked at decision time because claims go on while a reconcile runs. `outputFor(job)`
 * is asked for a sink the moment a runner is re-adopted, before it prints anything.
 */
export interface Reconciler {
  reconcile(
    supervised: (jobId: string) => number | undefined,
    outputFor?: OutputFor,
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

  constructor(deps: DockerReconcilerDeps) {
    this.#d = deps;
  }

  async reconcile(
    supervised: (jobId: string) => number | undefined,
    outputFor?: OutputFor,
  ): Promise<ReconcileResult> {
    const docker = this.#d.launcher.docker;
    const result: ReconcileResult = { adopted: [], removed: [], gaveBack: [] };
    const containers = await docker.listContainers({
      all: true,
      filters: { label: [LABELS.jobId] },
    });
    for (const container of containers) {
      try {
        await this.#reconcileContainer(container, supervised, result, outputFor);
      } catch (error) {
        this.#d.log.warn(
          { container_id: container.Id, err: toHdError(error) },
          'could not reconcile a runner container; trying again next round',
        );
      }
    }
    const removed = new Set(result.removed.map((r) => r.containerId));
    const live = new Set(containers.map((c) => c.Id).filter((id) => !removed.has(id)));
    await this.#giveBackOrphans(live, supervised, result);
    return result;
  }

  async #reconcileContainer(
    c: Docker.ContainerInfo,
    supervised: (jobId: string) => number | undefined,
    result: ReconcileResult,
    outputFor: OutputFor | undefined,
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
      const info = await launcher.docker.getContainer(c.Id).inspect();
      const leased = job as LeasedJob;
      const gpuIds = (c.Labels[LABELS.gpus] ?? '').split(',').filter(Boolean);
      const resources = this.#d.resourcesFor(job.job_type);
      const runner = launcher.adopt(info, leased, resources, outputFor?.(leased));
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
    await launcher.docker
      .getContainer(c.Id)
      .remove({ force: true, v: true })
      .catch((error: { statusCode?: number }) => {
        if (error.statusCode !== 404 && error.statusCode !== 409) throw error;
      });
    result.removed.push({ containerId: c.Id, jobId, why: why ?? 'unknown' });
    log.warn(
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

  async #giveBackOrphans(
    live: ReadonlySet<string>,
    supervised: (jobId: string) => number | undefined,
    result: ReconcileResult,
  ): Promise<void> {
    const { db, schedulerId, log } = this.#d;
    const adopted = new Set(result.adopted.map((a) => a.job.id));
    const running = await db.listJobs({ status: 'running', limit: 1000 });
    for (const job of running) {
      if (job.locked_by !== schedulerId || !job.lease_token || adopted.has(job.id)) continue;
      if (job.container_id && live.has(job.container_id)) continue;
      const claimedAt = (job.started_at ?? job.updated_at).getTime();
      if (this.#now() - claimedAt < (this.#d.graceMs ?? 15_000)) continue; // may be launching
      if (supervised(job.id) !== undefined) continue;
      try {
        await db.releaseJob(job.id, job.lease_token);
        result.gaveBack.push(job.id);
        log.warn(
          { job_id: job.id, container_id: job.container_id },
          'handed back a job whose runner container is gone',
        );
      } catch (error) {
        const err = toHdError(error);
        if (err.code !== 'LEASE_LOST' && err.code !== 'CANCELLED') throw err;
      }
    }
  }

  #now(): number {
    return (this.#d.now ?? Date.now)();
  }
}
