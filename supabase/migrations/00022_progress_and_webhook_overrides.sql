-- 00022: progress steps of the worker concept with a percent that only rises within an
-- attempt; a webhook URL of a job's or a batch's own (its payload), delivered from the
-- outbox besides the account's endpoints. Re-runnable.

-- A runner's steps: initializing, downloading, processing_pages:i/n (pages of a file),
-- processing:i/n (other units) or processing (no total known), postprocessing. `claimed`,
-- `released` and `completed` are set by the queue functions, never reported.
create or replace function public.hd__valid_progress_step(p_step text)
returns boolean
language sql immutable
as $$
  select p_step ~ '^(initializing|downloading|processing|postprocessing)$'
      or (p_step ~ '^processing(_pages)?:[0-9]{1,9}/[0-9]{1,9}$'
          and split_part(split_part(p_step, ':', 2), '/', 1)::integer
              <= split_part(p_step, '/', 2)::integer)
$$;

-- The percent never goes down within an attempt: a report below the recorded percent is
-- stale (reports of pages OCRed in parallel can arrive out of order) and is ignored whole,
-- its step too; it is not an error, a job never fails over its progress bar. A claim sets
-- 0 again, so each attempt starts over. An unknown step is refused (22023), naming it.
create or replace function public.hd_report_progress(
  p_job_id uuid, p_lease_token uuid, p_percent numeric, p_step text default null,
  p_now timestamptz default now())
returns void
language plpgsql volatile
as $$
begin
  if p_step is not null and not public.hd__valid_progress_step(p_step) then
    raise exception 'hd_report_progress: unknown progress step %; expected initializing, downloading, processing_pages:i/n, processing:i/n, processing or postprocessing (i <= n)',
      left(p_step, 80) using errcode = '22023';
  end if;
  perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
  update public.hd_ingestion_jobs
     set progress_percent = least(100, greatest(0, coalesce(p_percent, progress_percent))),
         progress_step = coalesce(p_step, progress_step), updated_at = p_now
   where id = p_job_id
     and coalesce(least(100, greatest(0, p_percent)), progress_percent) >= progress_percent;
end
$$;

-- Webhook URL of a job (debug.webhook_url) or a batch (hd_batches.webhook_url): its end
-- events go there too, from the same outbox, with the same retries, guard and delivery log.
-- Signed with the account's signing secret (one per account, made on first use, read by
-- operators and the web app's backend through hd_webhook_signing_secret): never a secret
-- in the payload, which members and the job's runner read.
-- The URL rule is written out in each check, not a function: a check runs with the rights
-- of whoever inserts (the web app), and hd_ functions are callable by service roles only.
-- http(s), a host without credentials, no whitespace, at most 2048 characters.
alter table public.hd_ingestion_jobs
  drop constraint if exists hd_ingestion_jobs_webhook_url_check;
alter table public.hd_ingestion_jobs
  add constraint hd_ingestion_jobs_webhook_url_check check (
    coalesce(jsonb_typeof(debug -> 'webhook_url'), 'null') = 'null'
    or (jsonb_typeof(debug -> 'webhook_url') = 'string'
        and length(debug ->> 'webhook_url') <= 2048
        and debug ->> 'webhook_url' ~ '^https?://[^/?#@[:space:]]+([/?#][^[:space:]]*)?$'))
  not valid;

alter table public.hd_batches add column if not exists webhook_url text;
alter table public.hd_batches drop constraint if exists hd_batches_webhook_url_check;
alter table public.hd_batches
  add constraint hd_batches_webhook_url_check check (
    webhook_url is null
    or (length(webhook_url) <= 2048
        and webhook_url ~ '^https?://[^/?#@[:space:]]+([/?#][^[:space:]]*)?$'));

-- In hd_private: no client role reads it; hd_webhook_signing_secret() hands it out.
create table if not exists hd_private.webhook_signing_secrets (
  account_id uuid primary key,
  secret text not null default 'whsec_' || encode(extensions.gen_random_bytes(24), 'base64'),
  created_at timestamptz not null default now()
);
revoke all on hd_private.webhook_signing_secrets from public;

-- An outbox row goes to an endpoint, or to a URL of the job's or batch's own.
alter table public.hd_webhook_outbox alter column endpoint_id drop not null;
alter table public.hd_webhook_outbox add column if not exists url text;
alter table public.hd_webhook_outbox drop constraint if exists hd_webhook_outbox_target_check;
alter table public.hd_webhook_outbox
  add constraint hd_webhook_outbox_target_check check ((endpoint_id is null) <> (url is null));

-- The account's signing secret for its jobs' and batches' own URLs, made if missing.
create or replace function public.hd_webhook_signing_secret(p_account_id uuid)
returns text
language plpgsql volatile
as $$
declare
  v_secret text;
