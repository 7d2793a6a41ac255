-- 00013: batches, and webhooks on the ends of jobs and batches. A batch is a set of jobs enqueued together (all or none) whose counts
-- by state and status the database keeps exact itself, so no client ever recounts.
--
-- Counts are kept by statement-level triggers on hd_ingestion_jobs, whoever changes a
-- job (claim, complete, fail, retry, reap, release, requeue, cancel, or a direct write by
-- the web app): the functions of 00003-00012 stay as they are. Statement-level, so that a
-- statement touching jobs of several batches (a claim of N jobs, hd_complete_jobs, a
-- reaper pass) locks their batch rows once each and in id order: row-level triggers would
-- lock them in row order and two such statements could deadlock. Re-runnable.

create table if not exists public.hd_batches (
  id uuid primary key default gen_random_uuid(),
  account_id uuid not null,
  name text not null check (length(name) between 1 and 200),
  -- Caller's key: enqueueing the same batch again returns the first one, nothing added.
  idempotency_key text check (length(idempotency_key) between 1 and 200),
  -- active while any job is queued or running; then failed (a job failed for good),
  -- cancelled (none failed, one was cancelled) or completed.
  status text not null default 'active'
    check (status in ('active', 'completed', 'failed', 'cancelled')),
  total integer not null default 0,
  queued integer not null default 0,
  running integer not null default 0,
  completed integer not null default 0,
  failed integer not null default 0,
  cancelled integer not null default 0,
  percent numeric(5, 2) generated always as (
    case when total = 0 then 0
         else round(100.0 * (completed + failed + cancelled) / total, 2) end) stored,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  finished_at timestamptz,
  unique (account_id, idempotency_key),
  -- The triggers below keep these true; a wrong delta is an error, not a silent drift.
  check (least(total, queued, running, completed, failed, cancelled) >= 0
         and queued + running + completed + failed + cancelled = total)
);
create index if not exists hd_batches_account_created_idx
  on public.hd_batches (account_id, created_at desc);

alter table public.hd_ingestion_jobs
  add column if not exists batch_id uuid references public.hd_batches (id);
create index if not exists hd_ingestion_jobs_batch_idx
  on public.hd_ingestion_jobs (batch_id, status) where batch_id is not null;

-- RLS as for jobs: members read their account's batches; the functions write.
alter table public.hd_batches enable row level security;
drop policy if exists hd_members_read on public.hd_batches;
create policy hd_members_read on public.hd_batches for select to authenticated
  using (public.has_role_on_account(account_id));
revoke all on public.hd_batches from anon, authenticated, hd_runner;
grant select on public.hd_batches to authenticated, hd_scheduler;
grant all on public.hd_batches to service_role;

-- Webhooks: per-account endpoints, and an outbox that is also the delivery log. Events are
-- written by triggers in the transaction that changes the job or batch (nothing is lost
-- when a scheduler dies); schedulers deliver them (scheduler/webhooks.ts), signed per the
-- Standard Webhooks spec with the endpoint's secret, at least once with a stable id.
create table if not exists public.hd_webhook_endpoints (
  id uuid primary key default gen_random_uuid(),
  account_id uuid not null,
  url text not null check (url ~ '^https?://'),
  -- whsec_ + base64 of 24 random bytes, as Standard Webhooks libraries expect.
  secret text not null default 'whsec_' || encode(extensions.gen_random_bytes(24), 'base64'),
  events text[] not null default array['job.completed', 'job.failed', 'batch.completed',
                                       'batch.failed', 'batch.cancelled'],
  enabled boolean not null default true,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  check (events <@ array['job.completed', 'job.failed', 'batch.completed', 'batch.failed',
                         'batch.cancelled'])
);
create index if not exists hd_webhook_endpoints_account_idx
  on public.hd_webhook_endpoints (account_id) where enabled;

create table if not exists public.hd_webhook_outbox (
  id bigint generated always as identity primary key,
  -- The webhook-id header: the same on every attempt, so receivers drop duplicates.
  event_id text not null unique default 'msg_' || replace(gen_random_uuid()::text, '-', ''),
  account_id uuid not null,
  endpoint_id uuid not null references public.hd_webhook_endpoints (id) on delete cascade,
  event_type text not null,
  payload jsonb not null,
  status text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
  attempts integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  last_status_code integer,
  last_error text,
  last_latency_ms integer,
  created_at timestamptz not null default now(),
  delivered_at timestamptz
);
create index if not exists hd_webhook_outbox_due_idx
  on public.hd_webhook_outbox (next_attempt_at) where status = 'pending';
