import type { ClaimedJob } from '../contract/jobs.ts';
import type { Resources } from '../runner/handler.ts';

export interface LaunchRequest {
  job: ClaimedJob;
  resources: Resources;
  /** GPUs the scheduler pinned the job to (none, or absent: a CPU job that sees no GPU). */
  gpuIds?: readonly string[] | undefined;
  /**
   * The job's own environment (its lease token, credentials scoped to it), laid over the
   * launcher's base environment.
   */
  env?: Readonly<Record<string, string>> | undefined;
  /**
   * Receives each line the runner prints, as it prints it (besides the launcher's own
   * `onOutput`): the scheduler stores them in hd_job_logs.
   */
  onOutput?: ((line: string) => void) | undefined;
  /**
   * Where the numbering of the runner's output lines in hd_job_logs starts; kept with the
   * runner (a container label, its output file's meta) so that a restarted scheduler that
   * reads its output again from the start numbers it the same (lines stored once).
   */
  logSeqBase?: number | undefined;
}

/** How a runner ended, in the launcher-neutral terms the scheduler classifies. */
export interface RunnerExit {
  exitCode: number | null;
  signal: string | null;
  /** Killed by the launcher because it ran past resources.timeoutMs (+ grace). */
  timedOut: boolean;
  /** Killed by the launcher after stop(reason). */
  stoppedFor: StopReason | null;
  /** Killed for memory (kernel OOM killer, or V8 heap exhaustion). */
  oomKilled: boolean;
  durationMs: number;
  /** Last lines the runner printed, kept for the job's error details. */
  outputTail: string[];
}

export type StopReason = 'cancelled' | 'shutdown';

export interface LaunchedRunner {
  /** Launcher-specific id (process id, container id). */
  readonly id: string;
  wait(): Promise<RunnerExit>;
  /** Asks the runner to stop (SIGTERM), then kills it after a grace period. */
  stop(reason: StopReason): void;
  /**
   * Told once the runner's output is stored in hd_job_logs (or given up): the launcher
   * drops the copy it kept for a restarted scheduler (a process runner's output file).
   */
  outputStored?(): Promise<void>;
}

/**
 * A runner started before its job exists (HD_WARM_RUNNERS): its code loaded, no job id or
 * lease in it until `assign` hands it exactly one job (at most a database login that
 * reaches no job before that); it exits after that job as any runner does.
 */
export interface WarmRunner {
  readonly id: string;
  /** True once it is loaded and waiting; false when it ended first. */
  readonly ready: Promise<boolean>;
  /** Resolves when its process ended (with or without a job). */
  readonly ended: Promise<void>;
  /**
   * Hands it its one job. Rejects, the job untouched, when it ended (or ends) before it
   * acknowledged the job: the caller starts another runner for it.
   */
  assign(request: LaunchRequest): Promise<LaunchedRunner>;
  /** Ends it without a job. */
  discard(): void;
}

/**
 * A warm runner's database login, made before its job exists (RunnerAccess.warmLogin),
 * so that the runner connects while it waits; it reaches no job until the runner's job
 * environment is made with it (RunnerAccess.envFor binds it to that job).
 */
export interface WarmLogin {
  /** What the runner is sent before its job (contract/warm-assignment.ts, WarmCredentials). */
  readonly env: Record<string, string>;
  /** Ends it if it was never bound to a job (its runner ended without one). */
  release(): Promise<void>;
}

/** One interface, one backend per way of running a runner (`process`, `docker`). */
export interface Launcher {
  /** Starts a runner for the leased job; throws when it cannot be started. */
  launch(request: LaunchRequest): Promise<LaunchedRunner>;
  /**
   * Resolves when runners can be started now; throws, saying why, while they cannot (the
   * Docker engine is down): the scheduler claims nothing meanwhile. Absent: always.
   */
  ready?(): Promise<void>;
  /**
   * Starts a warm runner for a CPU job still to be claimed, sending it `login` (settings
   * of a database login that reaches no job yet: RunnerAccess.warmLogin) to connect with
   * while it waits. Absent: no warm runners.
   */
  prestart?(login?: Record<string, string>): Promise<WarmRunner>;
}