begin
  if p_account_id is null then
    raise exception 'hd_webhook_signing_secret: account id is required' using errcode = '22023';
  end if;
  insert into hd_private.webhook_signing_secrets (account_id) values (p_account_id)
  on conflict (account_id) do nothing;
  select secret into v_secret from hd_private.webhook_signing_secrets
   where account_id = p_account_id;
  return v_secret;
end
$$;

-- A job event's data: ids, state, progress, error, debug.stats and its artifacts (the
-- first 100 as references, no URLs, and how many there are: 00017).
create or replace function public.hd__job_event_data(p_job public.hd_ingestion_jobs)
returns jsonb
language sql stable
as $$
  select jsonb_build_object(
           'job_id', p_job.id, 'account_id', p_job.account_id, 'job_type', p_job.job_type,
           'status', p_job.status, 'document_id', p_job.document_id, 'batch_id', p_job.batch_id,
           'attempts', p_job.attempts, 'progress_percent', p_job.progress_percent,
           'progress_step', p_job.progress_step, 'error_code', p_job.error_code,
           'error', p_job.error, 'stats', coalesce(p_job.debug -> 'stats', '{}'::jsonb),
           'finished_at', p_job.finished_at,
           'artifacts', coalesce(jsonb_agg(jsonb_build_object(
             'kind', a.kind, 'name', a.name, 'bucket', a.bucket, 'key', a.storage_path,
             'content_type', a.content_type, 'bytes', a.size_bytes, 'sha256', a.sha256)
             order by a.kind, a.name) filter (where a.n <= 100), '[]'::jsonb),
           'artifacts_count', count(a.*))
    from (select x.*, row_number() over (order by x.kind, x.name) as n
            from public.hd_artifacts x where x.job_id = p_job.id) a
$$;

-- As 00017 (00013 with artifacts), plus the job's own URL; one payload for every row.
create or replace function public.hd__enqueue_job_webhooks()
returns trigger
language plpgsql security definer set search_path = ''
as $$
declare
  v_type text := 'job.' || new.status;
  v_own_url text := case when jsonb_typeof(new.debug -> 'webhook_url') = 'string'
                         then new.debug ->> 'webhook_url' end;
  v_payload jsonb;
begin
  if v_own_url is null and not exists (
       select 1 from public.hd_webhook_endpoints w
        where w.account_id = new.account_id and w.enabled and v_type = any (w.events)) then
    return null;
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

-- A batch that ends sends its event to its own URL (the account's endpoints get theirs
-- from hd__apply_batch_deltas, 00013, whose payload this one repeats).
create or replace function public.hd__enqueue_batch_webhook()
returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  perform public.hd_webhook_signing_secret(new.account_id);
  insert into public.hd_webhook_outbox (account_id, url, event_type, payload)
  values (new.account_id, new.webhook_url, 'batch.' || new.status,
          public.hd__webhook_payload('batch.' || new.status, jsonb_build_object(
            'batch_id', new.id, 'account_id', new.account_id, 'name', new.name,
            'status', new.status, 'percent', new.percent, 'total', new.total,
            'completed', new.completed, 'failed', new.failed, 'cancelled', new.cancelled,
            'finished_at', new.finished_at)));
  return null;
end
$$;

drop trigger if exists hd_batches_webhook on public.hd_batches;
create trigger hd_batches_webhook
  after update on public.hd_batches
  for each row
  when (new.webhook_url is not null and new.status <> 'active'
        and old.status is distinct from new.status)
  execute function public.hd__enqueue_batch_webhook();

-- As 00013; a row without an endpoint goes to its own URL, signed with the account's secret.
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
  select h.id, h.event_id, h.event_type, h.payload, h.attempts,
         coalesce(w.url, h.url), coalesce(w.secret, s.secret)
    from held h
    left join public.hd_webhook_endpoints w on w.id = h.endpoint_id
    left join hd_private.webhook_signing_secrets s
      on h.endpoint_id is null and s.account_id = h.account_id
   where h.status = 'pending'
   order by h.id
$$;

-- As 00013, with the batch's own webhook URL (p_webhook_url; the column's check refuses a
-- bad one, 23514). The old signature is dropped: a second one would make calls ambiguous.
drop function if exists public.hd_enqueue_batch(uuid, text, jsonb, text, timestamptz);
create or replace function public.hd_enqueue_batch(
  p_account_id uuid, p_name text, p_jobs jsonb, p_idempotency_key text default null,
  p_now timestamptz default now(), p_webhook_url text default null)
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

  insert into public.hd_batches
    (account_id, name, idempotency_key, webhook_url, created_at, updated_at)
  values (p_account_id, p_name, p_idempotency_key, p_webhook_url, p_now, p_now)
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

select public.hd__lock_down_functions();

notify pgrst, 'reload schema';
