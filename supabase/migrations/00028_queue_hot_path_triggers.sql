-- 00028: the queue's hot path, second pass (issue 18): what a claim and a completion still
-- cost beyond the raw SKIP LOCKED loop, measured per job by bench/queue-profile.ts (the
-- backend's CPU time and WAL) and cut here; docs/scheduling.md "The hot path" sums up.
--
-- * The claim was planned again at every call: its UPDATE's LIMIT (how many to take) is a
--   parameter, and PostgreSQL keeps a custom plan for a statement whose generic plan looks
--   costlier; planning that UPDATE (25 columns, 7 indexes, checks) cost as much as running
--   it. The claim now runs its cached generic plans (the same index paths, checked at
--   1M queued rows in test/fair-claims.test.ts and bench/fairness.ts).
-- * The queued groups' limits were hash joins over full scans of both limit tables at
--   every claim (a cost that grew with the accounts that have a limit): now key probes.
-- * Batch counts (00013, 00021) called their statement-level function after every UPDATE,
--   INSERT and DELETE of jobs (a claim, a completion, a heartbeat); it returned at once
--   unless a row of a batch was touched. The mark is now set by BEFORE row triggers, so
--   the statement trigger's own WHEN sees it and skips the call.
-- * A job's end and a lease's end each had an AFTER row trigger (webhook events, 00013 /
--   00022; LLM reservations, 00027): two function calls and two lookups for each job that
--   completes. Now one trigger and one call; each look-up only where it applies.
-- * hd_complete_jobs no longer looks each job up twice (see there).
-- Re-runnable.

-- 00021's fair claim, with generic plans (see above). Body unchanged.
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
-- The generic plans are the index plans a custom one would pick (each statement probes
-- by account and type, in claim order, and the claimed ids through the primary key); a
-- custom plan only adds the planning, at every call.
set plan_cache_mode = force_generic_plan
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

  -- Limits by key probe: a join planned over the limit tables scanned both at each claim.
  select coalesce(array_agg(g.account_id), '{}'), coalesce(array_agg(g.job_type), '{}'),
         coalesce(bool_or(
           exists (select 1 from public.hd_account_limits l
                    where l.account_id = g.account_id and l.max_running is not null)
           or exists (select 1 from public.hd_job_type_limits t
                       where t.job_type = g.job_type)), false)
    into v_accounts, v_types, v_limited
    from public.hd__queued_groups() g
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
       -- = any (array(…)), not in (…): under a generic plan the IN became a hash join
       -- over a scan of the whole table (00021); the array is probed through the key.
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

-- * Batch counts: the mark (00021) moves to BEFORE row triggers (same conditions), which
--   run while the statement's rows are written, before its statement-level triggers are
--   queued; the count triggers' WHEN then reads it, and a statement that touched no batch
--   never calls hd__count_batch_jobs. The count reads the transition tables, not the mark,
--   so a mark set by anyone else only makes a statement count its own rows. A statement
--   nested in another's row triggers may run between that one's mark and its count: only
--   a top-level count clears the mark (hd__count_batch_jobs below).
-- A BEFORE row trigger returns the row it lets through (00021's AFTER one returned null).
create or replace function public.hd__mark_batch_rows()
returns trigger
language plpgsql
as $$
begin
  perform set_config('hd.batch_rows', 'on', true);
  if tg_op = 'DELETE' then
    return old;
  end if;
  return new;
end
$$;

drop trigger if exists hd_ingestion_jobs_batch_mark_insert on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_batch_mark_insert
  before insert on public.hd_ingestion_jobs
  for each row when (new.batch_id is not null)
  execute function public.hd__mark_batch_rows();
drop trigger if exists hd_ingestion_jobs_batch_mark_update on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_batch_mark_update
  before update on public.hd_ingestion_jobs
  for each row
  when ((old.batch_id is not null or new.batch_id is not null)
        and (old.batch_id is distinct from new.batch_id or old.status is distinct from new.status
             or old.error_code is distinct from new.error_code))
  execute function public.hd__mark_batch_rows();
drop trigger if exists hd_ingestion_jobs_batch_mark_delete on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_batch_mark_delete
  before delete on public.hd_ingestion_jobs
  for each row when (old.batch_id is not null)
  execute function public.hd__mark_batch_rows();

-- 00021's count, with the mark cleared only at the top level (see there).
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
  -- Cleared by a top-level statement's count only: a statement run from inside another
  -- statement's triggers (depth 2 and more) may come between that statement's mark and
  -- its count, and must leave the mark to it. Left set, it only makes later statements
  -- of the transaction call the count, which reads their own rows.
  if pg_trigger_depth() = 1 then
    perform set_config('hd.batch_rows', '', true);
  end if;
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

drop trigger if exists hd_ingestion_jobs_batch_insert on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_batch_insert
  after insert on public.hd_ingestion_jobs
  referencing new table as new_rows
  for each statement when (current_setting('hd.batch_rows', true) = 'on')
  execute function public.hd__count_batch_jobs();
drop trigger if exists hd_ingestion_jobs_batch_update on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_batch_update
  after update on public.hd_ingestion_jobs
  referencing old table as old_rows new table as new_rows
  for each statement when (current_setting('hd.batch_rows', true) = 'on')
  execute function public.hd__count_batch_jobs();
drop trigger if exists hd_ingestion_jobs_batch_delete on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_batch_delete
  after delete on public.hd_ingestion_jobs
  referencing old table as old_rows
  for each statement when (current_setting('hd.batch_rows', true) = 'on')
  execute function public.hd__count_batch_jobs();

-- * One trigger for a job's end and a lease's end: the webhook events of a job that ends
--   (00022's hd__enqueue_job_webhooks: each enabled endpoint of the account that wants
--   the event, and the job's own URL) and the release of what the ended lease still
--   reserves on the LLM budget (00027's hd__end_lease_llm_reservations). Security
--   definer: whoever writes the job, the outbox and the private tables are written.
create or replace function public.hd__job_or_lease_ended()
returns trigger
language plpgsql
security definer set search_path = ''
as $$
declare
  v_lease_ended boolean := old.lease_token is not null
                           and new.lease_token is distinct from old.lease_token;
  v_job_ended boolean := new.status in ('completed', 'failed')
                         and old.status is distinct from new.status;
  v_type text := 'job.' || new.status;
  v_own_url text;
  v_payload jsonb;
begin
  -- A look-up each, and only where it applies (nested IFs: a condition holding a query is
  -- a statement, started with its locks even when its first operand is false; one
  -- statement for both look-ups was measured slower than the two triggers it replaced).
  if v_lease_ended then
    if exists (select 1 from hd_private.llm_reservations r
                where r.lease_token = old.lease_token) then
      perform public.hd__release_llm_reservations(array[old.lease_token]);
    end if;
  end if;
  if not v_job_ended then
    return null;
  end if;
  v_own_url := case when jsonb_typeof(new.debug -> 'webhook_url') = 'string'
                    then new.debug ->> 'webhook_url' end;
  if v_own_url is null then
    if not exists (select 1 from public.hd_webhook_endpoints w
                    where w.account_id = new.account_id and w.enabled
                      and v_type = any (w.events)) then
      return null;
    end if;
  end if;
  v_payload := public.hd__webhook_payload(v_type, public.hd__job_event_data(new));
  insert into public.hd_webhook_outbox (account_id, endpoint_id, event_type, payload)
  select new.account_id, w.id, v_type, v_payload
    from public.hd_webhook_endpoints w
   where w.account_id = new.account_id and w.enabled and v_type = any (w.events)
   order by w.id;
  if v_own_url is not null then
    perform public.hd_webhook_signing_secret(new.account_id);
    insert into public.hd_webhook_outbox (account_id, url, event_type, payload)
    values (new.account_id, v_own_url, v_type, v_payload);
  end if;
  return null;
end
$$;

drop trigger if exists hd_ingestion_jobs_webhooks on public.hd_ingestion_jobs;
drop trigger if exists hd_ingestion_jobs_llm_reservations on public.hd_ingestion_jobs;
drop trigger if exists hd_ingestion_jobs_ended on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_ended
  after update on public.hd_ingestion_jobs
  for each row
  when ((old.lease_token is not null and new.lease_token is distinct from old.lease_token)
        or (new.status in ('completed', 'failed') and old.status is distinct from new.status))
  execute function public.hd__job_or_lease_ended();
drop function if exists public.hd__enqueue_job_webhooks();
drop function if exists public.hd__end_lease_llm_reservations();

-- * hd_complete_jobs (00009) looked every job of the call up first, to send the pipeline
--   jobs (debug.next_stages) through hd_complete_job: a second primary-key probe and heap
--   visit for each job. Now the one UPDATE completes the jobs without a next stage, and
--   only the jobs it left (pipeline jobs, and leases lost) are looked at again.
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

notify pgrst, 'reload schema';
