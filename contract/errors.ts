/**
 * Every failure hd-runner records has a code from this table. `retryable` decides
 * whether the queue puts the job back (with backoff, until max_attempts) or fails it.
 */
export const ERROR_CODES = {
  UNKNOWN_JOB_TYPE: { retryable: false, summary: 'no handler for this job type' },
  INVALID_INPUT: { retryable: false, summary: 'the job payload or input file is invalid' },
  UNSUPPORTED_FILE: { retryable: false, summary: 'the input file type is not supported' },
  PATH_OUTSIDE_TENANT: {
    retryable: false,
    summary: "a storage path is not inside the job's account prefix",
  },
  FILE_NOT_FOUND: { retryable: false, summary: 'an input file does not exist in storage' },
  DOWNLOAD_FAILED: { retryable: true, summary: 'an input file could not be downloaded' },
  UPLOAD_FAILED: { retryable: true, summary: 'a file could not be uploaded to storage' },
  OUTPUT_LIMIT_EXCEEDED: {
    retryable: false,
    summary: "the job's uploaded results would exceed its output limit (max_output_bytes)",
  },
  // A stored object is not the size its runner declared (00030): a hostile runner or a bug.
  ARTIFACT_SIZE_MISMATCH: {
    retryable: false,
    summary: 'the object stored for an artifact is not the size its runner declared',
  },
  STORAGE_UNAUTHORIZED: {
    retryable: false,
    summary:
      'storage refused the service-role key (wrong, expired, other project): run hd-runner doctor',
  },
  PROCESSING_TIMEOUT: { retryable: true, summary: 'the job ran past its time limit' },
  OOM_KILLED: { retryable: true, summary: 'the job ran out of memory' },
  CRASHED: { retryable: true, summary: 'the runner exited without reporting a result' },
  LAUNCH_FAILED: { retryable: true, summary: 'the runner could not be started' },
  LEASE_LOST: { retryable: false, summary: 'another attempt or an operator took the job over' },
  LEASE_EXPIRED: { retryable: true, summary: 'the worker stopped renewing its lease' },
  CANCELLED: { retryable: false, summary: 'the job was cancelled' },
  WORKER_SHUTDOWN: { retryable: true, summary: 'the worker shut down during the job' },
  LLM_FAILED: { retryable: true, summary: 'the language model call failed' },
  // Queued again for the start of the next UTC day, when the budget resets, with the attempt
  // refunded: a deferral, not the job's fault (00015's trigger, 00027); at most 7 (00031).
  LLM_BUDGET_EXCEEDED: {
    retryable: true,
    summary: "the account's language-model budget for the day is spent; retried after it resets",
  },
  DATABASE_UNAVAILABLE: { retryable: true, summary: 'the database could not be reached' },
  INTERNAL_ERROR: { retryable: true, summary: 'an unexpected error in hd-runner' },
} as const satisfies Record<string, { retryable: boolean; summary: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERROR_CODES, value);
}

/** The one error class: a code from the table, a readable message, the original as cause. */
export class HdError extends Error {
  override readonly name = 'HdError';
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly details: Record<string, unknown> | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: { cause?: unknown; details?: Record<string, unknown>; retryable?: boolean } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = options.retryable ?? ERROR_CODES[code].retryable;
    this.details = options.details;
  }
}

/** SQLSTATE raised by the queue functions when the caller's lease is no longer held. */
export const SQLSTATE_LEASE_LOST = 'HDL01';

// Connection-level failures worth retrying (class 08, admin shutdown, too many connections).
const RETRYABLE_SQLSTATE = /^(08...|57P0[123]|53300|40001|40P01)$/;
const NETWORK_ERRNO = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND']);
// What node-postgres throws, without a code, when the connection drops under a query, or
// a new one does not open and log in within its connect timeout.
const CONNECTION_LOST =
  /^(Connection terminated|Client has encountered a connection error|timeout expired$)/;

/** Turns anything thrown into an HdError, keeping the original as `cause`. */
export function toHdError(error: unknown): HdError {
  if (error instanceof HdError) return error;
  const err = error as { code?: unknown; message?: unknown; detail?: unknown; name?: unknown };
  const message = typeof err?.message === 'string' ? err.message : String(error);
  if (err?.code === SQLSTATE_LEASE_LOST) {
    const state = parseLeaseDetail(err.detail);
    return state.error_code === 'CANCELLED'
      ? new HdError('CANCELLED', 'the job was cancelled while it ran', { cause: error })
      : new HdError('LEASE_LOST', message, { cause: error });
  }
  if (
    typeof err?.code === 'string' &&
    (RETRYABLE_SQLSTATE.test(err.code) || NETWORK_ERRNO.has(err.code))
  ) {
    return new HdError('DATABASE_UNAVAILABLE', `database: ${message}`, { cause: error });
  }
  if (err?.code === undefined && CONNECTION_LOST.test(message)) {
    return new HdError('DATABASE_UNAVAILABLE', `database: ${message}`, { cause: error });
  }
  return new HdError('INTERNAL_ERROR', message, { cause: error });
}

function parseLeaseDetail(detail: unknown): { status?: string; error_code?: string } {
  if (typeof detail !== 'string') return {};
  try {
    return JSON.parse(detail) as { status?: string; error_code?: string };
  } catch {
    return {};
  }
}

/**
 * Exit codes of `hd-runner run`, so a launcher can tell outcomes apart without
 * reading the database.
 */
export const EXIT_CODES = {
  completed: 0,
  unexpected: 1,
  usage: 2,
  failedPermanent: 10,
  failedRetryable: 11,
  leaseLost: 12,
  interrupted: 13,
  /** The database went out of reach mid-job; a scheduler hands the job back, refunded. */
  databaseLost: 14,
} as const;
