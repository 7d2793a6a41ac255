// A job type, an error message or a log line comes from tenants' files and the queue:
// printed raw, its control characters could move the cursor, retitle the window or
// reorder text on an operator's terminal. Everything the CLI prints passes through here.

/** C0 controls but tab and newline, DEL, C1 controls, bidirectional overrides. */
// eslint-disable-next-line no-control-regex -- finding control characters is the point
const UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;
/** The same, and tab, newline: for text that must stay on one line (a table cell). */
// eslint-disable-next-line no-control-regex -- as above
const UNSAFE_IN_LINE = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;

const SHORT: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };
const escape = (c: string) => SHORT[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;

/** `text` with control characters written as JSON writes them (\u001b, \n): valid inside JSON strings too. */
export function escapeControls(text: string): string {
  return text.replace(UNSAFE, escape);
}

/** `text` as one printable line: newlines and tabs escaped as well. */
export function oneLine(text: string): string {
  return text.replace(UNSAFE_IN_LINE, escape);
}

/**
 * Makes every string written to `stream` pass through escapeControls, and `redact` (a
 * secret of this machine's configuration, echoed into a job row, is not shown either).
 */
export function guardOutput(
  stream: NodeJS.WriteStream,
  redact: (text: string) => string = (text) => text,
): void {
  const write = stream.write.bind(stream) as (chunk: unknown, ...rest: unknown[]) => boolean;
  stream.write = ((chunk: unknown, ...rest: unknown[]) =>
    write(
      typeof chunk === 'string' ? escapeControls(redact(chunk)) : chunk,
      ...rest,
    )) as typeof stream.write;
}