create index if not exists hd_webhook_outbox_account_idx
  on public.hd_webhook_outbox (account_id, created_at desc);

-- Members read their endpoints (not the secret: no column grant) and their delivery log;
-- the scheduler role (operator commands) reads both, secrets neither.
alter table public.hd_webhook_endpoints enable row level security;
alter table public.hd_webhook_outbox enable row level security;
drop policy if exists hd_members_read on public.hd_webhook_endpoints;
create policy hd_members_read on public.hd_webhook_endpoints for select to authenticated
  using (public.has_role_on_account(account_id));
drop policy if exists hd_members_read on public.hd_webhook_outbox;
create policy hd_members_read on public.hd_webhook_outbox for select to authenticated
  using (public.has_role_on_account(account_id));
revoke all on public.hd_webhook_endpoints, public.hd_webhook_outbox
  from anon, authenticated, hd_runner, hd_scheduler;
grant select (id, account_id, url, events, enabled, created_at, updated_at)
  on public.hd_webhook_endpoints to authenticated, hd_scheduler;
grant select on public.hd_webhook_outbox to authenticated, hd_scheduler;
grant all on public.hd_webhook_endpoints, public.hd_webhook_outbox to service_role;

-- The Standard Webhooks body: {type, timestamp, data}.
create or replace function public.hd__webhook_payload(p_type text, p_data jsonb)
returns jsonb
language sql stable
as $$
  select jsonb_build_object('type', p_type, 'timestamp', now(), 'data', p_data)
$$;

-- Which count a job is in. A cancelled job is failed with CANCELLED (00003).
create or replace function public.hd__batch_bucket(p_status text, p_error_code text)
returns text
language sql immutable
as $$
  select case when p_status = 'failed' and p_error_code = 'CANCELLED' then 'cancelled'
              else p_status end
$$;

-- Applies per-row deltas (batch_id, bucket, +1/-1) to the batches they name and settles
-- each batch's status from its counts.
create or replace function public.hd__apply_batch_deltas(p_deltas jsonb)
returns void
language plpgsql volatile
as $$
begin
  with d as (
    select (e ->> 'batch_id')::uuid as batch_id, e ->> 'bucket' as bucket,
           (e ->> 'delta')::integer as delta
      from jsonb_array_elements(p_deltas) as e
  ), sums as (
    select batch_id, sum(delta) as total,
           sum(delta) filter (where bucket = 'queued') as queued,
           sum(delta) filter (where bucket = 'running') as running,
           sum(delta) filter (where bucket = 'completed') as completed,
           sum(delta) filter (where bucket = 'failed') as failed,
           sum(delta) filter (where bucket = 'cancelled') as cancelled
      from d group by batch_id
  ), locked as (
    select b.id from public.hd_batches b join sums s on s.batch_id = b.id
     order by b.id for update of b
  )
  update public.hd_batches b
     set total = b.total + s.total,
         queued = b.queued + coalesce(s.queued, 0),
         running = b.running + coalesce(s.running, 0),
         completed = b.completed + coalesce(s.completed, 0),
         failed = b.failed + coalesce(s.failed, 0),
         cancelled = b.cancelled + coalesce(s.cancelled, 0),
         updated_at = now()
    from sums s
   where b.id = s.batch_id and b.id in (select id from locked);

  -- Status from the counts just written (same transaction, rows still locked); a batch
  -- that ends gets its webhook event in this transaction too.
  with ended as (
    update public.hd_batches b
       set status = case when b.queued + b.running > 0 then 'active'
                         when b.failed > 0 then 'failed'
                         when b.cancelled > 0 then 'cancelled'
                         else 'completed' end,
           finished_at = case when b.queued + b.running > 0 then null
                              else coalesce(b.finished_at, now()) end
     where b.id in (select distinct (e ->> 'batch_id')::uuid from jsonb_array_elements(p_deltas) e)
       and b.status is distinct from
           case when b.queued + b.running > 0 then 'active'
                when b.failed > 0 then 'failed'
                when b.cancelled > 0 then 'cancelled'
                else 'completed' end
    returning b.*
  )
  insert into public.hd_webhook_outbox (account_id, endpoint_id, event_type, payload)
  select e.account_id, w.id, 'batch.' || e.status,
         public.hd__webhook_payload('batch.' || e.status, jsonb_build_object(
           'batch_id', e.id, 'account_id', e.account_id, 'name', e.name, 'status', e.status,
           'percent', e.percent, 'total', e.total, 'completed', e.completed,
           'failed', e.failed, 'cancelled', e.cancelled, 'finished_at', e.finished_at))
    from ended e
    join public.hd_webhook_endpoints w
      on w.account_id = e.account_id and w.enabled and ('batch.' || e.status) = any (w.events)
   where e.status <> 'active';
