import type { FileHandle } from 'node:fs/promises';
import { extname } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { toHdError } from '../../contract/errors.ts';
import type { ClaimedJob } from '../../contract/jobs.ts';
import type { ControlPlaneDb } from '../../control-plane/db/transport.ts';
import { processRunnerId } from '../process-reconcile.ts';
import { followOutput, type OutputFile, type OutputFiles } from './output-file.ts';
import { LogLineSplitter } from './docker-logs.ts';
import {
  WARM_ASSIGNED,
  WARM_READY,
  type WarmAssignment,
  type WarmCredentials,
} from '../../contract/warm-assignment.ts';
import { holdsSecret } from '../../control-plane/redact.ts';
import type {
  LaunchedRunner,
  LaunchRequest,
  Launcher,
  RunnerExit,
  StopReason,
  WarmRunner,
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
  /** How long a warm runner waits for its job before it exits (prestart). Default 5 min. */
  warmIdleMs?: number | undefined;
  /**
   * How long a warm runner has to acknowledge its job once handed it (it reads one line
   * it waits for); past this it is killed and its job starts cold. Default 15 s.
   */
  warmAckMs?: number | undefined;
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

  async launch(request: LaunchRequest): Promise<LaunchedRunner> {
    const { job, resources, gpuIds = [], env, logSeqBase = 0 } = request;
    const started = performance.now();
    const output = await this.#options.outputFiles?.create(job, logSeqBase);
    const spawned = await this.#spawn(['run', '--job-id', job.id], output, {
      env: {
        ...this.#options.env,
        ...env,
        HD_LEASE_TOKEN: job.lease_token,
        // A GPU job sees only its pinned GPUs; a CPU job none (empty: no CUDA device).
        CUDA_VISIBLE_DEVICES: gpuIds.join(','),
      },
      stdin: 'ignore',
      timeout: resources.timeoutMs + TIMEOUT_BACKSTOP_MS,
    });
    spawned.assign(job.id, request.onOutput);
    await this.#record(
      job,
      spawned.pid,
      output && ((id) => this.#files!.setRunner(output, id)),
    ).catch(async (error: unknown) => {
      spawned.child.kill('SIGKILL'); // untracked, it could outlive this scheduler unseen
      await spawned.ended;
      await spawned.forget();
      throw error;
    });
    return spawned.runner(started, () => false);
  }

  /**
   * Starts a warm runner (`run --warm`, cli/warm-start.ts) for a CPU job still to be
   * claimed: its environment is this launcher's without a secret (credentials travel in
   * the assignment, on its stdin), its arguments name no job.
   */
  async prestart(login: Record<string, string> = {}): Promise<WarmRunner> {
    const output = await this.#files?.createUnassigned();
    const { base, secret } = splitSecrets(this.#options.env);
    const spawned = await this.#spawn(
      ['run', '--warm', '--max-idle-ms', String(this.#options.warmIdleMs ?? 300_000)],
      output,
      { env: { ...base, CUDA_VISIBLE_DEVICES: '' }, stdin: 'pipe' },
    );
    // A runner that died before its assignment was written: the write fails (EPIPE), and
    // the missing acknowledgement says so below.
    spawned.child.stdin?.on('error', () => {});
    // Its database login before its job, on stdin: it connects while it waits. Every other
    // secret of this launcher's comes with its job, as before.
    const { HD_DATABASE_URL: launcherLogin, ...heldBack } = secret;
    const early = { ...(launcherLogin && { HD_DATABASE_URL: launcherLogin }), ...login };
    if (Object.keys(early).length > 0) {
      const credentials: WarmCredentials = { credentials: early };
      spawned.child.stdin?.write(`${JSON.stringify(credentials)}\n`);
    }
    const control = controlLines(spawned.child.stdio[3] as Readable | undefined);
    const ended = spawned.ended.then(() => undefined);
    // Either: loaded and waiting; or ended before (it crashed at start).
    const ready = Promise.race([
      control.next(WARM_READY).then(() => true),
      ended.then(() => false),
    ]);
    let taken = false;
    return {
      id: String(spawned.pid),
      ready: ready.then((ok) => ok === true),
      ended,
      discard: () => {
        if (taken) return;
        taken = true;
        spawned.child.stdin?.end(); // end of stdin: it exits without a job
        // One that does not (stopped, stuck) is killed after the grace.
        const kill = setTimeout(
          () => spawned.child.kill('SIGKILL'),
          this.#options.killGraceMs ?? 10_000,
        );
        void ended.finally(() => clearTimeout(kill));
      },
      assign: async (request) => {
        if (taken) throw new Error('a warm runner takes one job');
        taken = true;
        const { job, resources } = request;
        if (output) await this.#files!.assign(output, job, request.logSeqBase ?? 0);
        spawned.assign(job.id, request.onOutput);
        try {
          await this.#record(
            job,
            spawned.pid,
            output && ((id) => this.#files!.setRunner(output, id)),
          );
          const assignment: WarmAssignment = {
            job_id: job.id,
            lease_token: job.lease_token,
            env: { ...heldBack, ...request.env },
          };
          spawned.child.stdin?.end(`${JSON.stringify(assignment)}\n`);
          // It names the job it read: one written into its stdin by anyone else is not ours.
          // Within warmAckMs: a runner stopped (SIGSTOP by another process of this user) or
          // hung while it waited would hold its job and slot for good.
          const ackMs = this.#options.warmAckMs ?? 15_000;
          let timer: NodeJS.Timeout | undefined;
          const late = new Promise<undefined>((resolve) => {
            timer = setTimeout(resolve, ackMs, undefined);
          });
          const ack = await Promise.race([
            control.next(WARM_ASSIGNED),
            ended.then(() => ''),
            late,
          ]).finally(() => clearTimeout(timer));
          if (ack !== `${WARM_ASSIGNED} ${job.id}`)
            throw new Error(
              `warm runner ${spawned.pid} did not take job ${job.id} (${ack === undefined ? `no acknowledgement within ${ackMs} ms` : ack ? `it took ${ack.slice(WARM_ASSIGNED.length + 1)}` : 'it ended'})`,
            );
        } catch (error) {
          spawned.child.kill('SIGKILL');
          await spawned.ended;
          await spawned.forget();
          throw error;
        }
        // Its time limit starts with its job, as a cold runner's does with its process.
        const started = performance.now();
        let timedOut = false;
        const timer = setTimeout(() => {
          timedOut = true;
          spawned.stop(null);
        }, resources.timeoutMs + TIMEOUT_BACKSTOP_MS);
        void ended.finally(() => clearTimeout(timer));
        return spawned.runner(started, () => timedOut);
      },
    };
  }

  get #files(): OutputFiles | undefined {
    return this.#options.outputFiles;
  }

  /**
   * Spawns a runner with `args`, its output into `output` (or through a pipe), lines
   * kept in a bounded tail and passed on once `assign` said whose they are.
   */
  async #spawn(
    args: string[],
    output: (OutputFile & { log: FileHandle }) | undefined,
    options: { env: Record<string, string>; stdin: 'ignore' | 'pipe'; timeout?: number },
  ) {
    const [file, ...baseArgs] = this.#options.command ?? [process.execPath, CLI_ENTRY];
    const tail: string[] = [];
    let jobId = '';
    let onOutput: ((line: string) => void) | undefined;
    let stoppedFor: StopReason | null = null;
    if (output) this.watching.add(output.base);
    const forget = async () => {
      if (!output) return;
      this.watching.delete(output.base);
      await this.#files!.remove(output);
    };
    // Each line as it arrives: kept in a bounded tail and passed on, never buffered whole.
    const launcherOutput = this.#options.onOutput;
    const take = (text: string) => {
      tail.push(text);
      if (tail.length > OUTPUT_TAIL_LINES) tail.shift();
      launcherOutput?.(jobId, text);
      onOutput?.(text);
    };
    // An execa line transform that yields nothing: lines are consumed here, not buffered.
    // eslint-disable-next-line require-yield
    function* keepLines(line: unknown) {
      take(String(line));
    }
    // Into its output file (both streams, appended line by line), or through a pipe; a
    // warm runner's control lines on fd 3 (cli/warm-start.ts).
    const out = output ? (output.log.fd as 1) : [keepLines];
    const err = output ? (output.log.fd as 2) : [keepLines];
    const child = execa(file!, [...baseArgs, ...args], {
      env: options.env,
      extendEnv: false,
      reject: false,
      stdio: [options.stdin, out, err, options.stdin === 'pipe' ? 'pipe' : 'ignore'],
      ...(options.timeout !== undefined && { timeout: options.timeout }),
      forceKillAfterDelay: this.#options.killGraceMs ?? 10_000,
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
    const ended = child.then(async (result) => {
      await followed; // every line the runner wrote, the last ones included
      return result;
    });
    // Node assigns a pid only when the spawn worked; a spawn failure (missing binary,
    // EMFILE) throws here, as the interface promises.
    if (child.pid === undefined) {
      const result = await ended;
      await forget();
      throw new Error(result.shortMessage || 'the runner process could not be spawned');
    }
    const pid = child.pid;
    void ended.then(async () => {
      if (!jobId) await forget(); // a warm runner that got no job: its file goes
    });
    const stop = (reason: StopReason | null) => {
      stoppedFor ??= reason;
      child.kill('SIGTERM');
    };
    return {
      child,
      pid,
      ended,
      stop,
      forget,
      /** From now on its lines are job `id`'s. */
      assign(id: string, lines: ((line: string) => void) | undefined) {
        jobId = id;
        onOutput = lines;
      },
      runner: (started: number, timedOut: () => boolean): LaunchedRunner => {
        const exit = ended.then((result): RunnerExit => ({
          exitCode: result.exitCode ?? null,
          signal: result.signal ?? null,
          timedOut: result.timedOut || timedOut(),
          stoppedFor,
          oomKilled: tail.some((l) => V8_HEAP_EXHAUSTED.test(l)),
          durationMs: Math.round(performance.now() - started),
          outputTail: tail.slice(),
        }));
        return { id: String(pid), wait: () => exit, stop, outputStored: forget };
      },
    };
  }
}

/** The launcher's environment in two: what a warm runner may hold, and its secrets. */
function splitSecrets(env: Record<string, string>) {
  const base: Record<string, string> = {};
  const secret: Record<string, string> = {};
  for (const [key, value] of Object.entries(env))
    (holdsSecret(key, value) ? secret : base)[key] = value;
  return { base, secret };
}

/** The lines a warm runner writes on its control pipe, awaited by their first word. */
function controlLines(stream: Readable | undefined) {
  const seen: string[] = [];
  const waiting = new Map<string, (line: string) => void>();
  const word = (line: string) => line.split(' ')[0]!;
  if (stream) {
    const lines = new LogLineSplitter((line) => {
      seen.push(line);
      waiting.get(word(line))?.(line);
    });
    stream.pipe(lines);
  }
  return {
    /** The first line starting with `first` (never resolves if none comes). */
    next: (first: string) =>
      new Promise<string>((resolve) => {
        const line = seen.find((l) => word(l) === first);
        if (line !== undefined) resolve(line);
        else waiting.set(first, resolve);
      }),
  };
}
