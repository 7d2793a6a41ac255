-- 00037: completing a job again with the lease that completed it returns the completed row.
--
-- A runner's hd_complete_job can commit while its answer is lost: the database restarts or
-- the connection drops between the commit and the reply. The runner saw DATABASE_UNAVAILABLE
-- and could not tell "not completed" from "completed"; it exited as if nothing was recorded,
-- so a completed job's log lacked its "job completed" line and its runner's exit said the
-- database was lost (a chaos run found it). Now the runner calls again once the database is
-- back; this call, from the holder of the lease that completed the job (ended_lease_token),
-- gets the row as it is, stats and next stage untouched: one completion, said once. Any
-- other caller, or a job that ended any other way, is refused as before. Re-runnable.

create or replace function public.hd_complete_job(
  p_job_id uuid, p_lease_token uuid, p_stats jsonb default '{}'::jsonb,
  p_now timestamptz default now())
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
  v_next_stages jsonb;
  v_stage text;
  v_key text;
  v_next_id uuid;
begin
  perform public.hd__assert_runner_job(p_job_id);
  -- Fast path: one UPDATE that checks the lease itself. A separate SELECT … FOR UPDATE
  -- first would write the row twice (measured: about a fifth of the claim+complete cost).
  update public.hd_ingestion_jobs
     set status = 'completed', finished_at = p_now, updated_at = p_now,
         lease_token = null, lease_expires_at = null,
         progress_percent = 100, progress_step = 'completed',
         error = null, error_code = null, error_details = null,
         debug = jsonb_set(coalesce(debug, '{}'::jsonb), '{stats}',
                           coalesce(debug -> 'stats', '{}'::jsonb) || coalesce(p_stats, '{}'::jsonb))
   where id = p_job_id and status = 'running' and lease_token = p_lease_token
     and lease_expires_at > p_now
  returning * into v_job;
  if not found then
    -- This lease completed the job already (a retried call whose first answer was lost).
    -- A NULL token holds nothing.
    select * into v_job from public.hd_ingestion_jobs
     where id = p_job_id and status = 'completed' and p_lease_token is not null
       and ended_lease_token = p_lease_token;
    if found then
      return v_job;
    end if;
    -- Raises HDL01 with the job's state; it cannot pass, the UPDATE above just failed.
    perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
    raise exception 'lease lost: job %', p_job_id using errcode = 'HDL01';
  end if;
  v_next_stages := v_job.debug -> 'next_stages';
  if jsonb_typeof(v_next_stages) = 'array' and jsonb_typeof(v_next_stages -> 0) = 'string' then
    v_stage := v_next_stages ->> 0;
    v_key := format('pipeline:%s:%s', v_job.id, v_stage);
    insert into public.hd_ingestion_jobs
      (account_id, document_id, job_type, debug, priority, max_attempts, run_after,
       idempotency_key)
    values (v_job.account_id, v_job.document_id, v_stage,
            jsonb_build_object(
              'next_stages', v_next_stages - 0,
              'pipeline', jsonb_build_object(
                'root_job_id', coalesce(v_job.debug #>> '{pipeline,root_job_id}', v_job.id::text),
                'parent_job_id', v_job.id)),
            v_job.priority, v_job.max_attempts, p_now, v_key)
    on conflict (idempotency_key) where idempotency_key is not null do nothing
    returning id into v_next_id;
    if v_next_id is null then
      select j.id into v_next_id from public.hd_ingestion_jobs j where j.idempotency_key = v_key;
    end if;
    update public.hd_ingestion_jobs
       set debug = jsonb_set(debug, '{stats,next_job}',
                             jsonb_build_object('id', v_next_id, 'job_type', v_stage))
     where id = p_job_id
    returning * into v_job;
  end if;
  return v_job;
end
$$;

-- The batch says which jobs this call completed: a pipeline job is handed to
-- hd_complete_job only while its row, locked here, is running under the given lease, so one
-- completed before, or by a concurrent call meanwhile (the lock waits for it), is reported
-- as not completed by this call instead of returned as a retry's answer.
create or replace function public.hd_complete_jobs(
  p_job_ids uuid[], p_lease_tokens uuid[], p_stats jsonb default '{}'::jsonb,
  p_now timestamptz default now())
returns table (job_id uuid, completed boolean)
language plpgsql volatile
as $$
declare
  v_done uuid[];
  v_id uuid;
  v_token uuid;
begin
  if cardinality(p_job_ids) is distinct from cardinality(p_lease_tokens) then
    raise exception 'hd_complete_jobs: % job ids but % lease tokens',
      cardinality(p_job_ids), cardinality(p_lease_tokens) using errcode = '22023';
  end if;
  with updated as (
    update public.hd_ingestion_jobs j
       set status = 'completed', finished_at = p_now, updated_at = p_now,
           lease_token = null, lease_expires_at = null,
           progress_percent = 100, progress_step = 'completed',
           error = null, error_code = null, error_details = null,
           debug = jsonb_set(coalesce(j.debug, '{}'::jsonb), '{stats}',
                             coalesce(j.debug -> 'stats', '{}'::jsonb) || coalesce(p_stats, '{}'::jsonb))
      from unnest(p_job_ids, p_lease_tokens) as t(id, tok)
     where j.id = t.id and j.lease_token = t.tok and j.status = 'running'
       and j.lease_expires_at > p_now
       and jsonb_typeof(j.debug -> 'next_stages') is distinct from 'array'
    returning j.id
  )
  select coalesce(array_agg(u.id), '{}') into v_done from updated u;
  for v_id, v_token in
    select t.id, t.tok
      from unnest(p_job_ids, p_lease_tokens) as t(id, tok)
      join public.hd_ingestion_jobs j on j.id = t.id
     where not (t.id = any (v_done))
       and jsonb_typeof(j.debug -> 'next_stages') = 'array'
  loop
    perform 1 from public.hd_ingestion_jobs
     where id = v_id and status = 'running' and lease_token = v_token
       for update;
    continue when not found;
    begin
      perform public.hd_complete_job(v_id, v_token, p_stats, p_now);
      v_done := v_done || v_id;
    exception when sqlstate 'HDL01' then
      null; -- lease lost: reported as not completed below
    end;
  end loop;
  return query
    select t.id, t.id = any (v_done) from unnest(p_job_ids) as t(id);
end
$$;

select public.hd__lock_down_functions();
