-- Inputs by URL (issue 17): a job may name `url` instead of a storage `path`. The scheduler
-- fetches it (public addresses only, size and time limits), stores it under the account's
-- prefix, then records here where: debug.url_input, and for extract_text a file of the
-- job's document (hd_document_files), in one transaction. A retry finds it recorded and
-- does not fetch again; the runner reads the stored object as for any job. Lease-checked,
-- and for the scheduler only: not in hd_private.runner_functions, so a runner's
-- credential cannot point its own job at another object.
create or replace function public.hd_record_url_input(
  p_job_id uuid, p_lease_token uuid, p_info jsonb, p_now timestamptz default now())
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs := public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
  v_prefix text := 'accounts/' || v_job.account_id || '/url-inputs/' || v_job.id || '/';
  v_path text := p_info ->> 'path';
begin
  if jsonb_typeof(p_info) is distinct from 'object'
     or coalesce(p_info ->> 'bucket', '') !~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$' then
    raise exception 'url input: a bucket name is required' using errcode = '22023';
  end if;
  -- One plain object name under this job's own folder of its account (the canonical key
  -- rules of contract/storage-paths.ts, which the scheduler applied).
  if v_path is null or left(v_path, length(v_prefix)) <> v_prefix
     or substr(v_path, length(v_prefix) + 1) !~ '^[A-Za-z0-9_.()!''+ -]{1,200}$'
     or substr(v_path, length(v_prefix) + 1) ~ '^\.+$' then
    raise exception 'url input: path % is not an object under %', v_path, v_prefix
      using errcode = '22023';
  end if;
  if v_job.debug ->> 'url' is null then
    raise exception 'url input: job % names no url', p_job_id using errcode = '22023';
  end if;
  if v_job.job_type = 'extract_text' then
    if v_job.document_id is null then
      raise exception 'url input: extract_text job % has no document_id', p_job_id
        using errcode = '22023';
    end if;
    insert into public.hd_document_files
      (account_id, document_id, bucket, storage_path, mime_type, size_bytes)
    values (v_job.account_id, v_job.document_id, p_info ->> 'bucket', v_path,
            p_info ->> 'content_type', (p_info ->> 'bytes')::bigint)
    on conflict (account_id, bucket, storage_path) do update
      set document_id = excluded.document_id, mime_type = excluded.mime_type,
          size_bytes = excluded.size_bytes, updated_at = p_now;
  end if;
  update public.hd_ingestion_jobs
     set debug = debug || jsonb_build_object('url_input', p_info), updated_at = p_now
   where id = p_job_id
  returning * into v_job;
  return v_job;
end
$$;

select public.hd__lock_down_functions();

notify pgrst, 'reload schema';
