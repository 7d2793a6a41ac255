-- 00027: LLM gateway reservations end with their lease; a budget refusal is no attempt.
--
-- Reservations (00015): hd_llm_admit reserves a request's most tokens and cost on the
-- account's hd_llm_usage row until hd_llm_record swaps them for the usage the provider
-- reported. A scheduler killed between the two never recorded, and the reservation held
-- the account's budget until the day ended. Now each reservation is also kept per lease
-- (hd_private.llm_reservations), and the lease's end releases what its requests still
-- hold, however it ends (complete, fail, release, cancel, reap: the trigger below, on
-- the same condition as 00008's ended-lease trigger). hd_llm_record takes back only what
-- a lease still holds, so an answer that comes after its lease ended is not released
-- twice. hd_drop_llm_credentials (each scheduler calls it after a runner ends) also
-- releases any reservation whose lease is no longer the job's current one: an admission
-- that raced its lease's end leaves one behind.
--
-- Lock order, everywhere: the hd_llm_usage rows (in key order), then the lease's rows
-- here. hd_llm_admit, hd_llm_record and the release take them so: never a deadlock.
--
-- Budget refusals (LLM_BUDGET_EXCEEDED): 00015's trigger queued the job for the next UTC
-- day but the attempt counted, and a job refused on its last attempt failed for good. A
-- refusal is a deferral, not the job's fault: the attempt is now refunded and the job is
-- queued for the next UTC day whatever attempts it used (docs/containers.md, README).
-- Re-runnable.

create table if not exists hd_private.llm_reservations (
  lease_token uuid not null,
  day date not null,
  model text not null,
  account_id uuid not null,
  job_id uuid not null,
  tokens bigint not null default 0,
  cost_usd numeric not null default 0,
  primary key (lease_token, day, model)
);
revoke all on hd_private.llm_reservations from public;

-- Releases what the leases p_leases still hold on hd_llm_usage; returns the rows freed.
create or replace function public.hd__release_llm_reservations(p_leases uuid[])
returns integer
language plpgsql volatile
as $$
declare
  v_freed integer;
begin
  perform 1 from public.hd_llm_usage u
   where (u.account_id, u.day, u.job_id, u.model) in
         (select r.account_id, r.day, r.job_id, r.model
            from hd_private.llm_reservations r where r.lease_token = any (p_leases))
   order by u.account_id, u.day, u.job_id, u.model
     for update of u;
  with gone as (
    delete from hd_private.llm_reservations r
     where r.lease_token = any (p_leases)
    returning r.account_id, r.day, r.job_id, r.model, r.tokens, r.cost_usd),
  freed as (
    select g.account_id, g.day, g.job_id, g.model,
           sum(g.tokens) as tokens, sum(g.cost_usd) as cost_usd
      from gone g group by g.account_id, g.day, g.job_id, g.model)
  update public.hd_llm_usage u
     set reserved_tokens = greatest(u.reserved_tokens - f.tokens, 0),
         reserved_cost_usd = greatest(u.reserved_cost_usd - f.cost_usd, 0),
         updated_at = now()
    from freed f
   where u.account_id = f.account_id and u.day = f.day and u.job_id = f.job_id
     and u.model = f.model;
  get diagnostics v_freed = row_count;
  return v_freed;
end
$$;

-- A lease ended: its requests' reservations go with it (security definer: whoever ends
-- the lease, the private table is written).
create or replace function public.hd__end_lease_llm_reservations()
returns trigger
language plpgsql
security definer set search_path = ''
as $$
begin
  if exists (select 1 from hd_private.llm_reservations r
              where r.lease_token = old.lease_token) then
    perform public.hd__release_llm_reservations(array[old.lease_token]);
  end if;
  return null;
end
$$;

drop trigger if exists hd_ingestion_jobs_llm_reservations on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_llm_reservations
  after update of lease_token on public.hd_ingestion_jobs
  for each row
  when (old.lease_token is not null and new.lease_token is distinct from old.lease_token)
  execute function public.hd__end_lease_llm_reservations();

-- 00015's, and reservations whose lease is no longer the job's current one are released.
create or replace function public.hd_drop_llm_credentials(p_now timestamptz default now())
returns integer
language plpgsql volatile
as $$
declare
  v_dropped integer;
