-- 00003: the queue operations. The worker changes job state only through these.
--
-- Fencing: claim hands out a fresh lease_token; every later call passes it and is
-- refused (SQLSTATE HDL01, "lease lost") once the job is no longer running under that
-- token with an unexpired lease, so a zombie runner can never overwrite a newer attempt.
-- Every function takes p_now (default now()) so tests move the clock without sleeping.

-- Delay before retry number `attempts + 1`: exponential with a capped exponent, and
-- "equal jitter" (half fixed, half random) so a burst of failures does not retry in step.
create or replace function public.hd_retry_delay(p_attempts integer)
returns interval
language sql volatile
as $$
  select make_interval(secs =>
    least(3600, 5 * power(2, least(greatest(p_attempts, 1) - 1, 12)))
    * (0.5 + random() * 0.5))
$$;

-- Locks the job row and checks the lease. Raises HDL01 with the job's current state in
-- DETAIL so the caller can tell "cancelled" from "taken over".
create or replace function public.hd__lock_leased_job(
  p_job_id uuid, p_lease_token uuid, p_now timestamptz)
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  select * into v_job from public.hd_ingestion_jobs where id = p_job_id for update;
  if not found then
    raise exception 'lease lost: job % does not exist', p_job_id
      using errcode = 'HDL01', detail = json_build_object('status', null)::text;
  end if;
  if v_job.status <> 'running' or v_job.lease_token is distinct from p_lease_token
     or v_job.lease_expires_at <= p_now then
    raise exception 'lease lost: job % is % (%), lease %', p_job_id, v_job.status,
        coalesce(v_job.error_code, 'no error'),
        case when v_job.lease_token is distinct from p_lease_token then 'held by another attempt'
             else 'expired' end
      using errcode = 'HDL01',
            detail = json_build_object('status', v_job.status, 'error_code', v_job.error_code)::text;
  end if;
  return v_job;
end
$$;

-- Claims up to p_limit runnable jobs (or exactly p_job_id, ignoring run_after, for a
-- hand-run `hd-runner run --job-id`). Attempts are counted here so a crash still counts.
create or replace function public.hd_claim_jobs(
  p_worker_id text,
  p_job_types text[] default null,
  p_limit integer default 1,
  p_lease_seconds integer default 60,
  p_job_id uuid default null,
  p_now timestamptz default now())
returns setof public.hd_ingestion_jobs
language plpgsql volatile
as $$
begin
  if p_job_id is null then
    return query
    with picked as (
      select j.id from public.hd_ingestion_jobs j
       where j.status = 'queued' and j.run_after <= p_now
         and (p_job_types is null or j.job_type = any (p_job_types))
       order by j.priority desc, j.run_after, j.id
       limit greatest(p_limit, 0)
       for update skip locked
    )
    update public.hd_ingestion_jobs j
       set status = 'running', attempts = j.attempts + 1, lease_token = gen_random_uuid(),
           lease_expires_at = p_now + make_interval(secs => p_lease_seconds),
           locked_by = p_worker_id, started_at = p_now, finished_at = null,
           progress_percent = 0, progress_step = 'claimed', container_id = null,
           updated_at = p_now
      from picked
     where j.id = picked.id
    returning j.*;
  else
    return query
    with picked as (
      select j.id from public.hd_ingestion_jobs j
       where j.id = p_job_id and j.status = 'queued'
       for update skip locked
    )
    update public.hd_ingestion_jobs j
       set status = 'running', attempts = j.attempts + 1, lease_token = gen_random_uuid(),
           lease_expires_at = p_now + make_interval(secs => p_lease_seconds),
           locked_by = p_worker_id, started_at = p_now, finished_at = null,
           progress_percent = 0, progress_step = 'claimed', container_id = null,
           updated_at = p_now
      from picked
     where j.id = picked.id
    returning j.*;
  end if;
end
$$;

create or replace function public.hd_heartbeat(
  p_job_id uuid, p_lease_token uuid, p_lease_seconds integer default 60,
  p_now timestamptz default now())
returns timestamptz
language plpgsql volatile
as $$
declare
  v_expires timestamptz := p_now + make_interval(secs => p_lease_seconds);