end
$$;

-- Runs as its owner: the web app (service_role) writes jobs directly, and the helpers
-- above are callable by no role.
create or replace function public.hd__count_batch_jobs()
returns trigger
language plpgsql security definer set search_path = ''
as $$
declare
  v_deltas jsonb;
begin
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
  for each statement execute function public.hd__count_batch_jobs();
drop trigger if exists hd_ingestion_jobs_batch_update on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_batch_update
  after update on public.hd_ingestion_jobs
  referencing old table as old_rows new table as new_rows
  for each statement execute function public.hd__count_batch_jobs();
drop trigger if exists hd_ingestion_jobs_batch_delete on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_batch_delete
  after delete on public.hd_ingestion_jobs
  referencing old table as old_rows
  for each statement execute function public.hd__count_batch_jobs();

-- Enqueues a batch: p_jobs is a JSON array of {job_type, debug, document_id, priority,
-- max_attempts, run_after}, each the arguments of hd_enqueue_job. All or none. With a key
-- already used by the account, returns that batch and adds nothing (a retried request).
create or replace function public.hd_enqueue_batch(
  p_account_id uuid, p_name text, p_jobs jsonb, p_idempotency_key text default null,
  p_now timestamptz default now())
returns public.hd_batches
language plpgsql volatile
as $$
declare
  v_batch public.hd_batches;
  v_job jsonb;
  v_index integer := 0;
begin
  if p_account_id is null then
    raise exception 'hd_enqueue_batch: account id is required' using errcode = '22023';
  end if;
  if jsonb_typeof(p_jobs) is distinct from 'array' or jsonb_array_length(p_jobs) = 0 then
    raise exception 'hd_enqueue_batch: jobs must be a non-empty JSON array' using errcode = '22023';
  end if;
  if jsonb_array_length(p_jobs) > 10000 then
    raise exception 'hd_enqueue_batch: % jobs, at most 10000 in one batch',
      jsonb_array_length(p_jobs) using errcode = '22023';
  end if;
  for v_job in select * from jsonb_array_elements(p_jobs) loop
    if jsonb_typeof(v_job) is distinct from 'object'
       or jsonb_typeof(v_job -> 'job_type') is distinct from 'string'
       or length(v_job ->> 'job_type') = 0 then
      raise exception 'hd_enqueue_batch: job % has no job_type', v_index using errcode = '22023';
    end if;
    if jsonb_typeof(coalesce(v_job -> 'debug', '{}'::jsonb)) <> 'object' then
      raise exception 'hd_enqueue_batch: job %: debug must be a JSON object', v_index
        using errcode = '22023';
    end if;
    v_index := v_index + 1;
  end loop;

  insert into public.hd_batches (account_id, name, idempotency_key, created_at, updated_at)
  values (p_account_id, p_name, p_idempotency_key, p_now, p_now)
  on conflict (account_id, idempotency_key) do nothing
  returning * into v_batch;
  if v_batch.id is null then
    select * into v_batch from public.hd_batches
     where account_id = p_account_id and idempotency_key = p_idempotency_key;
    return v_batch;
  end if;

  -- One statement: the insert trigger counts the batch's jobs once, and wakes schedulers.
  insert into public.hd_ingestion_jobs
    (account_id, document_id, job_type, debug, priority, max_attempts, run_after, batch_id)
  select p_account_id, (j ->> 'document_id')::uuid, j ->> 'job_type',
         coalesce(j -> 'debug', '{}'::jsonb), coalesce((j ->> 'priority')::integer, 0),
         greatest(coalesce((j ->> 'max_attempts')::integer, 3), 1),
         coalesce((j ->> 'run_after')::timestamptz, p_now), v_batch.id
    from jsonb_array_elements(p_jobs) with ordinality as t(j, n)
   order by n;

  select * into v_batch from public.hd_batches where id = v_batch.id;
  return v_batch;
end
$$;

-- Cancels every queued or running job of the batch, and requeues its failed and cancelled
-- ones, through hd_cancel_job and hd_requeue_job, job by job: a batch's job changes exactly
-- as a single one does (NOTIFYs included). Completed jobs stay done. The batch row is not
-- locked first: the count trigger locks it after each job row, as completions do.
create or replace function public.hd_cancel_batch(
  p_batch_id uuid, p_reason text default 'batch cancelled by operator',
  p_now timestamptz default now())
