-- 00021: the queue's hot path (issue 18). What a claim and a completion cost beyond the
-- textbook SKIP LOCKED loop, measured in bench/queue.ts, and cut here (each item at its
-- code; docs/scheduling.md sums them up):
--
-- * hd_claim_leases: the claim the scheduler makes. Returns the columns a scheduler needs
--   to start and fence a runner (not the whole row: the runner reads its job itself through
--   hd_adopt_lease), and claims from the only queued group in one statement, without the
--   fair pick, when there is no one to be fair to and no limit to hold. hd_claim_jobs keeps
--   its signature and whole rows (a hand-run `hd-runner run --job-id`, other callers) and
--   claims through it.
-- * Index entries (the lease-expiry index) and HOT heartbeats (fillfactor).
-- * Batch counts (00013) only for statements that touch a batch's jobs.
-- Re-runnable.

drop function if exists public.hd_claim_leases(text, text[], integer, integer, integer, timestamptz);

-- 00012's fair claim (the rule, the limits and their locks are described there).
create or replace function public.hd_claim_leases(
  p_worker_id text,
  p_job_types text[] default null,
  p_limit integer default 1,
  p_lease_seconds integer default 60,
  p_account_max_running integer default null,
  p_now timestamptz default now())
returns table (
  id uuid, account_id uuid, document_id uuid, job_type text, attempts integer,
  max_attempts integer, priority integer, debug jsonb, run_after timestamptz,
  started_at timestamptz, lease_token uuid, lease_expires_at timestamptz)
language plpgsql volatile
as $$
#variable_conflict use_column
declare
  v_accounts uuid[];
  v_types text[];
  v_limited boolean;
  v_one_group boolean;
  v_skipped_groups bigint[] := '{}';
  v_full_accounts uuid[] := '{}';
  v_full_types text[] := '{}';
  v_locked text[] := '{}';
  v_claimed integer := 0;
  v_pick record;
  v_account uuid;
  v_type text;
  v_count bigint;
  v_take integer;
  v_got integer;
