import { configToEnv, type Config } from '../../control-plane/config.ts';
import type { ControlPlaneDb } from '../../control-plane/db/transport.ts';
import type { Logger } from '../../control-plane/logger.ts';
import { openDb } from '../../control-plane/open.ts';
import { ProcessLauncher } from '../../scheduler/launchers/process.ts';
import { Scheduler } from '../../scheduler/scheduler.ts';
import { configFrom, loggerFor, stringOption, type Command } from '../command.ts';

// Runners inherit only these from the scheduler's own environment, plus hd-runner's config.
const INHERITED_ENV = ['PATH', 'HOME', 'TMPDIR', 'LANG', 'TZ', 'NODE_EXTRA_CA_CERTS'];

/** A scheduler wired to the configured launcher; runner output goes to `onOutput`. */
export function createScheduler(
  config: Config,
  db: ControlPlaneDb,
  log: Logger,
  env: Record<string, string | undefined>,
  onOutput?: (jobId: string, line: string) => void,
): Scheduler {
  const runnerEnv: Record<string, string> = {};
  for (const name of INHERITED_ENV) if (env[name]) runnerEnv[name] = env[name];
  const launcher = new ProcessLauncher({ env: { ...runnerEnv, ...configToEnv(config) }, onOutput });
  return new Scheduler({ db, launcher, config, log });
}

export const schedulerCommand: Command = {
  name: 'scheduler',
  summary: 'claim queued jobs and run each in its own runner (the systemd service)',
  usage: `hd-runner scheduler [--slots N] [--job-types a,b]

Runs until SIGTERM/SIGINT: claims jobs into N slots (LISTEN/NOTIFY wake-ups, polling
as fallback), starts one runner per job, records crashes and timeouts, reaps expired
leases. On SIGTERM it stops claiming, lets running jobs finish for
HD_SHUTDOWN_GRACE_MS, then hands the rest back to the queue. A second signal exits at once.`,
  options: { slots: { type: 'string' }, 'job-types': { type: 'string' } },
  async run(args, env) {
    const config = configFrom(env, {
      HD_SLOTS: stringOption(args, 'slots'),
      HD_JOB_TYPES: stringOption(args, 'job-types'),
    });
    const log = loggerFor(config, 'scheduler');
    const db = openDb(config);
    const scheduler = createScheduler(config, db, log, env, (_jobId, line) =>
      process.stderr.write(`${line}\n`),
    );
    await scheduler.start();
    await new Promise<void>((resolve) => {
      const onSignal = (signal: NodeJS.Signals) => {
        log.info({ signal }, 'shutting down');
        process.once(signal, () => process.exit(130));
        resolve();
      };
      process.once('SIGTERM', onSignal);
      process.once('SIGINT', onSignal);
    });
    try {
      await scheduler.stop();
    } finally {
      await db.close();
    }
    return 0;
  },
};
