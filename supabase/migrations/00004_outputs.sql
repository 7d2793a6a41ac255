-- 00004: output writes. Each one checks the caller's lease and takes account_id (and
-- document_id) from the leased job row, never from the rows it is given, so input
-- content cannot move data into another tenant.

-- The lease check of every output read and write (here and in later files): like
-- hd__lock_leased_job, but FOR SHARE, so parallel writes of one job (import batches, LLM
-- requests, log lines) do not queue behind each other, while complete, fail, cancel and
-- reap (FOR UPDATE) still wait for every write in flight to finish.
create or replace function public.hd__share_leased_job(
  p_job_id uuid, p_lease_token uuid, p_now timestamptz)
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  select * into v_job from public.hd_ingestion_jobs
   where id = p_job_id and status = 'running' and lease_token = p_lease_token
     and lease_expires_at > p_now
     for share;
  if not found then
    -- Raises HDL01 with the job's current state.
    return public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
  end if;
  return v_job;
end
$$;

-- Upserts assets from a JSON array of {title, source_type, source_ref, metadata}.
-- Rows repeated within one call collapse to the last one. Unchanged rows are not
-- rewritten, so a re-run reports them as unchanged and leaves updated_at alone.
create or replace function public.hd_upsert_assets(
  p_job_id uuid, p_lease_token uuid, p_rows jsonb, p_now timestamptz default now())
returns table (inserted integer, updated integer, unchanged integer)
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  v_job := public.hd__share_leased_job(p_job_id, p_lease_token, p_now);
  return query
  with input as (
    -- jsonb_to_recordset reads each element once (cheaper than ->> per field).
    select distinct on (r.source_type, r.source_ref)
           r.source_type, r.source_ref, r.title, coalesce(r.metadata, '{}'::jsonb) as metadata
      from rows from (jsonb_to_recordset(p_rows)
                        as (title text, source_type text, source_ref text, metadata jsonb))
           with ordinality as r(title, source_type, source_ref, metadata, ord)
     order by r.source_type, r.source_ref, r.ord desc
  ), written as (
    insert into public.hd_assets as a
      (account_id, document_id, source_type, source_ref, title, metadata, import_job_id,
       created_at, updated_at)
    select v_job.account_id, v_job.document_id, i.source_type, i.source_ref, i.title,
           i.metadata, v_job.id, p_now, p_now
      from input i
    on conflict (account_id, source_type, source_ref) do update
       set title = excluded.title, metadata = excluded.metadata,
           document_id = excluded.document_id, import_job_id = excluded.import_job_id,
           updated_at = excluded.updated_at
     where (a.title, a.metadata, a.document_id)
           is distinct from (excluded.title, excluded.metadata, excluded.document_id)
    returning (xmax = 0) as is_insert
  )
  select (count(*) filter (where w.is_insert))::integer,
         (count(*) filter (where not w.is_insert))::integer,
         (jsonb_array_length(p_rows) - count(*))::integer
    from written w;
end
$$;

-- Appends runner log lines ({seq, level, message, fields, logged_at}) for the current
-- attempt; a repeated seq is ignored so a retried batch does not duplicate lines.
create or replace function public.hd_append_job_logs(
  p_job_id uuid, p_lease_token uuid, p_lines jsonb, p_now timestamptz default now())
returns integer
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
  v_count integer;
begin
  v_job := public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
  insert into public.hd_job_logs (account_id, job_id, attempt, seq, logged_at, level, message, fields)
  select v_job.account_id, v_job.id, v_job.attempts, (l ->> 'seq')::integer,
         coalesce((l ->> 'logged_at')::timestamptz, p_now), coalesce(l ->> 'level', 'info'),
         coalesce(l ->> 'message', ''), l -> 'fields'
    from jsonb_array_elements(p_lines) as l
  on conflict (job_id, attempt, seq) do nothing;
  get diagnostics v_count = row_count;
  return v_count;
end
$$;

-- Only the service role runs the worker's functions: PostgreSQL grants EXECUTE to
-- PUBLIC by default, which through PostgREST would mean anyone with the anon key.
-- Later migrations that add functions end with `select public.hd__lock_down_functions();`.
create or replace function public.hd__lock_down_functions()
returns void
language plpgsql volatile
as $$
declare
  f regprocedure;
begin
  for f in
    select p.oid::regprocedure from pg_proc p
     where p.pronamespace = 'public'::regnamespace and p.proname like 'hd\_%'
  loop
    execute format('revoke all on function %s from public, anon, authenticated', f);
    execute format('grant execute on function %s to service_role', f);
  end loop;
end
$$;

select public.hd__lock_down_functions();
