import { execa, type ResultPromise } from 'execa';
import { configToEnv } from '../../control-plane/config.ts';
import { PostgresDb } from '../../control-plane/db/postgres.ts';
import { createLogger } from '../../control-plane/logger.ts';
import { GpuSlots } from '../../scheduler/gpu.ts';
import type { Launcher, LaunchRequest } from '../../scheduler/launcher.ts';
import { Scheduler } from '../../scheduler/scheduler.ts';
import { heldLauncher, type HeldRunner } from './held-launcher.ts';
import { testConfig } from './runtime.ts';

/** A `hd-runner scheduler` process standing in for one host (its own slots and worker id). */
export interface SchedulerHost {
  workerId: string;
  process: ResultPromise<{ reject: false; detached: true }>;
  /** SIGKILL to the host's whole process group: the scheduler and its runners die at once. */
  kill(): void;
  /** SIGTERM, then the exit. */
  stop(): Promise<unknown>;
}

/**
 * Starts `count` scheduler processes on one database and storage folder, each in its own
 * process group (so that a test can kill a host with everything it started), and resolves
 * once each has said "scheduler started".
 */
export async function startSchedulerHosts(
  count: number,
  o: {
    databaseUrl: string;
    storageRoot: string;
    /** Settings of host `i` (0-based). */
    env?: (i: number) => Record<string, string>;
  },
): Promise<SchedulerHost[]> {
  return Promise.all(
    Array.from({ length: count }, async (_, i) => {
      const workerId = `host-${i + 1}`;
      const config = testConfig(o.databaseUrl, o.storageRoot, {
        HD_WORKER_ID: workerId,
        HD_LOG_LEVEL: 'info',
        ...o.env?.(i),
      });
      const child = execa(process.execPath, ['cli/main.ts', 'scheduler'], {
        env: { PATH: process.env.PATH ?? '', ...configToEnv(config) },
        extendEnv: false,
        reject: false,
        detached: true,
      });
      await new Promise<void>((resolve, reject) => {
        let seen = '';
        child.stderr.on('data', (chunk: Buffer) => {
          seen += String(chunk);
          if (seen.includes('"scheduler started"')) resolve();
        });
        void child.then((r) =>
          reject(new Error(`${workerId} exited before starting: ${r.stderr || r.message}`)),
        );
      });
      return {
        workerId,
        process: child,
        kill: () => process.kill(-child.pid!, 'SIGKILL'),
        stop: async () => {
          child.kill('SIGTERM');
          return child;
        },
      };
    }),
  );
}

/** A held runner (helpers/held-launcher.ts) on one of the GPU hosts. */
export interface HostRunner extends HeldRunner {
  host: string;
}

/** An in-process scheduler standing in for one host with its own GPU list. */
export interface GpuHost {
  workerId: string;
  gpus: readonly string[];
  scheduler: Scheduler;
  db: PostgresDb;
}

/**
 * Starts one Scheduler per entry of `hosts` in this process, each with its own pool on the
 * database, its own slots and GPU list (`gpu_probe` jobs need a GPU, `cpu_probe` jobs do
 * not), and a launcher that records every launch in `launched` and completes the job when
 * the test calls finish(). Each host's launcher also records, in `doubleBooked`, a GPU it
 * was handed while one of that host's runners still held it.
 */
export async function startGpuHosts(
  hosts: readonly { gpus: readonly string[]; slots: number }[],
  o: { databaseUrl: string; storageRoot: string },
): Promise<{ hosts: GpuHost[]; launched: HostRunner[]; doubleBooked: string[] }> {
  const launched: HostRunner[] = [];
  const doubleBooked: string[] = [];
  const started = hosts.map((spec, i) => {
    const workerId = `gpu-host-${i + 1}`;
    const db = new PostgresDb({ connectionString: o.databaseUrl, poolSize: 2 });
    const holding = new Set<string>(); // GPUs this host's runners hold now
    const held = heldLauncher(db);
    const launcher: Launcher = {
      async launch(request: LaunchRequest) {
        const gpuIds = request.gpuIds ?? [];
        for (const id of gpuIds) {
          if (holding.has(id)) doubleBooked.push(`${workerId}: GPU ${id} (job ${request.job.id})`);
          holding.add(id);
        }
        const runner = await held.launcher.launch(request);
        const entry = held.launched.find((l) => l.job.id === request.job.id)!;
        launched.push({ host: workerId, ...entry });
        void runner.wait().then(() => gpuIds.forEach((id) => holding.delete(id)));
        return runner;
      },
    };
    const scheduler = new Scheduler({
      db,
      launcher,
      config: testConfig(o.databaseUrl, o.storageRoot, {
        HD_WORKER_ID: workerId,
        HD_SLOTS: String(spec.slots),
        HD_POLL_INTERVAL_MS: '100',
        HD_JOB_TYPES: 'gpu_probe,cpu_probe',
      }),
      log: createLogger({ level: 'silent' }),
      gpus: new GpuSlots(spec.gpus, 1),
      resourcesFor: (type) => ({
        memoryMb: 256,
        cpus: 1,
        timeoutMs: 60_000,
        gpu: type === 'gpu_probe',
      }),
    });
    return { workerId, gpus: spec.gpus, scheduler, db };
  });
  await Promise.all(started.map((h) => h.scheduler.start()));
  return { hosts: started, launched, doubleBooked };
}
