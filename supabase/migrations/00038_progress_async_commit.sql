-- 00038: a progress report commits without waiting for its WAL flush (issue 13).
--
-- A job's own calls wait for the reports queued before them (runner/progress-sender.ts),
-- so each report's commit was on the job's path: 3-6 ms of WAL flush on a VM's disk, for
-- every phase (downloading, processing, pages, postprocessing) of an extract_text job.
-- A report is advice to whoever watches the job: losing the last ones to a database crash
-- leaves an older step and percent on the row, and the job itself is settled by its lease
-- (reaped, retried) as after any crash. The next synchronous commit (the chunk write, the
-- completion, a heartbeat) flushes the reports before it, so the order stays. Only this
-- transaction's commit is asynchronous (set_config(…, true)); the rest is 00022's. Re-runnable.

create or replace function public.hd_report_progress(
  p_job_id uuid, p_lease_token uuid, p_percent numeric, p_step text default null,
  p_now timestamptz default now())
returns void
language plpgsql volatile
as $$
begin
  if p_step is not null and not public.hd__valid_progress_step(p_step) then
    raise exception 'hd_report_progress: unknown progress step %; expected initializing, downloading, processing_pages:i/n, processing:i/n, processing or postprocessing (i <= n)',
      left(p_step, 80) using errcode = '22023';
  end if;
  perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
  perform set_config('synchronous_commit', 'off', true);
  update public.hd_ingestion_jobs
     set progress_percent = least(100, greatest(0, coalesce(p_percent, progress_percent))),
         progress_step = coalesce(p_step, progress_step), updated_at = p_now
   where id = p_job_id
     and coalesce(least(100, greatest(0, p_percent)), progress_percent) >= progress_percent;
end
$$;

select public.hd__lock_down_functions();
