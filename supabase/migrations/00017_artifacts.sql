-- 00017: artifacts, the files a job uploads as its results (page texts, page images,
-- previews, archives). The object lies in the private bucket hd_outputs under
-- accounts/{account_id}/jobs/{job_id}/{kind}/{name}; its row in hd_artifacts says what it
-- is (kind, content type, size, SHA-256). Both are written for a leased job only, and the
-- key is built here from the leased job's own ids, never taken from the caller:
--   1. hd_begin_artifact: checks the lease, the name and the job's output quota, drops the
--      row of an earlier upload under the same (job, kind, name), returns the key;
--   2. the runner uploads the object (fs: a folder only its job may write; Supabase: a
--      signed upload URL the scheduler mints for that one key after step 1);
--   3. hd_record_artifact: checks again, writes the row.
-- So a row is never left naming an object that is being replaced or was never stored, and
-- an upload that broke off leaves at most an object no row names. Re-runnable.

create table if not exists public.hd_artifacts (
  id uuid primary key default gen_random_uuid(),
  account_id uuid not null,
  job_id uuid not null,
  batch_id uuid,
  -- What it is (page_text, page_image, preview, archive, …) and its name within the kind.
  kind text not null check (kind ~ '^[a-z][a-z0-9_]{0,39}$'),
  name text not null check (length(name) between 1 and 300),
  bucket text not null,
  storage_path text not null,
  content_type text not null,
  size_bytes bigint not null check (size_bytes >= 0),
  sha256 text not null check (sha256 ~ '^[0-9a-f]{64}$'),
  -- The attempt that uploaded it.
  attempt integer not null,
  created_at timestamptz not null default now(),
  unique (job_id, kind, name)
);
create index if not exists hd_artifacts_account_created_idx
  on public.hd_artifacts (account_id, created_at desc);
create index if not exists hd_artifacts_batch_idx
  on public.hd_artifacts (batch_id) where batch_id is not null;

alter table public.hd_artifacts enable row level security;
drop policy if exists hd_members_read on public.hd_artifacts;
create policy hd_members_read on public.hd_artifacts for select to authenticated
  using (public.has_role_on_account(account_id));
revoke all on public.hd_artifacts from anon, authenticated;
grant select on public.hd_artifacts to authenticated;
grant all on public.hd_artifacts to service_role;

-- 00002's placeholder, which nothing ever wrote (no name, type or checksum to tell a
-- user what a row is); hd_artifacts replaces it. A re-run of 00002 makes it again, empty.
drop table if exists public.hd_job_artifacts;

-- The private outputs bucket, where Supabase Storage's schema exists (not on a bare
-- PostgreSQL: fs storage makes the folder when it first writes).
do $$
begin
  if to_regclass('storage.buckets') is not null then
    execute $sql$insert into storage.buckets (id, name, public) values ('hd_outputs', 'hd_outputs', false)
                 on conflict (id) do nothing$sql$;
  end if;
end
$$;

-- The checks both steps make; returns the leased job and the object's key.
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
  -- A job's outputs together stay under its payload's max_output_bytes (default 1 GiB).
  v_limit := case when job.debug ->> 'max_output_bytes' ~ '^[0-9]{1,15}$'
                  then (job.debug ->> 'max_output_bytes')::bigint else 1073741824 end;
  select coalesce(sum(a.size_bytes), 0) into v_used from public.hd_artifacts a
   where a.job_id = job.id and (a.kind, a.name) is distinct from (p_kind, p_name);
  if v_used + p_size_bytes > v_limit then
    raise exception 'artifact %/% of % bytes would take job % past its output limit of % bytes (% in use; payload max_output_bytes)',
      p_kind, p_name, p_size_bytes, job.id, v_limit, v_used
      using errcode = 'HDA01',
            detail = json_build_object('limit', v_limit, 'used', v_used, 'size', p_size_bytes)::text;
  end if;
  storage_path := 'accounts/' || job.account_id || '/jobs/' || job.id || '/' || p_kind || '/' || p_name;
end
$$;

-- Step 1: where the object goes; an earlier row under the same name is dropped first.
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
  return query select 'hd_outputs'::text, v_target.storage_path;
end
$$;

-- Step 3: the row of an object stored at the key step 1 gave; a re-run replaces it.
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

-- A job's webhook events name its artifacts (kind, name, key, size, SHA-256; no URLs):
-- 00022's hd__job_event_data, which builds every job event's data, adds them.

insert into hd_private.runner_functions (proname)
values ('hd_begin_artifact'), ('hd_record_artifact')
on conflict do nothing;

select public.hd__lock_down_functions();

notify pgrst, 'reload schema';
