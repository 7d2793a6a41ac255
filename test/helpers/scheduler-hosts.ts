import { execa, type ResultPromise } from 'execa';
import { configToEnv } from '../../control-plane/config.ts';
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
