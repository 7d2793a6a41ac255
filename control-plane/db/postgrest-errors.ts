import { HdError } from '../../contract/errors.ts';

/**
 * An SQL error raised inside a queue function, as PostgREST reports it: the SQLSTATE in
 * `code`, DETAIL in `detail` — the fields toHdError reads from a pg error, so both
 * transports classify alike (HDL01 → LEASE_LOST/CANCELLED, HDN01, HDS01, 40001…).
 */
export class PostgrestCallError extends Error {
  override readonly name = 'PostgrestCallError';
  readonly code: string;
  readonly detail: string | undefined;
  readonly hint: string | undefined;
  readonly status: number;

  constructor(fn: string, error: PostgrestErrorBody, status: number) {
    super(error.message || `${fn} failed with HTTP ${status}`);
    this.code = error.code ?? '';
    this.detail = error.details ?? undefined;
    this.hint = error.hint ?? undefined;
    this.status = status;
  }
}

interface PostgrestErrorBody {
  message: string;
  code?: string | null;
  details?: string | null;
  hint?: string | null;
}

// PGRST000-003: PostgREST cannot reach the database or is (re)loading its schema cache.
const UNAVAILABLE_CODE = /^PGRST00[0-3]$/;
const UNAVAILABLE_STATUS = new Set([0, 502, 503, 504, 520, 522, 524]);

/** Transport failures become HdErrors; SQL errors keep their SQLSTATE (see above). */
export function classifyPostgrestError(
  fn: string,
  error: PostgrestErrorBody,
  status: number,
): Error {
  const code = error.code ?? '';
  if (UNAVAILABLE_STATUS.has(status) || UNAVAILABLE_CODE.test(code)) {
    return new HdError('DATABASE_UNAVAILABLE', `supabase: ${fn}: ${error.message}`, {
      cause: new PostgrestCallError(fn, error, status),
    });
  }
  if (code === 'PGRST202') {
    return new HdError(
      'INTERNAL_ERROR',
      `supabase: ${fn} is not known to PostgREST: apply the migrations (hd-runner migrate) and reload its schema cache (NOTIFY pgrst, 'reload schema')`,
      { cause: new PostgrestCallError(fn, error, status), retryable: false },
    );
  }
  if (status === 401 || /^PGRST30\d$/.test(code)) {
    return new HdError(
      'INTERNAL_ERROR',
      `supabase: ${fn}: the API refused SUPABASE_SERVICE_ROLE_KEY (${error.message})`,
      { cause: new PostgrestCallError(fn, error, status), retryable: false },
    );
  }
  return new PostgrestCallError(fn, error, status);
}