begin
  -- One UPDATE that checks the lease itself; only a refusal pays for the diagnosis.
  update public.hd_ingestion_jobs
     set lease_expires_at = v_expires, updated_at = p_now
   where id = p_job_id and status = 'running' and lease_token = p_lease_token
     and lease_expires_at > p_now;
  if not found then
    perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
    raise exception 'lease lost: job %', p_job_id using errcode = 'HDL01';
  end if;
  return v_expires;
end
$$;

create or replace function public.hd_report_progress(
  p_job_id uuid, p_lease_token uuid, p_percent numeric, p_step text default null,
  p_now timestamptz default now())
returns void
language plpgsql volatile
as $$
begin
  perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
  update public.hd_ingestion_jobs
     set progress_percent = least(100, greatest(0, coalesce(p_percent, progress_percent))),
         progress_step = coalesce(p_step, progress_step), updated_at = p_now
   where id = p_job_id;
end
$$;

-- Completes the job and merges p_stats into debug.stats (the web app reads them there).
create or replace function public.hd_complete_job(
  p_job_id uuid, p_lease_token uuid, p_stats jsonb default '{}'::jsonb,
  p_now timestamptz default now())
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
  update public.hd_ingestion_jobs
     set status = 'completed', finished_at = p_now, updated_at = p_now,
         lease_token = null, lease_expires_at = null,
         progress_percent = 100, progress_step = 'completed',
         error = null, error_code = null, error_details = null,
         debug = jsonb_set(coalesce(debug, '{}'::jsonb), '{stats}',
                           coalesce(debug -> 'stats', '{}'::jsonb) || coalesce(p_stats, '{}'::jsonb))
   where id = p_job_id
  returning * into v_job;
  return v_job;
end
$$;

-- Ends the current attempt with an error: back to queued after a backoff while the
-- error is retryable and attempts remain, otherwise failed. Shared by fail and reap.
create or replace function public.hd__settle_failed_attempt(
  p_job_id uuid, p_error_code text, p_error_message text, p_retryable boolean,
  p_details jsonb, p_now timestamptz)
returns public.hd_ingestion_jobs
language sql volatile
as $$
  update public.hd_ingestion_jobs
     set status = case when p_retryable and attempts < max_attempts then 'queued' else 'failed' end,
         run_after = case when p_retryable and attempts < max_attempts
                          then p_now + public.hd_retry_delay(attempts) else run_after end,
         finished_at = case when p_retryable and attempts < max_attempts then null else p_now end,
         lease_token = null, lease_expires_at = null, updated_at = p_now,
         error = p_error_message, error_code = p_error_code,
         error_details = coalesce(p_details, '{}'::jsonb)
                         || jsonb_build_object('retryable', p_retryable, 'attempt', attempts,
                                               'failed_at', p_now)
   where id = p_job_id
  returning *
$$;

create or replace function public.hd_fail_job(
  p_job_id uuid, p_lease_token uuid, p_error_code text, p_error_message text,
  p_retryable boolean, p_details jsonb default null, p_now timestamptz default now())
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
begin
  perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
  return public.hd__settle_failed_attempt(
    p_job_id, p_error_code, p_error_message, p_retryable, p_details, p_now);
end
$$;

-- Hands a job back untouched (worker shutting down, runner interrupted): queued again at
-- once, and the attempt it used is returned because it never reached a verdict.
create or replace function public.hd_release_job(
  p_job_id uuid, p_lease_token uuid, p_now timestamptz default now())
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
  update public.hd_ingestion_jobs
     set status = 'queued', attempts = greatest(attempts - 1, 0), run_after = p_now,
         lease_token = null, lease_expires_at = null, locked_by = null, started_at = null,
         progress_percent = 0, progress_step = 'released', container_id = null,
         updated_at = p_now
   where id = p_job_id
  returning * into v_job;
  perform pg_notify('hd_jobs_queued', v_job.job_type);
  return v_job;
end
$$;

-- Records the container running the job before it starts, so a restarted scheduler can
-- match containers to jobs.
create or replace function public.hd_set_container_id(
  p_job_id uuid, p_lease_token uuid, p_container_id text, p_now timestamptz default now())
returns void
language plpgsql volatile
as $$
begin
  perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
  update public.hd_ingestion_jobs
     set container_id = p_container_id, updated_at = p_now
   where id = p_job_id;
end
$$;

