-- 00012: fair claims across tenants, with per-account and per-job-type limits held
-- globally (every scheduler on every host claims through this one function).
--
-- Rule: among accounts with a runnable job, the one with the fewest running jobs relative
-- to its weight (running / weight) goes first; ties go to the account whose latest
-- running job started first (round robin: without it the account with the oldest backlog
-- won every tie, measured in bench/fairness.ts as 15% of the slot time for a tenant owed
-- 25%), then to the one whose next job has the highest priority, then the earliest run_after. Within an account, jobs keep
-- 00003's order (priority desc, run_after, id). An account that enqueues 10,000 jobs
-- therefore gets the next slot only while no other account with work runs fewer (by
-- weight): a small tenant's first job starts at the next slot that frees up, and no
-- account with runnable work starves (each claim raises the winner's ratio).
--
-- Limits: hd_account_limits.max_running (NULL or no row: the scheduler's configured
-- default, p_account_max_running, NULL = none) and hd_job_type_limits.max_running (all
-- accounts together, e.g. a GPU type). Two claimers must not both take the last place,
-- so before claiming under a limit the claimer takes a transaction lock (hd__lock) on the
-- account (or type) and counts again with a fresh snapshot: claims under one limit are
-- serialized, claims for unlimited accounts are not. Only the first lock of a claim
-- waits; later ones are tried and skipped when busy, so a waiting claimer holds no lock
-- and claimers cannot deadlock.
--
-- Cost: no scan of the backlog. The queued (account, job_type) groups are found by a
-- skip scan of hd_ingestion_jobs_fair_claim_idx (one index probe per group), each
-- group's next job is one probe, and running jobs (at most the slots of all hosts) are
-- counted through hd_ingestion_jobs_running_account_idx. Measured in test/fair-claims.test.ts
-- by the buffers a claim touches (EXPLAIN (ANALYZE, BUFFERS)): the same with 1 or 50,000
-- queued jobs for one tenant. A group whose highest-priority jobs all wait for a later
-- run_after is walked until a runnable one (retry backoff keeps those few).
-- Re-runnable.

create table if not exists public.hd_account_limits (
  account_id uuid primary key,
  -- Most jobs running at once on all hosts together; NULL: the configured default.
  max_running integer check (max_running >= 0),
  -- Share of the slots relative to other accounts with work (2 = twice the default 1).
  weight numeric not null default 1 check (weight > 0),
  updated_at timestamptz not null default now()
);

create table if not exists public.hd_job_type_limits (
  job_type text primary key,
  -- Most jobs of this type running at once, all accounts and hosts together.
  max_running integer not null check (max_running >= 0),
  updated_at timestamptz not null default now()
);

-- Members read their own account's limits; only the service role writes (or the
-- scheduler through hd_set_account_limit / hd_set_job_type_limit).
alter table public.hd_account_limits enable row level security;
drop policy if exists hd_members_read on public.hd_account_limits;
create policy hd_members_read on public.hd_account_limits for select to authenticated
  using (public.has_role_on_account(account_id));
revoke all on public.hd_account_limits from anon, authenticated;
grant select on public.hd_account_limits to authenticated;
grant all on public.hd_account_limits to service_role;

alter table public.hd_job_type_limits enable row level security;
revoke all on public.hd_job_type_limits from anon, authenticated;
grant all on public.hd_job_type_limits to service_role;

