-- 00015: the scheduler's LLM gateway (scheduler/llm-gateway/, docs/containers.md).
--
-- Runners no longer hold the provider's API key: the scheduler serves an OpenAI-compatible
-- gateway and gives each runner a credential of its own, bound to its job and lease. The
-- scheduler keeps only its SHA-256 here; hd_llm_admit accepts it while that lease is the
-- job's current, unexpired one, on any host (a restarted scheduler's gateway too).
--
-- Budgets: hd_llm_usage counts tokens and cost per account, UTC day, job and model;
-- hd_llm_budgets caps an account's tokens (and/or USD) per UTC day. Before a request is
-- sent, hd_llm_admit reserves its most tokens (the prompt as estimated plus its output
-- limit) under a per-account lock; a request that would take the day's total past the
-- budget is refused and never reaches the provider. hd_llm_record swaps the reservation
-- for the usage the provider reported. The job fails LLM_BUDGET_EXCEEDED and is queued
-- again for the start of the next UTC day (trigger below). Re-runnable.

create table if not exists public.hd_llm_budgets (
  account_id uuid primary key,
  -- Tokens (prompt + completion) per UTC day; NULL: the scheduler's HD_LLM_DAILY_TOKEN_BUDGET.
  daily_tokens bigint check (daily_tokens >= 0),
  -- Estimated cost per UTC day in USD (prices from the scheduler's HD_LLM_PRICES); NULL: none.
  daily_cost_usd numeric check (daily_cost_usd >= 0),
  updated_at timestamptz not null default now()
);

create table if not exists public.hd_llm_usage (
  account_id uuid not null,
  day date not null,
  job_id uuid not null,
  model text not null,
  requests integer not null default 0,
  -- Requests the budget refused (never sent).
  refused integer not null default 0,
  prompt_tokens bigint not null default 0,
  completion_tokens bigint not null default 0,
  -- Part of prompt_tokens the provider served from its prompt cache.
  cached_tokens bigint not null default 0,
  cost_usd numeric not null default 0,
  -- Held by requests in flight (their most possible tokens and cost).
  reserved_tokens bigint not null default 0,
  reserved_cost_usd numeric not null default 0,
  updated_at timestamptz not null default now(),
  primary key (account_id, day, job_id, model)
);
create index if not exists hd_llm_usage_job_idx on public.hd_llm_usage (job_id);

do $$
declare
  t text;
begin
  foreach t in array array['hd_llm_budgets', 'hd_llm_usage'] loop
    execute format('alter table public.%I enable row level security', t);
    execute format('drop policy if exists hd_members_read on public.%I', t);
    execute format(
      'create policy hd_members_read on public.%I for select to authenticated
         using (public.has_role_on_account(account_id))', t);
    execute format('revoke all on public.%I from anon, authenticated', t);
    execute format('grant select on public.%I to authenticated', t);
    execute format('grant all on public.%I to service_role', t);
  end loop;
end
$$;

-- Runner credentials of the gateway, by SHA-256 (hex); no client role reads them.
create table if not exists hd_private.llm_credentials (
  token_sha256 text primary key,
  job_id uuid not null,
  lease_token uuid not null,
  valid_until timestamptz not null
);
revoke all on hd_private.llm_credentials from public;

-- Registers a runner's gateway credential for the job's current lease.
create or replace function public.hd_grant_llm_credential(
  p_job_id uuid, p_lease_token uuid, p_token_sha256 text, p_valid_until timestamptz,
  p_now timestamptz default now())
returns void
language plpgsql volatile
as $$
begin
  perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
  insert into hd_private.llm_credentials (token_sha256, job_id, lease_token, valid_until)
  values (p_token_sha256, p_job_id, p_lease_token, p_valid_until)
  on conflict (token_sha256) do nothing;
end
$$;

-- Forgets the credentials whose lease is no longer the job's current one (or past
-- valid_until); hd_llm_admit refuses those anyway. Returns how many went.
create or replace function public.hd_drop_llm_credentials(p_now timestamptz default now())
returns integer
language sql volatile
as $$
  with gone as (
    delete from hd_private.llm_credentials c
     where c.valid_until <= p_now
        or not exists (select 1 from public.hd_ingestion_jobs j
                        where j.id = c.job_id and j.status = 'running'
                          and j.lease_token = c.lease_token)
    returning 1)
  select count(*)::integer from gone
$$;

-- One gateway request: the credential's job (refused unless its lease is current), then
-- the account's budget for the UTC day of p_now. p_tokens / p_cost: the request's most
-- possible tokens and cost, reserved until hd_llm_record where the account has a budget
-- (without one nothing is written: a read, no lock). Returns jsonb: verdict `admitted` |
-- `refused` (credential) | `budget`, job_id, account_id, day, reserved, and for `budget`
-- the tokens used (reservations included) and the budget. Usage and reservations are
-- committed without waiting for the WAL flush (synchronous_commit off for the
-- transaction): other sessions see them at once; a database crash may lose the last few,
-- which is accounting, not the queue.
create or replace function public.hd_llm_admit(
  p_token_sha256 text, p_model text, p_tokens bigint, p_cost numeric default 0,
  p_default_daily_tokens bigint default null, p_now timestamptz default now())
returns jsonb
language plpgsql volatile
as $$
declare
  v_job_id uuid;
  v_account uuid;
  v_day date := (p_now at time zone 'UTC')::date;
  v_tokens bigint;
  v_usd numeric;
  v_used bigint;
  v_cost numeric;
begin
  select j.id, j.account_id into v_job_id, v_account
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
                              'account_id', v_account, 'day', v_day, 'reserved', false);
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
  return jsonb_build_object('verdict', 'admitted', 'job_id', v_job_id,
                            'account_id', v_account, 'day', v_day, 'reserved', true);
