-- 00030: what a runner stores through a signed upload URL (Supabase Storage, scoped
-- credentials) is checked against what it declared. A signed upload URL cannot carry a size
-- (Storage's token holds the key, upsert and expiry only; limits are per bucket), so before,
-- a hostile runner could begin an artifact of 1 byte and store up to the bucket's
-- file_size_limit under that key, past the job's max_output_bytes.
--   * pending_artifacts.granted: the scheduler signed an upload URL for this line
--     (hd_grant_artifact_upload, replacing its hd_begun_artifact_size question).
--   * hd_record_artifact (00025, whole): where Storage's schema is there (storage.objects,
--     the same database on Supabase), the object's size (metadata->>'size') must be the
--     declared one, and a granted key must hold an object: HDA02 otherwise, nothing recorded.
--   * hd_begin_artifact (00025, whole): an earlier lease's granted lines stay (the objects
--     behind them are unchecked) until the scheduler removes their objects and takes them
--     (hd_take_unrecorded_uploads) after the runner ended.
-- The grants are signed without upsert (scheduler/upload-grants.ts), and the scheduler
-- removes an object at a key before it grants it again: a checked, recorded object cannot be
-- overwritten through a URL granted earlier. Re-runnable.

alter table hd_private.pending_artifacts
  add column if not exists granted boolean not null default false;

create or replace function public.hd_begin_artifact(
  p_job_id uuid, p_lease_token uuid, p_kind text, p_name text, p_size_bytes bigint,
  p_now timestamptz default now())
returns table (bucket text, storage_path text)
language plpgsql volatile
as $$
declare
  v_target record;
begin
  select * into v_target
    from public.hd__artifact_target(p_job_id, p_lease_token, p_kind, p_name, p_size_bytes, p_now);
  delete from public.hd_artifacts a
   where a.job_id = p_job_id and a.kind = p_kind and a.name = p_name;
  -- An earlier lease's lines go, but granted ones: their objects wait for the scheduler.
  delete from hd_private.pending_artifacts p
   where p.job_id = p_job_id and p.lease_token <> p_lease_token and not p.granted;
  -- A granted key stays granted (checked at record) until it is recorded.
  insert into hd_private.pending_artifacts as p
    (job_id, kind, name, lease_token, storage_path, size_bytes)
  values (p_job_id, p_kind, p_name, p_lease_token, v_target.storage_path, p_size_bytes)
  on conflict (job_id, kind, name) do update
     set lease_token = excluded.lease_token, storage_path = excluded.storage_path,
         size_bytes = excluded.size_bytes;
  return query select 'hd_outputs'::text, v_target.storage_path;
end
$$;

create or replace function public.hd_record_artifact(
  p_job_id uuid, p_lease_token uuid, p_kind text, p_name text, p_content_type text,
  p_size_bytes bigint, p_sha256 text, p_now timestamptz default now())
returns setof public.hd_artifacts
language plpgsql volatile
as $$
declare
  v_target record;
  v_granted boolean;
  v_stored bigint;
  v_found integer := 0;
begin
  select * into v_target
    from public.hd__artifact_target(p_job_id, p_lease_token, p_kind, p_name, p_size_bytes, p_now);
  if p_content_type is null or p_content_type !~ '^[a-z]+/[a-z0-9.+-]{1,80}$' then
    raise exception 'artifact content type % is not valid', coalesce(quote_literal(left(p_content_type, 100)), 'null')
      using errcode = '22023';
  end if;
  if p_sha256 is null or p_sha256 !~ '^[0-9a-f]{64}$' then
    raise exception 'artifact sha256 must be 64 lowercase hex digits' using errcode = '22023';
  end if;
  select p.granted into v_granted from hd_private.pending_artifacts p
   where p.job_id = p_job_id and p.kind = p_kind and p.name = p_name;
  -- Storage keeps each object's row here (Supabase: same database); read at run time, as
  -- the schema may come after this migration or not at all (fs storage, plain PostgreSQL).
  if to_regclass('storage.objects') is not null then
    execute 'select (o.metadata ->> ''size'')::bigint from storage.objects o
              where o.bucket_id = $1 and o.name = $2'
       into v_stored using 'hd_outputs', v_target.storage_path;
    get diagnostics v_found = row_count;
  end if;
  if v_found > 0 and v_stored is distinct from p_size_bytes then
    raise exception 'artifact %/% of job %: the object stored at hd_outputs/% is % bytes, not the % bytes declared; nothing recorded',
      p_kind, p_name, p_job_id, v_target.storage_path, coalesce(v_stored::text, 'of unknown size'), p_size_bytes
      using errcode = 'HDA02',
            detail = json_build_object('declared', p_size_bytes, 'stored', v_stored)::text;
  end if;
  if v_found = 0 and coalesce(v_granted, false) and to_regclass('storage.objects') is not null then
    raise exception 'artifact %/% of job %: nothing is stored at hd_outputs/% (an upload URL was granted for it); nothing recorded',
      p_kind, p_name, p_job_id, v_target.storage_path
      using errcode = 'HDA02',
            detail = json_build_object('declared', p_size_bytes, 'stored', null)::text;
  end if;
  delete from hd_private.pending_artifacts p
   where p.job_id = p_job_id and p.kind = p_kind and p.name = p_name;
  return query
  insert into public.hd_artifacts as a
    (account_id, job_id, batch_id, kind, name, bucket, storage_path, content_type,
     size_bytes, sha256, attempt, created_at)
  values ((v_target.job).account_id, p_job_id, (v_target.job).batch_id, p_kind, p_name,
          'hd_outputs', v_target.storage_path, p_content_type, p_size_bytes, p_sha256,
          (v_target.job).attempts, p_now)
  on conflict (job_id, kind, name) do update
     set content_type = excluded.content_type, size_bytes = excluded.size_bytes,
         sha256 = excluded.sha256, attempt = excluded.attempt, created_at = excluded.created_at
  returning a.*;
end
$$;

-- The grant service (scheduler only), before it signs: the declared size of the artifact
-- this lease began under this key and has not recorded (null: none, no grant), and the
-- line marked granted, so that hd_record_artifact checks the stored object.
create or replace function public.hd_grant_artifact_upload(
  p_job_id uuid, p_lease_token uuid, p_storage_path text)
returns bigint
language sql volatile
as $$
  update hd_private.pending_artifacts p set granted = true
   where p.job_id = p_job_id and p.lease_token = p_lease_token
     and p.storage_path = p_storage_path
  returning p.size_bytes
$$;

-- Its question before 00030, now answered by hd_grant_artifact_upload.
drop function if exists public.hd_begun_artifact_size(uuid, uuid, text);

-- After a runner ended (scheduler only): the keys of granted, unrecorded artifacts of the
-- job's leases that are no longer live, taken off the list; the scheduler removes their
-- objects (whatever a runner stored there was never checked).
create or replace function public.hd_take_unrecorded_uploads(p_job_id uuid)
returns table (storage_path text)
language sql volatile
as $$
  delete from hd_private.pending_artifacts p
   where p.job_id = p_job_id and p.granted
     and not exists (select 1 from public.hd_ingestion_jobs j
                      where j.id = p.job_id and j.status = 'running'
                        and j.lease_token = p.lease_token)
  returning p.storage_path
$$;

notify pgrst, 'reload schema';

select public.hd__lock_down_functions();