begin
  perform public.hd__release_llm_reservations(array(
    select distinct r.lease_token from hd_private.llm_reservations r
     where not exists (select 1 from public.hd_ingestion_jobs j
                        where j.id = r.job_id and j.status = 'running'
                          and j.lease_token = r.lease_token)));
  delete from hd_private.llm_credentials c
   where c.valid_until <= p_now
      or not exists (select 1 from public.hd_ingestion_jobs j
                      where j.id = c.job_id and j.status = 'running'
                        and j.lease_token = c.lease_token);
  get diagnostics v_dropped = row_count;
  return v_dropped;
end
$$;

-- 00015's, whole, with the reservation also kept per lease, and the lease in the answer
-- (`lease_token`, for hd_llm_record).
create or replace function public.hd_llm_admit(
  p_token_sha256 text, p_model text, p_tokens bigint, p_cost numeric default 0,
  p_default_daily_tokens bigint default null, p_now timestamptz default now())
returns jsonb
language plpgsql volatile
as $$
declare
  v_job_id uuid;
  v_account uuid;
  v_lease uuid;
  v_day date := (p_now at time zone 'UTC')::date;
  v_tokens bigint;
  v_usd numeric;
  v_used bigint;
  v_cost numeric;
begin
  select j.id, j.account_id, j.lease_token into v_job_id, v_account, v_lease
    from hd_private.llm_credentials c
    join public.hd_ingestion_jobs j on j.id = c.job_id and j.lease_token = c.lease_token
   where c.token_sha256 = p_token_sha256 and c.valid_until > p_now
     and j.status = 'running' and j.lease_expires_at > p_now;
  if not found then
    return jsonb_build_object('verdict', 'refused');
  end if;
  select coalesce(b.daily_tokens, p_default_daily_tokens), b.daily_cost_usd
    into v_tokens, v_usd
    from (select 1) one left join public.hd_llm_budgets b on b.account_id = v_account;
  if v_tokens is null and v_usd is null then
    return jsonb_build_object('verdict', 'admitted', 'job_id', v_job_id,
                              'account_id', v_account, 'day', v_day, 'reserved', false,
                              'lease_token', v_lease);
  end if;
  perform set_config('synchronous_commit', 'off', true);
  -- Admissions of one account take turns: two hosts cannot both take the last tokens.
  perform public.hd__lock('hd_llm_budget:' || v_account);
  select coalesce(sum(u.prompt_tokens + u.completion_tokens + u.reserved_tokens), 0),
         coalesce(sum(u.cost_usd + u.reserved_cost_usd), 0)
    into v_used, v_cost
    from public.hd_llm_usage u
   where u.account_id = v_account and u.day = v_day;
  if v_used + p_tokens > v_tokens or v_cost + p_cost > v_usd then
    insert into public.hd_llm_usage as u (account_id, day, job_id, model, refused, updated_at)
    values (v_account, v_day, v_job_id, p_model, 1, p_now)
    on conflict (account_id, day, job_id, model)
      do update set refused = u.refused + 1, updated_at = p_now;
    return jsonb_build_object('verdict', 'budget', 'job_id', v_job_id,
                              'account_id', v_account, 'day', v_day,
                              'used_tokens', v_used, 'budget_tokens', v_tokens,
                              'used_cost_usd', v_cost, 'budget_cost_usd', v_usd);
  end if;
  insert into public.hd_llm_usage as u
    (account_id, day, job_id, model, reserved_tokens, reserved_cost_usd, updated_at)
  values (v_account, v_day, v_job_id, p_model, p_tokens, p_cost, p_now)
  on conflict (account_id, day, job_id, model)
    do update set reserved_tokens = u.reserved_tokens + excluded.reserved_tokens,
                  reserved_cost_usd = u.reserved_cost_usd + excluded.reserved_cost_usd,
                  updated_at = p_now;
  insert into hd_private.llm_reservations as r
    (lease_token, day, model, account_id, job_id, tokens, cost_usd)
  values (v_lease, v_day, p_model, v_account, v_job_id, p_tokens, p_cost)
  on conflict (lease_token, day, model)
    do update set tokens = r.tokens + excluded.tokens,
                  cost_usd = r.cost_usd + excluded.cost_usd;
  return jsonb_build_object('verdict', 'admitted', 'job_id', v_job_id,
                            'account_id', v_account, 'day', v_day, 'reserved', true,
                            'lease_token', v_lease);
end
$$;

