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

export function createLogger(
  options: {
    level?: string;
    name?: string;
    base?: Record<string, unknown>;
    /** Secret values hidden wherever they appear in a line (an error cause, a URL…). */
    secrets?: Iterable<string | undefined>;
  } = {},
  destination?: DestinationStream,
): Logger {
  const redactor = new Redactor(options.secrets ?? []);
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
