-- 00025: an upload grant (scheduler/upload-grants.ts, Supabase storage) is signed only for
-- a key hd_begin_artifact has begun for the job's current lease and hd_record_artifact has
-- not yet recorded. Before, the scheduler signed any key under the job's output folder, so
-- a runner could store objects its job's output limit (max_output_bytes) never counted.
--   * hd_private.pending_artifacts: what hd_begin_artifact began (declared size included);
--     hd_record_artifact clears its line, a later lease's first begin clears the rest.
--   * hd__artifact_target (00017, whole): the limit counts pending sizes too, or begun
--     but unrecorded artifacts would each pass it alone.
--   * hd_begin_artifact, hd_record_artifact (00017, whole): write and clear the line.
--   * hd_begun_artifact_size: the scheduler's question before it signs.
-- A signed upload URL still cannot carry a size: what is stored under a begun key is not
-- checked against its declared size here (docs/containers.md, "Trust boundary").
-- Re-runnable.

create table if not exists hd_private.pending_artifacts (
  job_id uuid not null references public.hd_ingestion_jobs (id) on delete cascade,
  kind text not null,
  name text not null,
  lease_token uuid not null,
  storage_path text not null,
  size_bytes bigint not null check (size_bytes >= 0),
  primary key (job_id, kind, name)
);
revoke all on hd_private.pending_artifacts from public;

-- Where Supabase Storage's schema exists: no one object of hd_outputs larger than the most
-- any job may store (contract/jobs.ts, max_output_bytes at most 100 GiB). The per-job limit
-- cannot be put on a signed URL; this bounds what one grant can be used for.
do $$
begin
  if to_regclass('storage.buckets') is not null then
    execute $sql$update storage.buckets set file_size_limit = 107374182400
                 where id = 'hd_outputs' and file_size_limit is null$sql$;
  end if;
end
$$;

-- 00017's checks; the output limit counts this lease's pending artifacts as well.
create or replace function public.hd__artifact_target(
  p_job_id uuid, p_lease_token uuid, p_kind text, p_name text, p_size_bytes bigint,
  p_now timestamptz, out job public.hd_ingestion_jobs, out storage_path text)
language plpgsql volatile
as $$
declare
  v_limit bigint;
  v_used bigint;
begin
  job := public.hd__share_leased_job(p_job_id, p_lease_token, p_now);
  if p_kind is null or p_kind !~ '^[a-z][a-z0-9_]{0,39}$' then
    raise exception 'artifact kind % is not valid: 1-40 of a-z, 0-9, _ (a letter first)',
      coalesce(quote_literal(p_kind), 'null') using errcode = '22023';
  end if;
  -- The canonical key rules (contract/storage-paths.ts) on a short relative name:
  -- 1-4 segments of plain characters, no "." or ".." segment.
  if p_name is null or length(p_name) > 300
     or p_name !~ '^[A-Za-z0-9_()!''+ .-]+(/[A-Za-z0-9_()!''+ .-]+){0,3}$'
     or p_name ~ '(^|/)\.{1,2}(/|$)' then
    raise exception 'artifact name % is not valid: 1-4 segments of A-Z a-z 0-9 _ - . ( ) ! '' + and space, no "." or ".." segment, 300 characters at most',
      coalesce(quote_literal(left(p_name, 320)), 'null') using errcode = '22023';
  end if;
  if p_size_bytes is null or p_size_bytes < 0 then
    raise exception 'artifact size % is not valid', p_size_bytes using errcode = '22023';
  end if;
  -- A job's outputs together stay under its payload's max_output_bytes (default 1 GiB):
  -- the recorded ones and the ones this lease began and may still upload.
  v_limit := case when job.debug ->> 'max_output_bytes' ~ '^[0-9]{1,15}$'
                  then (job.debug ->> 'max_output_bytes')::bigint else 1073741824 end;
  select coalesce(sum(a.size_bytes), 0) into v_used from public.hd_artifacts a
   where a.job_id = job.id and (a.kind, a.name) is distinct from (p_kind, p_name);
  v_used := v_used + (select coalesce(sum(p.size_bytes), 0) from hd_private.pending_artifacts p
                       where p.job_id = job.id and p.lease_token = p_lease_token
                         and (p.kind, p.name) is distinct from (p_kind, p_name));
  if v_used + p_size_bytes > v_limit then
    raise exception 'artifact %/% of % bytes would take job % past its output limit of % bytes (% in use; payload max_output_bytes)',
      p_kind, p_name, p_size_bytes, job.id, v_limit, v_used
      using errcode = 'HDA01',
            detail = json_build_object('limit', v_limit, 'used', v_used, 'size', p_size_bytes)::text;
  end if;
  storage_path := 'accounts/' || job.account_id || '/jobs/' || job.id || '/' || p_kind || '/' || p_name;
end
$$;

-- Step 1 (00017), now also the pending line the grant service reads; an earlier lease's
-- lines go (its grants end with it).
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
  delete from hd_private.pending_artifacts p
   where p.job_id = p_job_id and p.lease_token <> p_lease_token;
  insert into hd_private.pending_artifacts as p
    (job_id, kind, name, lease_token, storage_path, size_bytes)
  values (p_job_id, p_kind, p_name, p_lease_token, v_target.storage_path, p_size_bytes)
  on conflict (job_id, kind, name) do update
     set lease_token = excluded.lease_token, storage_path = excluded.storage_path,
         size_bytes = excluded.size_bytes;
  return query select 'hd_outputs'::text, v_target.storage_path;
end
$$;

-- Step 3 (00017), now also clearing the pending line: a recorded key gets no more grants.
create or replace function public.hd_record_artifact(
  p_job_id uuid, p_lease_token uuid, p_kind text, p_name text, p_content_type text,
  p_size_bytes bigint, p_sha256 text, p_now timestamptz default now())
returns setof public.hd_artifacts
language plpgsql volatile
as $$
declare
  v_target record;
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

-- The grant service's check (scheduler only): the declared size of the artifact this lease
-- began under this key and has not recorded; null when there is none.
create or replace function public.hd_begun_artifact_size(
  p_job_id uuid, p_lease_token uuid, p_storage_path text)
returns bigint
language sql stable
as $$
  select p.size_bytes from hd_private.pending_artifacts p
   where p.job_id = p_job_id and p.lease_token = p_lease_token
     and p.storage_path = p_storage_path
$$;

notify pgrst, 'reload schema';

select public.hd__lock_down_functions();