-- Queued jobs by group in claim order (the skip scan and each group's next job), and
-- running jobs by account and type (the counts the limits and the ratio need). 00002's
-- claim index (priority desc, run_after, id) is no longer read by a claim: dropped, so
-- an insert maintains one queue index, not two.
create index if not exists hd_ingestion_jobs_fair_claim_idx
  on public.hd_ingestion_jobs (account_id, job_type, priority desc, run_after, id)
  where status = 'queued';
create index if not exists hd_ingestion_jobs_running_account_idx
  on public.hd_ingestion_jobs (account_id, job_type) where status = 'running';
drop index if exists public.hd_ingestion_jobs_claim_idx;

-- Distinct (account_id, job_type) of queued jobs: a recursive skip scan, one index probe
-- per group however many jobs each group holds.
create or replace function public.hd__queued_groups()
returns table (account_id uuid, job_type text)
language sql stable
as $$
  with recursive g as (
    (select j.account_id, j.job_type from public.hd_ingestion_jobs j
      where j.status = 'queued'
      order by j.account_id, j.job_type limit 1)
    union all
    select n.account_id, n.job_type
      from g
     cross join lateral (
       select j.account_id, j.job_type from public.hd_ingestion_jobs j
        where j.status = 'queued' and (j.account_id, j.job_type) > (g.account_id, g.job_type)
        order by j.account_id, j.job_type limit 1) n
  )
  select g.account_id, g.job_type from g
$$;

-- Takes the claim lock of one limited account or type: waits for it when the claim
-- holds no lock yet, only tries otherwise (a waiter holding a lock could deadlock).
create or replace function public.hd__take_claim_lock(p_key text, p_holding boolean)
returns boolean
language plpgsql volatile
as $$
begin
  -- Row locks of 00010's hd__lock, not advisory locks: pg_locks shows an advisory key to
  -- every session, and a runner holding it would stall the claims of everyone.
  if p_holding then
    return public.hd__try_lock('hd_claim:' || p_key);
  end if;
  perform public.hd__lock('hd_claim:' || p_key);
  return true;
end
$$;

drop function if exists public.hd_claim_jobs(text, text[], integer, integer, uuid, timestamptz);

-- Claims up to p_limit runnable jobs, fairly (see the top), or exactly p_job_id,
-- ignoring run_after and limits, for a hand-run `hd-runner run --job-id`. 00003's
-- signature plus p_account_max_running (the default limit of an account without one).
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
  v_accounts uuid[];
  v_types text[];
  v_skipped_groups bigint[] := '{}';
  v_full_accounts uuid[] := '{}';
  v_full_types text[] := '{}';
  v_locked text[] := '{}';
  v_claimed integer := 0;
  v_pick record;
  v_count bigint;
  v_take integer;
  v_got integer;
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
  if coalesce(p_limit, 0) <= 0 then
    return;
  end if;

  select coalesce(array_agg(g.account_id), '{}'), coalesce(array_agg(g.job_type), '{}')
    into v_accounts, v_types
    from public.hd__queued_groups() g
   where p_job_types is null or g.job_type = any (p_job_types);

  while v_claimed < p_limit loop
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

    -- How many to take from this group in one statement: until its ratio passes the next
    -- account's (all that is asked for when no other account waits), within its limits.
    -- One job per statement made a batch of 100 cost 100 rounds of the query above.
    v_take := p_limit - v_claimed;
    if v_pick.next_ratio is not null then
      v_take := least(v_take, greatest(1,
        ceil(round((v_pick.next_ratio - v_pick.ratio) * v_pick.weight, 6))::integer));
    end if;

    -- Under a limit: lock, then count again (a new statement sees the claims that the
    -- lock's previous holder committed).
    if v_pick.account_max is not null then
      if not ('a:' || v_pick.account_id = any (v_locked)) then
        if not public.hd__take_claim_lock('a:' || v_pick.account_id, cardinality(v_locked) > 0) then
          v_full_accounts := v_full_accounts || v_pick.account_id;
          continue;
        end if;
        v_locked := v_locked || ('a:' || v_pick.account_id);
      end if;
      select count(*) into v_count from public.hd_ingestion_jobs r
       where r.status = 'running' and r.account_id = v_pick.account_id;
      if v_count >= v_pick.account_max then
        v_full_accounts := v_full_accounts || v_pick.account_id;
        continue;
      end if;
      v_take := least(v_take, v_pick.account_max - v_count);
    end if;
    if v_pick.type_max is not null then
      if not ('t:' || v_pick.job_type = any (v_locked)) then
        if not public.hd__take_claim_lock('t:' || v_pick.job_type, cardinality(v_locked) > 0) then
          v_full_types := v_full_types || v_pick.job_type;
          continue;
        end if;
        v_locked := v_locked || ('t:' || v_pick.job_type);
      end if;
      select count(*) into v_count from public.hd_ingestion_jobs r
       where r.status = 'running' and r.job_type = v_pick.job_type;
      if v_count >= v_pick.type_max then
        v_full_types := v_full_types || v_pick.job_type;
        continue;
      end if;
      v_take := least(v_take, v_pick.type_max - v_count);
    end if;

    return query
    with claimed as (
      update public.hd_ingestion_jobs j
         set status = 'running', attempts = j.attempts + 1, lease_token = gen_random_uuid(),
             lease_expires_at = p_now + make_interval(secs => p_lease_seconds),
             locked_by = p_worker_id, started_at = p_now, finished_at = null,
             progress_percent = 0, progress_step = 'claimed', container_id = null,
             updated_at = p_now
       where j.id in (
         select q.id from public.hd_ingestion_jobs q
          where q.status = 'queued' and q.account_id = v_pick.account_id
            and q.job_type = v_pick.job_type and q.run_after <= p_now
          order by q.priority desc, q.run_after, q.id limit v_take
          for update skip locked)
      returning j.*
    )
    select * from claimed order by priority desc, run_after, id;
    get diagnostics v_got = row_count;
    if v_got < v_take then
      -- The group's other runnable jobs are being claimed by someone else right now.
      v_skipped_groups := v_skipped_groups || v_pick.ord;
    end if;
    v_claimed := v_claimed + v_got;
  end loop;
end
$$;

-- Sets an account's limit and weight (NULL max_running: the configured default).
create or replace function public.hd_set_account_limit(
  p_account_id uuid, p_max_running integer, p_weight numeric default 1)
returns public.hd_account_limits
language sql volatile
as $$
  insert into public.hd_account_limits as l (account_id, max_running, weight)
  values (p_account_id, p_max_running, p_weight)
  on conflict (account_id) do update
    set max_running = excluded.max_running, weight = excluded.weight, updated_at = now()
  returning l.*
$$;

-- Sets a job type's limit over all accounts (NULL: removes it).
create or replace function public.hd_set_job_type_limit(p_job_type text, p_max_running integer)
returns setof public.hd_job_type_limits
language sql volatile
as $$
  delete from public.hd_job_type_limits where job_type = p_job_type and p_max_running is null;
  insert into public.hd_job_type_limits as t (job_type, max_running)
  select p_job_type, p_max_running where p_max_running is not null
  on conflict (job_type) do update
    set max_running = excluded.max_running, updated_at = now()
  returning t.*;
$$;

select public.hd__lock_down_functions();

notify pgrst, 'reload schema';