-- 00015's, whole, with each row's `lease_token` (hd_llm_admit's answer): a row takes back
-- at most what its lease still holds, since the lease's end may have released it already.
-- A row without one (a scheduler from before 00027) takes it from the job's current lease.
create or replace function public.hd_llm_record(p_rows jsonb, p_now timestamptz default now())
returns void
language plpgsql volatile
as $$
declare
  r record;
  v_lease uuid;
  v_tokens bigint;
  v_cost numeric;
begin
  perform set_config('synchronous_commit', 'off', true);
  -- Rows in key order: two calls at once lock them in the same order, never a deadlock.
  for r in
    select x.account_id, x.day, x.job_id, x.model, x.lease_token, count(*)::integer as requests,
           sum(x.reserved_tokens)::bigint as reserved_tokens,
           sum(x.reserved_cost_usd) as reserved_cost_usd,
           sum(x.prompt_tokens)::bigint as prompt_tokens,
           sum(x.completion_tokens)::bigint as completion_tokens,
           sum(x.cached_tokens)::bigint as cached_tokens,
           sum(x.cost_usd) as cost_usd
      from jsonb_to_recordset(p_rows) as x(
             account_id uuid, day date, job_id uuid, model text, lease_token uuid,
             reserved_tokens bigint, reserved_cost_usd numeric, prompt_tokens bigint,
             completion_tokens bigint, cached_tokens bigint, cost_usd numeric)
     group by x.account_id, x.day, x.job_id, x.model, x.lease_token
     order by x.account_id, x.day, x.job_id, x.model, x.lease_token
  loop
    insert into public.hd_llm_usage as u
      (account_id, day, job_id, model, requests, prompt_tokens, completion_tokens,
       cached_tokens, cost_usd, updated_at)
    values (r.account_id, r.day, r.job_id, r.model, r.requests, r.prompt_tokens,
            r.completion_tokens, r.cached_tokens, r.cost_usd, p_now)
    on conflict (account_id, day, job_id, model) do update
      set requests = u.requests + excluded.requests,
          prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
          completion_tokens = u.completion_tokens + excluded.completion_tokens,
          cached_tokens = u.cached_tokens + excluded.cached_tokens,
          cost_usd = u.cost_usd + excluded.cost_usd,
          updated_at = p_now;
    continue when coalesce(r.reserved_tokens, 0) = 0 and coalesce(r.reserved_cost_usd, 0) = 0;
    v_lease := coalesce(r.lease_token,
                        (select j.lease_token from public.hd_ingestion_jobs j where j.id = r.job_id));
    -- What the lease still holds of it (the row is locked until the transaction ends).
    select least(res.tokens, r.reserved_tokens), least(res.cost_usd, r.reserved_cost_usd)
      into v_tokens, v_cost
      from hd_private.llm_reservations res
     where res.lease_token = v_lease and res.day = r.day and res.model = r.model
       for update;
    continue when not found;
    update hd_private.llm_reservations res
       set tokens = res.tokens - v_tokens, cost_usd = res.cost_usd - v_cost
     where res.lease_token = v_lease and res.day = r.day and res.model = r.model;
    delete from hd_private.llm_reservations res
     where res.lease_token = v_lease and res.day = r.day and res.model = r.model
       and res.tokens <= 0 and res.cost_usd <= 0;
    update public.hd_llm_usage u
       set reserved_tokens = greatest(u.reserved_tokens - v_tokens, 0),
           reserved_cost_usd = greatest(u.reserved_cost_usd - v_cost, 0)
     where u.account_id = r.account_id and u.day = r.day and u.job_id = r.job_id
       and u.model = r.model;
  end loop;
end
$$;

-- 00015's: a job refused by its budget is retried once the budget period (the UTC day)
-- resets, and the refusal is no attempt: refunded, and queued even where the attempts
-- were used up (the settle function had made it `failed`).
create or replace function public.hd__retry_after_budget_reset()
returns trigger
language plpgsql
as $$
begin
  new.status := 'queued';
  new.finished_at := null;
  new.attempts := greatest(old.attempts - 1, 0);
  new.run_after := greatest(
    new.run_after,
    (date_trunc('day', new.updated_at at time zone 'UTC') + interval '1 day') at time zone 'UTC');
  return new;
end
$$;

drop trigger if exists hd_retry_after_budget_reset on public.hd_ingestion_jobs;
create trigger hd_retry_after_budget_reset
  before update of status on public.hd_ingestion_jobs
  for each row
  when (old.status = 'running' and new.status in ('queued', 'failed')
        and new.error_code = 'LLM_BUDGET_EXCEEDED'
        and new.error_details ->> 'retryable' = 'true')
  execute function public.hd__retry_after_budget_reset();

notify pgrst, 'reload schema';

select public.hd__lock_down_functions();
