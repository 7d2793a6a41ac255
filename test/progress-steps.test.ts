import { beforeAll, describe, expect, it } from 'vitest';
import { ACCOUNT_A } from './helpers/runtime.ts';
import { textPdf } from './fixtures/documents.ts';
import { extractHarness } from './fixtures/extract-harness.ts';

// Real PostgreSQL, fs storage, a PDF made by the suite, extract_text run in-process. A
// trigger records every change of the job's progress as the database saw it, so the
// sequence is what a web UI subscribed to the row would have seen (no sampling, no timing).
const h = extractHarness();

beforeAll(async () => {
  await h.db.sql.query(`
    create table test_progress_seen (
      id bigserial primary key, job_id uuid, step text, percent numeric);
    create function test_record_progress() returns trigger language plpgsql as $$
    begin
      insert into public.test_progress_seen (job_id, step, percent)
      values (new.id, new.progress_step, new.progress_percent);
      return null;
    end $$;
    create trigger test_record_progress after update on hd_ingestion_jobs for each row
      when (old.progress_step is distinct from new.progress_step
            or old.progress_percent is distinct from new.progress_percent)
      execute function test_record_progress();`);
});

async function progressSeen(jobId: string) {
  const { rows } = await h.db.sql.query<{ step: string; percent: string }>(
    `select step, percent from test_progress_seen where job_id = $1 order by id`,
    [jobId],
  );
  return rows.map((r) => ({ step: r.step, percent: Number(r.percent) }));
}

describe('progress steps of a run', () => {
  // Claimed by the runner itself (`run --job-id`), which reports `initializing`; or by a
  // scheduler that hands the lease over, whose adoption says `initializing` (00035).
  it.each([
    ['claimed by the runner', false],
    ['handed over', true],
  ])(
    'extract_text goes through the concept steps with a percent that never drops (%s)',
    async (_, handedOver) => {
      const doc = await h.addDocument(ACCOUNT_A, [
        { name: 'three.pdf', content: textPdf(['Seite eins.', 'Seite zwei.', 'Seite drei.']) },
      ]);
      const reportedSteps: (string | undefined)[] = [];
      const outcome = await h.extract(doc, { handedOver, reportedSteps });
      expect(outcome.outcome).toBe('completed');
      if (outcome.outcome !== 'completed') return;
      const seen = await progressSeen(outcome.job.id);

      // Phases in order, repeats folded (counters within a phase are rate-limited).
      const phases = seen
        .map((s) => s.step.split(':')[0])
        .filter((phase, i, all) => phase !== all[i - 1]);
      expect(phases).toEqual([
        'claimed',
        'initializing',
        'downloading',
        'processing',
        'processing_pages',
        'postprocessing',
        'completed',
      ]);
      expect(seen.find((s) => s.step.startsWith('processing:'))?.step).toBe('processing:0/1');
      // A text layer on every page: all three read in one pass.
      expect(seen.filter((s) => s.step.startsWith('processing_pages:')).at(-1)).toEqual({
        step: 'processing_pages:3/3',
        percent: 90,
      });
      expect(seen.find((s) => s.step === 'postprocessing')?.percent).toBe(90);
      expect(seen.at(-1)).toEqual({ step: 'completed', percent: 100 });
      // Handed over, `initializing` came with the adoption: no report of the runner's own.
      expect(reportedSteps[0]).toBe(handedOver ? 'downloading' : 'initializing');
      const percents = seen.map((s) => s.percent);
      expect(percents).toEqual([...percents].sort((a, b) => a - b));
    },
  );
});
