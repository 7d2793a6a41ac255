import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { toHdError } from '../../contract/errors.ts';
import type { ClaimedJob } from '../../contract/jobs.ts';
import type { ControlPlaneDb } from '../../control-plane/db/transport.ts';
import { processRunnerId } from '../process-reconcile.ts';
import { followOutput, type OutputFiles } from './output-file.ts';
import type {
  LaunchedRunner,
  LaunchRequest,
  Launcher,
  RunnerExit,
  StopReason,
} from '../launcher.ts';

/** The CLI entry next to this module: cli/main.ts from source, dist/cli/main.js when built. */
const CLI_ENTRY = fileURLToPath(
  new URL(`../../cli/main${extname(fileURLToPath(import.meta.url))}`, import.meta.url),
);

const OUTPUT_TAIL_LINES = 40;
// Past this much time over its own limit the runner is killed from outside: its own
// timer should have ended it already, so it is stuck.
const TIMEOUT_BACKSTOP_MS = 15_000;
const V8_HEAP_EXHAUSTED = /JavaScript heap out of memory|Allocation failed - process out of memory/;

export interface ProcessLauncherOptions {
  /** Environment of every runner (its configuration); the lease token is added per job. */
  env: Record<string, string>;
  /** How long a runner may take to stop after SIGTERM before SIGKILL. Default 10 s. */
  killGraceMs?: number;
  /** Receives every line a runner prints (its pino JSON logs). */
  onOutput?: (jobId: string, line: string) => void;
  /** Command that starts a runner; default: this Node binary with hd-runner's CLI. */
  command?: readonly string[];
  /**
   * Where each runner's process is recorded (the job row's container_id, see
   * process-reconcile.ts), so that a restarted scheduler finds the runners it left.
   */
  db?: Pick<ControlPlaneDb, 'setContainerId'>;
  /**
   * Where runners write their output (a file per runner, followed from here): it outlives
   * a killed scheduler, and the next one stores it. Without: a pipe, which dies with it.
   */
  outputFiles?: OutputFiles | undefined;
}

/**
 * Launcher `process`: the runner as a child process (execa), for machines without
 * Docker. Same entry and exit codes as in a container.
 */
export class ProcessLauncher implements Launcher {
  readonly #options: ProcessLauncherOptions;

  constructor(options: ProcessLauncherOptions) {
    this.#options = options;
  }

  /**
   * Records the runner's process in its job row (and its output file's meta); a lease
   * already ended needs no record.
   */
  async #record(
    job: ClaimedJob,
    pid: number,
    inOutputFile?: (id: string) => Promise<void>,
  ): Promise<void> {
    const id = await processRunnerId(pid);
    if (id) await inOutputFile?.(id);
    if (!id || !this.#options.db) return;
    await this.#options.db!.setContainerId(job.id, job.lease_token, id).catch((error: unknown) => {
      const { code } = toHdError(error);
      if (code !== 'LEASE_LOST' && code !== 'CANCELLED') throw error;
    });
  }

  /** The base names of the output files of runners this launcher watches now. */
  readonly watching = new Set<string>();

  async launch({
    job,
    resources,
    gpuIds = [],
    env,
    onOutput,
    logSeqBase = 0,
  }: LaunchRequest): Promise<LaunchedRunner> {
    const [file, ...baseArgs] = this.#options.command ?? [process.execPath, CLI_ENTRY];
    const started = performance.now();
    const tail: string[] = [];
    let stoppedFor: StopReason | null = null;
    const files = this.#options.outputFiles;
    const output = await files?.create(job, logSeqBase);
    if (output) this.watching.add(output.base);
    const forget = async () => {
      if (!output) return;
      this.watching.delete(output.base);
      await files!.remove(output);
    };
    // Each line as it arrives: kept in a bounded tail and passed on, never buffered whole.
    const launcherOutput = this.#options.onOutput;
    const take = (text: string) => {
      tail.push(text);
      if (tail.length > OUTPUT_TAIL_LINES) tail.shift();
      launcherOutput?.(job.id, text);
      onOutput?.(text);
    };
    // An execa line transform that yields nothing: lines are consumed here, not buffered.
    // eslint-disable-next-line require-yield
    function* keepLines(line: unknown) {
      take(String(line));
    }
    const child = execa(file!, [...baseArgs, 'run', '--job-id', job.id], {
      env: {
        ...this.#options.env,
        ...env,
        HD_LEASE_TOKEN: job.lease_token,
        // A GPU job sees only its pinned GPUs; a CPU job none (empty: no CUDA device).
        CUDA_VISIBLE_DEVICES: gpuIds.join(','),
      },
      extendEnv: false,
      reject: false,
      stdin: 'ignore',
      timeout: resources.timeoutMs + TIMEOUT_BACKSTOP_MS,
      forceKillAfterDelay: this.#options.killGraceMs ?? 10_000,
      // Into its output file (both streams, appended line by line), or through a pipe.
      ...(output
        ? // A file descriptor goes to the child as it is (execa's types list only 1 and 2).
          { stdout: output.log.fd as 1, stderr: output.log.fd as 2 }
        : { stdout: [keepLines], stderr: [keepLines] }),
      buffer: false,
    });
    await output?.log.close(); // the child holds its own copy
    const followed = output
      ? followOutput(
          `${output.base}.log`,
          child.then(() => undefined),
          take,
        ).catch(() => {})
      : Promise.resolve();
    // Node assigns a pid only when the spawn worked; a spawn failure (missing binary,
    // EMFILE) throws here, as the interface promises.
    if (child.pid === undefined) {
      const result = await child;
      await followed;
      await forget();
      throw new Error(result.shortMessage || 'the runner process could not be spawned');
    }
    await this.#record(job, child.pid, output && ((id) => files!.setRunner(output, id))).catch(
      async (error: unknown) => {
        child.kill('SIGKILL'); // untracked, it could outlive this scheduler unseen
        await child;
        await followed;
        await forget();
        throw error;
      },
    );
    const exit: Promise<RunnerExit> = child.then(async (result) => {
      await followed; // every line the runner wrote, the last ones included
      return {
        exitCode: result.exitCode ?? null,
        signal: result.signal ?? null,
        timedOut: result.timedOut,
        stoppedFor,
        oomKilled: tail.some((l) => V8_HEAP_EXHAUSTED.test(l)),
        durationMs: Math.round(performance.now() - started),
        outputTail: tail.slice(),
      };
    });
    return {
      id: String(child.pid),
      wait: () => exit,
      stop(reason) {
        stoppedFor ??= reason;
        child.kill('SIGTERM');
      },
      outputStored: forget,
    };
  }
}
