import { readFile } from 'node:fs/promises';
import type { ClaimedJob } from '../contract/jobs.ts';
import type { ControlPlaneDb } from '../control-plane/db/transport.ts';
import type { Logger } from '../control-plane/logger.ts';
import { readOutputLines, type OutputFile, type OutputFiles } from './launchers/output-file.ts';
import {
  giveBackOrphans,
  type Reconciler,
  type ReconcileResult,
  type RunnerOutput,
} from './reconcile.ts';
import { sleep } from './retry.ts';

/**
 * A runner process as the job row records it (`container_id`): `process:PID:START`, START
 * being the kernel's start time of the process, so that a recycled pid is not taken for
 * the runner. Undefined where /proc is missing (not Linux): such runners are not tracked.
 */
export async function processRunnerId(pid: number): Promise<string | undefined> {
  const start = await startTime(pid);
  return start === undefined ? undefined : `process:${pid}:${start}`;
}

/** The start time (clock ticks after boot) of a live, non-zombie process; undefined if none. */
async function startTime(pid: number): Promise<string | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  // pid (comm) state ppid … starttime is field 22; comm may hold spaces and parentheses.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return fields[0] === undefined || fields[0] === 'Z' || fields[0] === '' ? undefined : fields[19];
}

/** The pid of the runner `id` names when that very process still runs. */
async function livePid(id: string | null): Promise<number | undefined> {
  const match = /^process:(\d+):(\d+)$/.exec(id ?? '');
  if (!match) return undefined;
  const pid = Number(match[1]);
  return (await startTime(pid)) === match[2] ? pid : undefined;
}

export interface ProcessReconcilerDeps {
  db: Pick<ControlPlaneDb, 'listJobs' | 'releaseJob' | 'getJob'>;
  /** This scheduler's stable id: `locked_by` of its jobs. */
  schedulerId: string;
  log: Logger;
  /** How long a runner may take to stop after SIGTERM before SIGKILL. Default 10 s. */
  killGraceMs?: number;
  /** How old a claim without a runner must be before it is handed back. Default 15 s. */
  graceMs?: number;
  now?: () => number;
  /** The runners' output files (the launcher's), and those the launcher watches now. */
  outputFiles?: OutputFiles | undefined;
  watching?: ReadonlySet<string> | undefined;
}

/**
 * Reconcile for the process launcher. A runner process outlives a killed scheduler, but
 * no longer has one to classify its end: it is stopped (SIGTERM: it hands its job back;
 * SIGKILL after the grace), before anything new is claimed, so that no more runners than
 * slots ever run. Its output, in its output file, is not lost: every output file no
 * runner of this scheduler is writing is stored in hd_job_logs (lines already there kept
 * once), then removed. Then each running job of this scheduler that no runner serves is
 * handed back, its attempt refunded.
 */
export class ProcessReconciler implements Reconciler {
  readonly #d: ProcessReconcilerDeps;
  #first = true;

  constructor(deps: ProcessReconcilerDeps) {
    this.#d = deps;
  }

  async reconcile(
    supervised: (jobId: string) => number | undefined,
    output?: RunnerOutput,
  ): Promise<ReconcileResult> {
    const { db, schedulerId, log } = this.#d;
    const result: ReconcileResult = { adopted: [], removed: [], gaveBack: [] };
    const ours = (await db.listJobs({ status: 'running', limit: 1000 })).filter(
      (job) => job.locked_by === schedulerId && supervised(job.id) === undefined,
    );
    await Promise.all(
      ours.map(async (job) => {
        const pid = await livePid(job.container_id);
        if (pid === undefined) return;
        log.warn(
          { job_id: job.id, pid },
          'stopping a runner process a previous scheduler left: it cannot be watched again',
        );
        await this.#stop(pid, job.container_id!);
        result.removed.push({ containerId: job.container_id!, jobId: job.id, why: 'orphaned' });
      }),
    );
    if (output) await this.#storeLeftOutput(output);
    const { graceMs = 15_000, now = Date.now } = this.#d;
    result.gaveBack = await giveBackOrphans(
      { db, schedulerId, log, graceMs: this.#first ? 0 : graceMs, now },
      () => false, // the runners of our unsupervised jobs were just stopped
      supervised,
    );
    this.#first = false;
    return result;
  }

  /** Stores the output files no runner of this scheduler writes any more, then drops them. */
  async #storeLeftOutput(output: RunnerOutput): Promise<void> {
    const { outputFiles, watching, db } = this.#d;
    await outputFiles?.removeUnassigned(watching ?? new Set());
    for (const file of (await outputFiles?.list()) ?? []) {
      if (watching?.has(file.base)) continue;
      // A folder shared by mistake with a scheduler of another queue: not ours to judge.
      if (!(await db.getJob(file.meta.job_id))) continue;
      // Its runner outlived its lease (it was printing its last lines): wait for its end.
      const pid = await livePid(file.meta.runner ?? null);
      if (pid !== undefined) await this.#stop(pid, file.meta.runner!);
      await this.#store(file, output);
    }
  }

  async #store(file: OutputFile, output: RunnerOutput): Promise<void> {
    const { meta } = file;
    const job = { id: meta.job_id, attempts: meta.attempt, lease_token: meta.lease_token };
    const lines = await readOutputLines(file);
    const lost = await output.store(job as ClaimedJob, meta.seq_base, lines);
    this.#d.log.info(
      { job_id: meta.job_id, attempt: meta.attempt, lines: lines.length, lost },
      'stored the output of a runner that ended while no scheduler watched it',
    );
    await this.#d.outputFiles!.remove(file);
  }

  /** SIGTERM, then SIGKILL after the grace; resolves once the process is gone. */
  async #stop(pid: number, id: string): Promise<void> {
    const gone = async () => (await livePid(id)) === undefined;
    const kill = (signal: NodeJS.Signals) => {
      try {
        process.kill(pid, signal);
      } catch {
        // already gone
      }
    };
    kill('SIGTERM');
    const deadline = Date.now() + (this.#d.killGraceMs ?? 10_000);
    while (!(await gone()) && Date.now() < deadline) await sleep(100);
    if (await gone()) return;
    kill('SIGKILL');
    while (!(await gone())) await sleep(50);
  }
}