returns public.hd_batches
language plpgsql volatile
as $$
declare
  v_id uuid;
begin
  perform public.hd__assert_batch(p_batch_id);
  for v_id in
    select id from public.hd_ingestion_jobs
     where batch_id = p_batch_id and status in ('queued', 'running')
     order by id for update
  loop
    perform public.hd_cancel_job(v_id, coalesce(p_reason, 'batch cancelled'), p_now);
  end loop;
  return (select b from public.hd_batches b where b.id = p_batch_id);
end
$$;

create or replace function public.hd_requeue_batch(
  p_batch_id uuid, p_now timestamptz default now())
returns public.hd_batches
language plpgsql volatile
as $$
declare
  v_id uuid;
begin
  perform public.hd__assert_batch(p_batch_id);
  for v_id in
    select id from public.hd_ingestion_jobs
     where batch_id = p_batch_id and status = 'failed'
     order by id for update
  loop
    perform public.hd_requeue_job(v_id, p_now);
  end loop;
  return (select b from public.hd_batches b where b.id = p_batch_id);
end
$$;

create or replace function public.hd__assert_batch(p_batch_id uuid)
returns void
language plpgsql stable
as $$
begin
  if not exists (select 1 from public.hd_batches where id = p_batch_id) then
    raise exception 'batch % not found', p_batch_id using errcode = 'HDN01';
  end if;
end
$$;

-- A job that ends (completed, or failed for good: a retry is not an end) gets an event for
-- each endpoint of its account that wants it. Tenant-facing: ids, state, progress, the
-- error code and message, debug.stats; never lease tokens or other columns of debug.
-- Row-level with a WHEN: heartbeats and progress reports do not even call it.
create or replace function public.hd__enqueue_job_webhooks()
returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  insert into public.hd_webhook_outbox (account_id, endpoint_id, event_type, payload)
  select new.account_id, w.id, 'job.' || new.status,
         public.hd__webhook_payload('job.' || new.status, jsonb_build_object(
           'job_id', new.id, 'account_id', new.account_id, 'job_type', new.job_type,
           'status', new.status, 'document_id', new.document_id, 'batch_id', new.batch_id,
           'attempts', new.attempts, 'progress_percent', new.progress_percent,
           'progress_step', new.progress_step, 'error_code', new.error_code, 'error', new.error,
           'stats', coalesce(new.debug -> 'stats', '{}'::jsonb), 'finished_at', new.finished_at))
    from public.hd_webhook_endpoints w
   where w.account_id = new.account_id and w.enabled and ('job.' || new.status) = any (w.events)
   order by w.id;
  return null;
end
$$;

drop trigger if exists hd_ingestion_jobs_webhooks on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_webhooks
  after update on public.hd_ingestion_jobs
  for each row
  when (new.status in ('completed', 'failed') and old.status is distinct from new.status)
  execute function public.hd__enqueue_job_webhooks();

-- Hands out up to p_limit due deliveries with their endpoint (URL, secret); each is held
-- for p_lease_seconds (a scheduler that dies mid-delivery leaves it to be retried).
create or replace function public.hd_claim_webhook_deliveries(
  p_limit integer default 10, p_lease_seconds integer default 60, p_now timestamptz default now())
returns table (id bigint, event_id text, event_type text, payload jsonb, attempts integer,
               url text, secret text)
language sql volatile
as $$
  with due as (
    select o.id from public.hd_webhook_outbox o
     where o.status = 'pending' and o.next_attempt_at <= p_now
     order by o.next_attempt_at, o.id
     limit greatest(p_limit, 0)
     for update skip locked
  ), held as (
    -- A delivery whose holders kept dying before recording an answer ends here too.
    update public.hd_webhook_outbox o
       set status = case when o.attempts >= 12 then 'failed' else 'pending' end,
           last_error = case when o.attempts >= 12
                             then coalesce(o.last_error, 'no answer recorded in 12 attempts')
                             else o.last_error end,
           attempts = least(o.attempts + 1, 12),
           next_attempt_at = p_now + make_interval(secs => p_lease_seconds)
      from due where o.id = due.id
    returning o.*
  )
  select h.id, h.event_id, h.event_type, h.payload, h.attempts, w.url, w.secret
    from held h join public.hd_webhook_endpoints w on w.id = h.endpoint_id
   where h.status = 'pending'
   order by h.id