-- Running jobs whose lease expired (their worker died or lost the database) go back
-- through the same retry rule as a retryable failure.
create or replace function public.hd_reap_expired_leases(p_now timestamptz default now())
returns setof public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_id uuid;
  v_worker text;
begin
  for v_id, v_worker in
    select id, locked_by from public.hd_ingestion_jobs
     where status = 'running' and lease_expires_at <= p_now
     order by lease_expires_at
     for update skip locked
  loop
    return next public.hd__settle_failed_attempt(
      v_id, 'LEASE_EXPIRED',
      format('worker %s stopped renewing the lease (crashed, killed or lost the database)',
             coalesce(v_worker, '?')),
      true, jsonb_build_object('worker_id', v_worker), p_now);
  end loop;
end
$$;

create or replace function public.hd_enqueue_job(
  p_account_id uuid, p_job_type text, p_debug jsonb default '{}'::jsonb,
  p_document_id uuid default null, p_priority integer default 0,
  p_max_attempts integer default 3, p_run_after timestamptz default null)
returns public.hd_ingestion_jobs
language sql volatile
as $$
  insert into public.hd_ingestion_jobs
    (account_id, document_id, job_type, debug, priority, max_attempts, run_after)
  values (p_account_id, p_document_id, p_job_type, coalesce(p_debug, '{}'::jsonb),
          coalesce(p_priority, 0), greatest(coalesce(p_max_attempts, 3), 1),
          coalesce(p_run_after, now()))
  returning *
$$;

-- Seed ops note: "requeue = status queued, error cleared". Attempts restart at 0.
-- A running job must be cancelled first (its runner still holds a lease).
create or replace function public.hd_requeue_job(p_job_id uuid, p_now timestamptz default now())
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  select * into v_job from public.hd_ingestion_jobs where id = p_job_id for update;
  if not found then
    raise exception 'job % not found', p_job_id using errcode = 'HDN01';
  end if;
  if v_job.status = 'running' then
    raise exception 'job % is running; cancel it before requeueing', p_job_id
      using errcode = 'HDS01';
  end if;
  update public.hd_ingestion_jobs
     set status = 'queued', attempts = 0, run_after = p_now, error = null, error_code = null,
         error_details = null, finished_at = null, started_at = null, progress_percent = 0,
         progress_step = null, lease_token = null, lease_expires_at = null, locked_by = null,
         updated_at = p_now
   where id = p_job_id
  returning * into v_job;
  perform pg_notify('hd_jobs_queued', v_job.job_type);
  return v_job;
end
$$;

-- Cancels a queued or running job. Clearing the lease makes the runner's next call
-- fail with "lease lost"; the NOTIFY lets a scheduler stop the runner at once.
create or replace function public.hd_cancel_job(
  p_job_id uuid, p_reason text default 'cancelled by operator',
  p_now timestamptz default now())
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  select * into v_job from public.hd_ingestion_jobs where id = p_job_id for update;
  if not found then
    raise exception 'job % not found', p_job_id using errcode = 'HDN01';
  end if;
  if v_job.status in ('queued', 'running') then
    update public.hd_ingestion_jobs
       set status = 'failed', error_code = 'CANCELLED', error = coalesce(p_reason, 'cancelled'),
           error_details = jsonb_build_object('retryable', false, 'attempt', attempts,
                                              'failed_at', p_now),
           finished_at = p_now, lease_token = null, lease_expires_at = null, updated_at = p_now
     where id = p_job_id
    returning * into v_job;
    perform pg_notify('hd_jobs_cancelled', p_job_id::text);
  end if;
  return v_job;
end
$$;

-- Wake idle schedulers on new work, whoever inserts it (the web app inserts directly).
-- Statement-level: a bulk insert sends one notification per job type, not per row.
create or replace function public.hd__notify_jobs_queued()
returns trigger
language plpgsql
as $$
declare
  v_type text;
begin
  for v_type in select distinct job_type from new_rows where status = 'queued' loop
    perform pg_notify('hd_jobs_queued', v_type);
  end loop;
  return null;
end
$$;

drop trigger if exists hd_ingestion_jobs_notify on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_notify
  after insert on public.hd_ingestion_jobs
  referencing new table as new_rows
  for each statement execute function public.hd__notify_jobs_queued();
