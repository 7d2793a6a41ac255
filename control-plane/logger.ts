import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

/**
 * Paths pino blanks in every line. The config object, env maps and anything named like
 * a credential: a secret must never reach a log, whatever object a caller logs.
 */
export const REDACTED_PATHS = [
  'config.HD_DATABASE_URL',
  'env',
  'lease_token',
  '*.lease_token',
  'leaseToken',
  '*.leaseToken',
  'password',
  '*.password',
  'apiKey',
  '*.apiKey',
  'serviceRoleKey',
  '*.serviceRoleKey',
  'connectionString',
  '*.connectionString',
  'headers.authorization',
  '*.headers.authorization',
];

export function createLogger(
  options: { level?: string; name?: string; base?: Record<string, unknown> } = {},
  destination?: DestinationStream,
): Logger {
  return pino(
    {
      level: options.level ?? 'info',
      name: options.name ?? 'hd-runner',
      base: { pid: process.pid, ...options.base },
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination ?? pino.destination({ dest: 2, sync: true }),
  );
}
