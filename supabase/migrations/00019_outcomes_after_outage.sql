-- 00019: no attempt spent because the database, not the job, was away.
--
-- A runner that lost the database exits and its scheduler hands the job back once the
-- database answers again. When the outage outlasted the lease, two things spent the
-- attempt anyway: the hand-back was refused (the lease had expired) and the reaper, the
-- first to run after the outage, settled the job as LEASE_EXPIRED. Now:
--
-- 1. A lease that expired but that nobody else has taken (the token is still the job's)
--    is still its holder's: heartbeat, release and fail accept it. Fencing is unchanged:
--    a claim or a reap replaces or clears the token, and from then on every call of the
--    old holder is refused, so a late outcome never touches a newer attempt.
-- 2. Schedulers report in (hd_private.scheduler_beats, written by the reaper call itself),
--    and the reaper waits before it settles a lease that expired while the lease holder's
--    scheduler was cut off from the database: until that scheduler has been back long
--    enough to record its outcomes and let its live runners heartbeat again, or, if it
--    does not come back, a lease length after it was last heard from (a dead host). A
--    reaper that was itself cut off when the lease expired (the database was down for
--    everyone) first gives every scheduler the time to report back.

create table if not exists hd_private.scheduler_beats (
  worker_id text primary key,
  -- The last call of this scheduler's reaper.
  seen_at timestamptz not null,
  -- How often it calls (its HD_REAP_INTERVAL_MS) and its runners' lease length.
  every interval not null,
  lease interval not null,
  -- The last time it was not heard from for more than two calls: from when, until when.
  silent_from timestamptz,
  back_at timestamptz
);
revoke all on hd_private.scheduler_beats from public;

-- 00010's lease check without the expiry: the job's current lease, expired or not (no one
-- else holds the job while its token is current). Raises HDL01 as hd__lock_leased_job.
create or replace function public.hd__lock_current_lease(
  p_job_id uuid, p_lease_token uuid, p_now timestamptz)
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  perform public.hd__assert_runner_job(p_job_id);
  select * into v_job from public.hd_ingestion_jobs where id = p_job_id for update;
  if found and p_lease_token is not null and v_job.status = 'running'
     and v_job.lease_token = p_lease_token then
    return v_job;
  end if;
  -- Refused: hd__lock_leased_job raises the same HDL01 (with the state for the last holder).
  return public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
end
$$;

-- 00010's heartbeat; an expired lease that is still the job's is renewed (a runner that
-- outlived an outage of less than two thirds of its lease carries on).
create or replace function public.hd_heartbeat(
  p_job_id uuid, p_lease_token uuid, p_lease_seconds integer default 60,
  p_now timestamptz default now())
returns timestamptz
language plpgsql volatile
as $$
declare
  -- Capped: a runner must not make its lease outlive it (the reaper would never come).
  v_expires timestamptz := p_now + make_interval(secs => least(p_lease_seconds, 3600));
begin
  perform public.hd__assert_runner_job(p_job_id);
  update public.hd_ingestion_jobs
     set lease_expires_at = v_expires, updated_at = p_now
   where id = p_job_id and status = 'running' and lease_token = p_lease_token;
  if not found then
    perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
    raise exception 'lease lost: job %', p_job_id using errcode = 'HDL01';
  end if;
  return v_expires;
end
$$;

-- 00003's fail, on the current lease (expired or not).
create or replace function public.hd_fail_job(
  p_job_id uuid, p_lease_token uuid, p_error_code text, p_error_message text,
  p_retryable boolean, p_details jsonb default null, p_now timestamptz default now())
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
begin
  perform public.hd__lock_current_lease(p_job_id, p_lease_token, p_now);
  return public.hd__settle_failed_attempt(
    p_job_id, p_error_code, p_error_message, p_retryable, p_details, p_now);
end
$$;

-- 00003's release, on the current lease (expired or not): the attempt is refunded.
create or replace function public.hd_release_job(
  p_job_id uuid, p_lease_token uuid, p_now timestamptz default now())
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  perform public.hd__lock_current_lease(p_job_id, p_lease_token, p_now);
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

-- (The first version of this file took the beat row itself; gone where it ran.)
drop function if exists public.hd__cut_off_at(hd_private.scheduler_beats, timestamptz, timestamptz);

-- Whether the scheduler `p_worker` was cut off from the database at p_at: its last
-- silence covers p_at, or it is silent now and was last heard from before p_at.
create or replace function public.hd__cut_off_at(
  p_worker text, p_at timestamptz, p_now timestamptz)
returns boolean
language sql stable
as $$
  select coalesce((select (b.silent_from < p_at and p_at <= b.back_at)
                       or (b.seen_at < p_at and b.seen_at < p_now - 2 * b.every)
                     from hd_private.scheduler_beats b where b.worker_id = p_worker), false)
$$;

-- Until when the reaper leaves a lease that expired at p_expired_at alone (null: reap it).
create or replace function public.hd__reap_not_before(
  p_owner text, p_reaper text, p_expired_at timestamptz, p_now timestamptz)
returns timestamptz
language sql stable
as $$
  select greatest(
    -- The holder's scheduler was cut off when the lease expired. Back: it records its
    -- outcomes and its live runners heartbeat (every third of a lease) within this time.
    -- Still silent: it may be cut off alone, or dead; after a lease it counts as dead.
    (select case when o.seen_at >= p_now - 2 * o.every
                 then o.back_at + greatest(3 * o.every, o.lease / 2)
                 else o.seen_at + o.lease end
       from hd_private.scheduler_beats o
      where o.worker_id = p_owner and public.hd__cut_off_at(p_owner, p_expired_at, p_now)),
    -- The reaper itself was cut off then: every other scheduler may be coming back too.
    (select r.back_at + 3 * r.every
       from hd_private.scheduler_beats r
      where r.worker_id = p_reaper and r.silent_from < p_expired_at
        and p_expired_at <= r.back_at))
$$;

drop function if exists public.hd_reap_expired_leases(timestamptz);

-- Running jobs whose lease expired (their worker died or lost the database) go back
-- through the same retry rule as a retryable failure, unless the lease holder's scheduler
-- may still record the outcome (see above). A scheduler passes its worker id, how often
-- it calls (seconds) and its lease length: the call is also its report-in.
create or replace function public.hd_reap_expired_leases(
  p_now timestamptz default now(), p_worker_id text default null,
  p_every_seconds integer default null, p_lease_seconds integer default null)
returns setof public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_id uuid;
  v_worker text;
begin
  if p_worker_id is not null then
    insert into hd_private.scheduler_beats as b (worker_id, seen_at, every, lease)
    values (p_worker_id, p_now, make_interval(secs => greatest(coalesce(p_every_seconds, 15), 1)),
            make_interval(secs => greatest(coalesce(p_lease_seconds, 60), 1)))
    on conflict (worker_id) do update
       set silent_from = case when b.seen_at < p_now - 2 * b.every then b.seen_at
                              else b.silent_from end,
           back_at = case when b.seen_at < p_now - 2 * b.every then p_now else b.back_at end,
           seen_at = greatest(b.seen_at, excluded.seen_at),
           every = excluded.every, lease = excluded.lease;
  end if;
  for v_id, v_worker in
    select j.id, j.locked_by from public.hd_ingestion_jobs j
     where j.status = 'running' and j.lease_expires_at <= p_now
       and coalesce(public.hd__reap_not_before(j.locked_by, p_worker_id, j.lease_expires_at, p_now)
                    <= p_now, true)
     order by j.lease_expires_at
     for update of j skip locked
  loop
    return next public.hd__settle_failed_attempt(
      v_id, 'LEASE_EXPIRED',
      format('worker %s stopped renewing the lease (crashed, killed or lost the database)',
             coalesce(v_worker, '?')),
      true, jsonb_build_object('worker_id', v_worker), p_now);
  end loop;
end
$$;

select public.hd__lock_down_functions();
