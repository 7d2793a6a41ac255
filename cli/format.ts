import type { Job } from '../contract/jobs.ts';
import { oneLine } from './terminal-safe.ts';

/** A plain text table: left-aligned columns, header underlined. */
export function formatTable(rows: readonly Record<string, unknown>[], columns?: string[]): string {
  const cols = columns ?? Object.keys(rows[0] ?? {});
  const cells = rows.map((row) => cols.map((c) => cell(row[c])));
  const widths = cols.map((c, i) => Math.max(c.length, ...cells.map((r) => r[i]!.length)));
  const line = (values: string[]) =>
    values
      .map((v, i) => v.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [line(cols), line(widths.map((w) => '-'.repeat(w))), ...cells.map(line)].join('\n');
}

/** A cell stays on its line: newlines, tabs and other controls are shown escaped. */
function cell(value: unknown): string {
  if (value === null || value === undefined) return '';
  if (value instanceof Date) return value.toISOString().replace('T', ' ').slice(0, 19);
  if (typeof value === 'object') return oneLine(JSON.stringify(value));
  return oneLine(String(value));
}

/** The columns an operator wants in a job list. */
export function jobSummary(job: Job): Record<string, unknown> {
  const stats = (job.debug?.stats ?? {}) as Record<string, unknown>;
  return {
    id: job.id,
    account: job.account_id.slice(0, 8),
    type: job.job_type,
    status: job.status,
    attempts: `${job.attempts}/${job.max_attempts}`,
    progress:
      job.status === 'running' ? `${job.progress_percent}% ${job.progress_step ?? ''}`.trim() : '',
    created: job.created_at,
    result:
      job.status === 'failed' || job.error_code
        ? `${job.error_code}: ${truncate(job.error ?? '', 60)}`
        : summarizeStats(stats),
  };
}

export function summarizeStats(stats: Record<string, unknown>): string {
  const keys = [
    'lines',
    'inserted',
    'updated',
    'unchanged',
    'invalid',
    'pages',
    'chunks',
    'interpreted',
    'nodes',
    'edges',
    'synthesized',
  ];
  return keys
    .filter((k) => typeof stats[k] === 'number')
    .map((k) => `${k}=${String(stats[k])}`)
    .join(' ');
}

function truncate(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