end
$$;

-- After the provider answered (or failed): the requests and the usage the provider
-- reported are counted, and hd_llm_admit's reservations (reserved_*, 0 where it made
-- none) released, on the admissions' rows. p_rows: a jsonb array of {account_id, day,
-- job_id, model, reserved_tokens, reserved_cost_usd, prompt_tokens, completion_tokens,
-- cached_tokens, cost_usd}; the gateway sends the answers that came back while its
-- previous call ran in one call, so the writes do not grow with the requests in flight.
drop function if exists public.hd_llm_record(
  uuid, date, uuid, text, bigint, numeric, bigint, bigint, bigint, numeric, timestamptz);
create or replace function public.hd_llm_record(p_rows jsonb, p_now timestamptz default now())
returns void
language plpgsql volatile
as $$
declare
  r record;
begin
  perform set_config('synchronous_commit', 'off', true);
  -- Rows in key order: two calls at once lock them in the same order, never a deadlock.
  for r in
    select x.account_id, x.day, x.job_id, x.model, count(*)::integer as requests,
           sum(x.reserved_tokens)::bigint as reserved_tokens,
           sum(x.reserved_cost_usd) as reserved_cost_usd,
           sum(x.prompt_tokens)::bigint as prompt_tokens,
           sum(x.completion_tokens)::bigint as completion_tokens,
           sum(x.cached_tokens)::bigint as cached_tokens,
           sum(x.cost_usd) as cost_usd
      from jsonb_to_recordset(p_rows) as x(
             account_id uuid, day date, job_id uuid, model text, reserved_tokens bigint,
             reserved_cost_usd numeric, prompt_tokens bigint, completion_tokens bigint,
             cached_tokens bigint, cost_usd numeric)
     group by x.account_id, x.day, x.job_id, x.model
     order by x.account_id, x.day, x.job_id, x.model
  loop
    insert into public.hd_llm_usage as u
      (account_id, day, job_id, model, requests, prompt_tokens, completion_tokens,
       cached_tokens, cost_usd, updated_at)
    values (r.account_id, r.day, r.job_id, r.model, r.requests, r.prompt_tokens,
            r.completion_tokens, r.cached_tokens, r.cost_usd, p_now)
    on conflict (account_id, day, job_id, model) do update
      set requests = u.requests + excluded.requests,
          reserved_tokens = greatest(u.reserved_tokens - r.reserved_tokens, 0),
          reserved_cost_usd = greatest(u.reserved_cost_usd - r.reserved_cost_usd, 0),
          prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
          completion_tokens = u.completion_tokens + excluded.completion_tokens,
          cached_tokens = u.cached_tokens + excluded.cached_tokens,
          cost_usd = u.cost_usd + excluded.cost_usd,
          updated_at = p_now;
  end loop;
end
$$;

-- An account's daily budget (NULLs: the configured default tokens, no cost cap).
create or replace function public.hd_set_llm_budget(
  p_account_id uuid, p_daily_tokens bigint, p_daily_cost_usd numeric default null)
returns public.hd_llm_budgets
language sql volatile
as $$
  insert into public.hd_llm_budgets as b (account_id, daily_tokens, daily_cost_usd)
  values (p_account_id, p_daily_tokens, p_daily_cost_usd)
  on conflict (account_id) do update
    set daily_tokens = excluded.daily_tokens, daily_cost_usd = excluded.daily_cost_usd,
        updated_at = now()
  returning *
$$;

-- A job refused by its budget is retried once the budget period (the UTC day) resets,
-- not after the usual backoff: an earlier attempt would be refused again.
create or replace function public.hd__retry_after_budget_reset()
returns trigger
language plpgsql
as $$
begin
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
  when (old.status = 'running' and new.status = 'queued'
        and new.error_code = 'LLM_BUDGET_EXCEEDED')
  execute function public.hd__retry_after_budget_reset();

select public.hd__lock_down_functions();

notify pgrst, 'reload schema';
