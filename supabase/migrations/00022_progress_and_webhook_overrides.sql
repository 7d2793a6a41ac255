-- 00022: progress steps of the worker concept with a percent that only rises within an
-- attempt. Re-runnable.

-- A runner's steps: initializing, downloading, processing_pages:i/n (pages of a file),
-- processing:i/n (other units) or processing (no total known), postprocessing. `claimed`,
-- `released` and `completed` are set by the queue functions, never reported.
create or replace function public.hd__valid_progress_step(p_step text)
returns boolean
language sql immutable
as $$
  select p_step ~ '^(initializing|downloading|processing|postprocessing)$'
      or (p_step ~ '^processing(_pages)?:[0-9]{1,9}/[0-9]{1,9}$'
          and split_part(split_part(p_step, ':', 2), '/', 1)::integer
              <= split_part(p_step, '/', 2)::integer)
$$;

-- The percent never goes down within an attempt: a report below the recorded percent is
-- stale (reports of pages OCRed in parallel can arrive out of order) and is ignored whole,
-- its step too; it is not an error, a job never fails over its progress bar. A claim sets
-- 0 again, so each attempt starts over. An unknown step is refused (22023), naming it.
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
  update public.hd_ingestion_jobs
     set progress_percent = least(100, greatest(0, coalesce(p_percent, progress_percent))),
         progress_step = coalesce(p_step, progress_step), updated_at = p_now
   where id = p_job_id
     and coalesce(least(100, greatest(0, p_percent)), progress_percent) >= progress_percent;
end
$$;

select public.hd__lock_down_functions();

notify pgrst, 'reload schema';
