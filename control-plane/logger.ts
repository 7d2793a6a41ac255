import { pino, type Logger, type DestinationStream } from 'pino';
import { Redactor } from './redact.ts';

export type { Logger };

// Keys whose values are credentials wherever they appear in a logged object (pino redacts
// by path, so each is listed at the top level and two levels down).
const SECRET_KEYS = [
  'lease_token',
  'ended_lease_token',
  'leaseToken',
  'HD_LEASE_TOKEN',
  'password',
  'apiKey',
  'api_key',
  'apikey', // supabase-js sends the key in this header too
  'serviceRoleKey',
  'service_role_key',
  'SUPABASE_SERVICE_ROLE_KEY',
  'HD_LLM_API_KEY',
  'HD_TRANSCRIBE_API_KEY',
  'HD_DATABASE_URL',
  'HD_RUNNER_DATABASE_URL',
  'HD_LISTEN_DATABASE_URL',
  'HD_RUNNER_JWT_PRIVATE_KEY',
  'SUPABASE_JWT_SECRET',
  'HD_JOB_TOKEN',
  'connectionString',
  'authorization',
  'Authorization',
  'env',
];

/**
 * Paths pino blanks in every line: a secret must never reach a log, whatever object a
 * caller logs (the config, an env map, a job row, request headers).
 */
export const REDACTED_PATHS = SECRET_KEYS.flatMap((key) => [key, `*.${key}`, `*.*.${key}`]);

export interface LoggerOptions {
  level?: string;
  name?: string;
  base?: Record<string, unknown>;
  /** Secret values hidden wherever they appear in a line (an error cause, a URL…). */
  secrets?: Iterable<string | undefined>;
}

export function createLogger(options: LoggerOptions = {}, destination?: DestinationStream): Logger {
  return pinoLogger(options, new Redactor(options.secrets ?? []), destination);
}

/**
 * A logger made before the settings it will log under (a warm runner's, before its job):
 * pino's set-up of the redacted paths (fast-redact compiles them: 3-6 ms of CPU in
 * profiles of a warm runner's 200-page job, issue 13) is done now, once. The function it
 * returns gives the logger for those settings: where name and base bindings are the same,
 * a child of this one at their level, their secrets hidden from then on by both; else a
 * new logger.
 */
export function prepareLogger(
  options: LoggerOptions,
  destination?: DestinationStream,
): (options: LoggerOptions) => Logger {
  const redactor = new Redactor(options.secrets ?? []);
  const logger = pinoLogger(options, redactor, destination);
  const bindings = JSON.stringify([options.name, options.base]);
  return (later) => {
    if (JSON.stringify([later.name, later.base]) !== bindings)
      return createLogger(later, destination);
    redactor.add(later.secrets ?? []);
    return logger.child({}, { level: later.level ?? 'info' });
  };
}

function pinoLogger(
  options: LoggerOptions,
  redactor: Redactor,
  destination: DestinationStream | undefined,
): Logger {
  return pino(
    {
      // By value, after serialisation: key names cannot catch a key echoed in a message.
      hooks: { streamWrite: (line) => redactor.text(line) },
      level: options.level ?? 'info',
      name: options.name ?? 'hd-runner',
      base: { pid: process.pid, ...options.base },
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination ?? pino.destination({ dest: 2, sync: true }),
  );
}
