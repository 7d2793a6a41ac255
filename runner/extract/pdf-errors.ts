import { HdError } from '../../contract/errors.ts';

// The two ways a PDF is refused as a whole, one sentence each for the user; the readers'
// own words stay in the cause, for the log.

export function passwordProtected(name: string, cause?: unknown): HdError {
  return new HdError(
    'UNSUPPORTED_FILE',
    `${name}: the PDF is password-protected; upload a copy without a password`,
    { cause },
  );
}

export function damagedPdf(name: string, cause?: unknown): HdError {
  return new HdError(
    'INVALID_INPUT',
    `${name}: the file is not a readable PDF; it may be truncated or damaged`,
    { cause, details: { pdf: 'damaged' } },
  );
}

export function isDamagedPdf(error: unknown): boolean {
  return error instanceof HdError && error.details?.pdf === 'damaged';
}