$$;

-- Records one delivery attempt: a 2xx delivers; otherwise retried with exponential backoff
-- (10 s doubling, capped at 6 h, equal jitter), 12 attempts (about 11 hours) before failed.
create or replace function public.hd_record_webhook_attempt(
  p_id bigint, p_status_code integer, p_error text, p_latency_ms integer,
  p_now timestamptz default now())
returns public.hd_webhook_outbox
language sql volatile
as $$
  update public.hd_webhook_outbox
     set status = case when p_status_code between 200 and 299 then 'delivered'
                       when attempts >= 12 then 'failed' else 'pending' end,
         delivered_at = case when p_status_code between 200 and 299 then p_now end,
         next_attempt_at = case when p_status_code between 200 and 299 or attempts >= 12
                                then next_attempt_at
                                else p_now + make_interval(secs =>
                                  least(21600, 10 * power(2, least(attempts - 1, 16)))
                                  * (0.5 + random() * 0.5)) end,
         last_status_code = p_status_code, last_error = left(p_error, 500),
         last_latency_ms = p_latency_ms
   where id = p_id
  returning *
$$;

-- Sends a delivery again (delivered or failed): same webhook-id, attempts from 0.
create or replace function public.hd_replay_webhook(p_id bigint, p_now timestamptz default now())
returns public.hd_webhook_outbox
language plpgsql volatile
as $$
declare
  v_row public.hd_webhook_outbox;
begin
  update public.hd_webhook_outbox
     set status = 'pending', attempts = 0, next_attempt_at = p_now, delivered_at = null
   where id = p_id
  returning * into v_row;
  if not found then
    raise exception 'webhook delivery % not found', p_id using errcode = 'HDN01';
  end if;
  return v_row;
end
$$;

-- Adds an endpoint for an account (operators, the web app's backend); the secret is
-- generated unless given, and returned once here.
create or replace function public.hd_add_webhook_endpoint(
  p_account_id uuid, p_url text, p_events text[] default null, p_secret text default null)
returns public.hd_webhook_endpoints
language sql volatile
as $$
  insert into public.hd_webhook_endpoints (account_id, url, events, secret)
  values (p_account_id, p_url,
          coalesce(p_events, array['job.completed', 'job.failed', 'batch.completed',
                                   'batch.failed', 'batch.cancelled']),
          coalesce(p_secret, 'whsec_' || encode(extensions.gen_random_bytes(24), 'base64')))
  returning *
$$;

-- What the scheduler's /metrics reports about the shared queue at scrape time: per job
-- type the queued and running jobs and the age of the oldest runnable one; the webhook
-- outbox by status. One round trip, on either transport.
create or replace function public.hd_queue_metrics(p_now timestamptz default now())
returns jsonb
language sql stable
as $$
  select jsonb_build_object(
    'job_types', coalesce((
      select jsonb_agg(jsonb_build_object(
               'job_type', g.job_type, 'queued', g.queued, 'running', g.running,
               'oldest_queued_seconds', coalesce(extract(epoch from p_now - g.oldest), 0)))
        from (select job_type,
                     count(*) filter (where status = 'queued') as queued,
                     count(*) filter (where status = 'running') as running,
                     min(run_after) filter (where status = 'queued' and run_after <= p_now)
                       as oldest
                from public.hd_ingestion_jobs where status in ('queued', 'running')
               group by job_type) g), '[]'::jsonb),
    'webhooks', (select jsonb_build_object(
                   'pending', count(*) filter (where status = 'pending'),
                   'delivered', count(*) filter (where status = 'delivered'),
                   'failed', count(*) filter (where status = 'failed'))
                   from public.hd_webhook_outbox))
$$;

-- Live progress for web UIs (supabase-js postgres_changes; Realtime applies the RLS above):
-- jobs, batches and log lines are published where Supabase Realtime's publication exists.
do $$
declare
  t text;
begin
  if exists (select 1 from pg_catalog.pg_publication
              where pubname = 'supabase_realtime' and not puballtables) then
    foreach t in array array['hd_ingestion_jobs', 'hd_batches', 'hd_job_logs'] loop
      if not exists (select 1 from pg_catalog.pg_publication_tables
                      where pubname = 'supabase_realtime' and schemaname = 'public'
                        and tablename = t) then
        execute format('alter publication supabase_realtime add table public.%I', t);
      end if;
    end loop;
  end if;
end
$$;

select public.hd__lock_down_functions();

notify pgrst, 'reload schema';