begin
  if coalesce(p_limit, 0) <= 0 then
    return;
  end if;

  select coalesce(array_agg(g.account_id), '{}'), coalesce(array_agg(g.job_type), '{}'),
         coalesce(bool_or(l.max_running is not null or t.max_running is not null), false)
    into v_accounts, v_types, v_limited
    from public.hd__queued_groups() g
    left join public.hd_account_limits l on l.account_id = g.account_id
    left join public.hd_job_type_limits t on t.job_type = g.job_type
   where p_job_types is null or g.job_type = any (p_job_types);
  -- One queued group and no limit: nobody to be fair to, nothing to count.
  v_one_group := cardinality(v_accounts) = 1 and not v_limited and p_account_max_running is null;

  while v_claimed < p_limit loop
    if v_one_group then
      v_account := v_accounts[1];
      v_type := v_types[1];
      v_take := p_limit;
    else
      -- The group to serve next: lowest running/weight, then round robin, then its next
      -- job's order; and the lowest ratio among the other accounts (how far it may go).
      with c as (
        select g.ord, g.account_id, g.job_type,
               coalesce(l.max_running, p_account_max_running) as account_max,
               t.max_running as type_max, coalesce(l.weight, 1) as weight, running.n,
               running.n / coalesce(l.weight, 1) as ratio, running.last_started,
               head.priority, head.run_after, head.id
          from unnest(v_accounts, v_types) with ordinality as g(account_id, job_type, ord)
          left join public.hd_account_limits l on l.account_id = g.account_id
          left join public.hd_job_type_limits t on t.job_type = g.job_type
         cross join lateral (
           select count(*) as n, max(r.started_at) as last_started from public.hd_ingestion_jobs r
            where r.status = 'running' and r.account_id = g.account_id) running
         cross join lateral (
           select q.priority, q.run_after, q.id from public.hd_ingestion_jobs q
            where q.status = 'queued' and q.account_id = g.account_id
              and q.job_type = g.job_type and q.run_after <= p_now
            order by q.priority desc, q.run_after, q.id limit 1) head
         where not (g.ord = any (v_skipped_groups))
           and not (g.account_id = any (v_full_accounts))
           and not (g.job_type = any (v_full_types))
           and (coalesce(l.max_running, p_account_max_running) is null
                or running.n < coalesce(l.max_running, p_account_max_running))
      )
      select c.*, (select min(o.ratio) from c o where o.account_id <> c.account_id) as next_ratio
        into v_pick
        from c
       order by c.ratio, c.last_started nulls first, c.priority desc, c.run_after, c.id
       limit 1;
      exit when not found;
      v_account := v_pick.account_id;
      v_type := v_pick.job_type;

      -- How many to take from this group in one statement: until its ratio passes the
      -- next account's (all that is asked for when no other account waits), within limits.
      v_take := p_limit - v_claimed;
      if v_pick.next_ratio is not null then
        v_take := least(v_take, greatest(1,
          ceil(round((v_pick.next_ratio - v_pick.ratio) * v_pick.weight, 6))::integer));
      end if;

      -- Under a limit: lock, then count again (a new statement sees the claims that the
      -- lock's previous holder committed).
      if v_pick.account_max is not null then
        if not ('a:' || v_account = any (v_locked)) then
          if not public.hd__take_claim_lock('a:' || v_account, cardinality(v_locked) > 0) then
            v_full_accounts := v_full_accounts || v_account;
            continue;
          end if;
          v_locked := v_locked || ('a:' || v_account);
        end if;
        select count(*) into v_count from public.hd_ingestion_jobs r
         where r.status = 'running' and r.account_id = v_account;
        if v_count >= v_pick.account_max then
          v_full_accounts := v_full_accounts || v_account;
          continue;
        end if;
        v_take := least(v_take, v_pick.account_max - v_count);
      end if;
      if v_pick.type_max is not null then
        if not ('t:' || v_type = any (v_locked)) then
          if not public.hd__take_claim_lock('t:' || v_type, cardinality(v_locked) > 0) then
            v_full_types := v_full_types || v_type;
            continue;
          end if;
          v_locked := v_locked || ('t:' || v_type);
        end if;
        select count(*) into v_count from public.hd_ingestion_jobs r
         where r.status = 'running' and r.job_type = v_type;
        if v_count >= v_pick.type_max then
          v_full_types := v_full_types || v_type;
          continue;
        end if;
        v_take := least(v_take, v_pick.type_max - v_count);
      end if;
    end if;

    return query
    with claimed as (
      update public.hd_ingestion_jobs j
         set status = 'running', attempts = j.attempts + 1, lease_token = gen_random_uuid(),
             lease_expires_at = p_now + make_interval(secs => p_lease_seconds),
             locked_by = p_worker_id, started_at = p_now, finished_at = null,
             progress_percent = 0, progress_step = 'claimed', container_id = null,
             updated_at = p_now
       -- = any (array(…)), not in (…): a generic plan (plan_cache_mode =
       -- force_generic_plan, or one PL/pgSQL keeps), not knowing v_take, made the IN a
       -- hash join over a scan of the whole table (every job ever run); the array is
       -- probed through the primary key whatever the plan.
       where j.id = any (array(
         select q.id from public.hd_ingestion_jobs q
          where q.status = 'queued' and q.account_id = v_account
            and q.job_type = v_type and q.run_after <= p_now
          order by q.priority desc, q.run_after, q.id limit v_take
          for update skip locked))
      returning j.id, j.account_id, j.document_id, j.job_type, j.attempts, j.max_attempts,
                j.priority, j.debug, j.run_after, j.started_at, j.lease_token,
                j.lease_expires_at
    )
    select * from claimed c order by c.priority desc, c.run_after, c.id;
    get diagnostics v_got = row_count;
    -- The only group: what one statement got is what there is (the rest is locked by
    -- other claimers or not yet due).
    exit when v_one_group;
    if v_got < v_take then
      -- The group's other runnable jobs are being claimed by someone else right now.
      v_skipped_groups := v_skipped_groups || v_pick.ord;
    end if;
    v_claimed := v_claimed + v_got;
  end loop;
end
$$;

-- 00012's hd_claim_jobs, whole rows: exactly p_job_id (a hand-run), or the fair claim of
-- hd_claim_leases read back in its order.
create or replace function public.hd_claim_jobs(
  p_worker_id text,
  p_job_types text[] default null,
  p_limit integer default 1,
  p_lease_seconds integer default 60,
  p_job_id uuid default null,
  p_now timestamptz default now(),
  p_account_max_running integer default null)
returns setof public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_ids uuid[];
begin
  if p_job_id is not null then
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
    return;
  end if;
  -- Claimed first, read after: a statement's snapshot would not see its own claim.
  select array_agg(c.id order by c.ordinality) into v_ids
    from public.hd_claim_leases(p_worker_id, p_job_types, p_limit, p_lease_seconds,
                                p_account_max_running, p_now) with ordinality c;
  return query
  select j.*
    from unnest(v_ids) with ordinality u(id, n)
    join public.hd_ingestion_jobs j on j.id = u.id
   order by u.n;
end
$$;

-- * Index entries: hd_ingestion_jobs_lease_idx (00002) held the running jobs by lease expiry
--   for the reaper, and a claim wrote an entry into it. Running jobs are few (the slots of
--   all hosts) and hd_ingestion_jobs_running_account_idx holds every one of them, so the
--   reaper reads them there and a claim writes one index entry fewer. A heartbeat or a
--   progress report (lease_expires_at, progress, updated_at) then changes no indexed column:
--   with room left on its page (fillfactor 90) it is a HOT update and writes no index entry.
drop index if exists public.hd_ingestion_jobs_lease_idx;
alter table public.hd_ingestion_jobs set (fillfactor = 90);

-- * Batch counts (00013): the statement-level triggers read their transition tables with a
--   query PostgreSQL plans again on every call (it cannot keep a plan over a transition
--   table): measured 0.25 ms for each claim and each completion, batch or not, about a
--   third of what a raw claim costs. A row trigger whose WHEN (evaluated without a call)
--   sees a batch's job now marks the statement, and the count returns at once for an
--   unmarked one. The counts are still applied once per statement, batches in id order.
--   The flag is transaction-local and cleared by the count that reads it; a client that
--   sets it only makes its own statement count (nothing to count is found).
create or replace function public.hd__mark_batch_rows()
returns trigger
language plpgsql
as $$
begin
  perform set_config('hd.batch_rows', 'on', true);
  return null;
end
$$;

drop trigger if exists hd_ingestion_jobs_batch_mark_insert on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_batch_mark_insert
  after insert on public.hd_ingestion_jobs
  for each row when (new.batch_id is not null)
  execute function public.hd__mark_batch_rows();
drop trigger if exists hd_ingestion_jobs_batch_mark_update on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_batch_mark_update
  after update on public.hd_ingestion_jobs
  for each row
  when ((old.batch_id is not null or new.batch_id is not null)
        and (old.batch_id is distinct from new.batch_id or old.status is distinct from new.status
             or old.error_code is distinct from new.error_code))
  execute function public.hd__mark_batch_rows();
drop trigger if exists hd_ingestion_jobs_batch_mark_delete on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_batch_mark_delete
  after delete on public.hd_ingestion_jobs
  for each row when (old.batch_id is not null)
  execute function public.hd__mark_batch_rows();

-- 00013's count, behind the mark.
create or replace function public.hd__count_batch_jobs()
returns trigger
language plpgsql security definer set search_path = ''
as $$
declare
  v_deltas jsonb;
begin
  -- Only a statement whose rows a batch holds (marked by hd__mark_batch_rows) counts.
  if current_setting('hd.batch_rows', true) is distinct from 'on' then
    return null;
  end if;
  perform set_config('hd.batch_rows', '', true);
  if tg_op = 'INSERT' then
    select jsonb_agg(jsonb_build_object('batch_id', n.batch_id, 'delta', 1,
             'bucket', public.hd__batch_bucket(n.status, n.error_code)))
      into v_deltas from new_rows n where n.batch_id is not null;
  elsif tg_op = 'DELETE' then
    select jsonb_agg(jsonb_build_object('batch_id', o.batch_id, 'delta', -1,
             'bucket', public.hd__batch_bucket(o.status, o.error_code)))
      into v_deltas from old_rows o where o.batch_id is not null;
  else
    -- Only rows whose bucket or batch changed; heartbeats and progress add nothing.
    select jsonb_agg(x.delta) into v_deltas from (
      select jsonb_build_object('batch_id', o.batch_id, 'delta', -1,
               'bucket', public.hd__batch_bucket(o.status, o.error_code)) as delta
        from old_rows o join new_rows n on n.id = o.id
       where o.batch_id is not null
         and (o.batch_id is distinct from n.batch_id
              or public.hd__batch_bucket(o.status, o.error_code)
                 <> public.hd__batch_bucket(n.status, n.error_code))
      union all
      select jsonb_build_object('batch_id', n.batch_id, 'delta', 1,
               'bucket', public.hd__batch_bucket(n.status, n.error_code))
        from old_rows o join new_rows n on n.id = o.id
       where n.batch_id is not null
         and (o.batch_id is distinct from n.batch_id
              or public.hd__batch_bucket(o.status, o.error_code)
                 <> public.hd__batch_bucket(n.status, n.error_code))) x;
  end if;
  if v_deltas is not null then
    perform public.hd__apply_batch_deltas(v_deltas);
  end if;
  return null;
end
$$;

select public.hd__lock_down_functions();

notify pgrst, 'reload schema';
