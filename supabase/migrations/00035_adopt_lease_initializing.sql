-- 00035: a runner's adoption of its handed-over lease says `initializing` (issue 13). A
-- runner's first call is hd_adopt_lease; its next was hd_report_progress(0, 'initializing'),
-- a round trip and a commit of its own before the job's first real call (5-8 ms of a warm
-- 1-page job's ~130-200 ms on a busy 2-core host, bench/RESULTS.md). The adoption is that
-- moment: the runner holds its job and sets up. The step moves from the claim's `claimed`
-- only (a step already further on stays), at the claim's 0 %; the runner reports
-- `initializing` itself when the row it adopted does not say so (an older database, or a
-- job it claimed itself). One UPDATE that renews the lease as hd_heartbeat does and
-- returns the row, instead of hd_heartbeat and a SELECT: one statement fewer.
-- Re-runnable.

create or replace function public.hd_adopt_lease(
  p_job_id uuid, p_lease_token uuid, p_lease_seconds integer default 60,
  p_now timestamptz default now())
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  perform public.hd__assert_runner_job(p_job_id);
  update public.hd_ingestion_jobs
     -- Capped as hd_heartbeat's: a runner must not make its lease outlive it.
     set lease_expires_at = p_now + make_interval(secs => least(p_lease_seconds, 3600)),
         updated_at = p_now,
         progress_step = case when progress_step = 'claimed' then 'initializing'
                              else progress_step end
   where id = p_job_id and status = 'running' and lease_token = p_lease_token
  returning * into v_job;
  if not found then
    -- Says why (ended, cancelled, another attempt's) as hd_heartbeat does.
    perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
    raise exception 'lease lost: job %', p_job_id using errcode = 'HDL01';
  end if;
  return v_job;
end
$$;

-- create or replace reset its security definer and search_path: set again for every hd_
-- function, and hd_adopt_lease stays callable by runners (00014's list).
select public.hd__lock_down_functions();
