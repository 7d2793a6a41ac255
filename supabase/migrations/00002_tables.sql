-- 00002: the worker contract's tables. Every row carries account_id; every table has
-- a unique key that makes the worker's writes idempotent upserts. Additive and
-- re-runnable: the web app may already have created hd_ingestion_jobs with the
-- contract's columns (account_id, document_id, job_type, status, attempts, error, debug).

create table if not exists public.hd_ingestion_jobs (
  id uuid primary key default gen_random_uuid(),
  account_id uuid not null,
  document_id uuid,
  job_type text not null,
  status text not null default 'queued',
  attempts integer not null default 0,
  error text,
  debug jsonb not null default '{}'::jsonb
);

-- Queue columns (02-queue.sql functions are the only writers of these).
alter table public.hd_ingestion_jobs
  add column if not exists created_at timestamptz not null default now(),
  add column if not exists updated_at timestamptz not null default now(),
  add column if not exists max_attempts integer not null default 3,
  add column if not exists priority integer not null default 0,
  add column if not exists run_after timestamptz not null default now(),
  add column if not exists lease_token uuid,
  add column if not exists lease_expires_at timestamptz,
  add column if not exists locked_by text,
  add column if not exists progress_percent numeric(5, 2) not null default 0,
  add column if not exists progress_step text,
  add column if not exists started_at timestamptz,
  add column if not exists finished_at timestamptz,
  add column if not exists error_code text,
  add column if not exists error_details jsonb,
  add column if not exists container_id text;

do $$
begin
  if not exists (select 1 from pg_constraint
                  where conname = 'hd_ingestion_jobs_status_check'
                    and conrelid = 'public.hd_ingestion_jobs'::regclass) then
    alter table public.hd_ingestion_jobs
      add constraint hd_ingestion_jobs_status_check
      check (status in ('queued', 'running', 'completed', 'failed'));
  end if;
end
$$;

-- Claim reads only queued rows in claim order: a partial index keeps that O(log n)
-- however many finished rows accumulate.
create index if not exists hd_ingestion_jobs_claim_idx
  on public.hd_ingestion_jobs (priority desc, run_after, id) where status = 'queued';
-- The reaper reads only running rows by lease expiry.
create index if not exists hd_ingestion_jobs_lease_idx
  on public.hd_ingestion_jobs (lease_expires_at) where status = 'running';
create index if not exists hd_ingestion_jobs_account_created_idx
  on public.hd_ingestion_jobs (account_id, created_at desc);
create index if not exists hd_ingestion_jobs_created_idx
  on public.hd_ingestion_jobs (created_at desc);

create table if not exists public.hd_document_files (
  id uuid primary key default gen_random_uuid(),
  account_id uuid not null,
  document_id uuid not null,
  bucket text not null default 'hd_uploads_raw',
  storage_path text not null,
  mime_type text,
  size_bytes bigint,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (account_id, bucket, storage_path)
);
create index if not exists hd_document_files_document_idx
  on public.hd_document_files (account_id, document_id);

create table if not exists public.hd_assets (
  id uuid primary key default gen_random_uuid(),
  account_id uuid not null,
  document_id uuid,
  source_type text not null,
  -- Caller's stable reference; when a line has none the runner derives one from the
  -- line's content so that re-imports stay idempotent.
  source_ref text not null,
  title text not null,
  metadata jsonb not null default '{}'::jsonb,
  import_job_id uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (account_id, source_type, source_ref)
);

create table if not exists public.hd_asset_chunks (
  id uuid primary key default gen_random_uuid(),
  account_id uuid not null,
  document_id uuid not null,
  file_id uuid,
  asset_id uuid,
  chunk_index integer not null,
  content text not null,
  page_start integer,
  page_end integer,
  char_start integer,
  char_end integer,
  content_sha256 text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (account_id, document_id, chunk_index)
);

create table if not exists public.hd_interpretations (
  id uuid primary key default gen_random_uuid(),
  account_id uuid not null,
  document_id uuid not null,
  chunk_id uuid not null,
  prompt_version text not null,
  model text,
  payload jsonb not null default '{}'::jsonb,
  usage jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (account_id, chunk_id, prompt_version)
);

create table if not exists public.hd_kg_nodes (
  id uuid primary key default gen_random_uuid(),
  account_id uuid not null,
  node_type text not null,
  label text not null,
  normalized_label text not null,
  canonical_description text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (account_id, node_type, normalized_label)
);

create table if not exists public.hd_kg_edges (
  id uuid primary key default gen_random_uuid(),
  account_id uuid not null,
  source_node_id uuid not null references public.hd_kg_nodes (id) on delete cascade,
  relation text not null,
  target_node_id uuid not null references public.hd_kg_nodes (id) on delete cascade,
  evidence jsonb not null default '[]'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (account_id, source_node_id, relation, target_node_id)
);

create table if not exists public.hd_syntheses (
  id uuid primary key default gen_random_uuid(),
  account_id uuid not null,
  node_id uuid not null references public.hd_kg_nodes (id) on delete cascade,
  version integer not null,
  content text not null,
  sources jsonb not null default '[]'::jsonb,
  model text,
  created_at timestamptz not null default now(),
  unique (account_id, node_id, version)
);

-- What changed in a node's understanding from one synthesis to the next.
create table if not exists public.hd_dynamics (
  id uuid primary key default gen_random_uuid(),
  account_id uuid not null,
  node_id uuid not null references public.hd_kg_nodes (id) on delete cascade,
  synthesis_id uuid not null references public.hd_syntheses (id) on delete cascade,
  previous_synthesis_id uuid references public.hd_syntheses (id) on delete set null,
  change_kind text not null,
  summary text,
  details jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  unique (account_id, synthesis_id)
);

create table if not exists public.hd_job_logs (
  id bigint generated always as identity primary key,
  account_id uuid not null,
  job_id uuid not null,
  attempt integer not null,
  seq integer not null,
  logged_at timestamptz not null default now(),
  level text not null,
  message text not null,
  fields jsonb,
  unique (job_id, attempt, seq)
);

create table if not exists public.hd_job_artifacts (
  id uuid primary key default gen_random_uuid(),
  account_id uuid not null,
  job_id uuid not null,
  kind text not null,
  bucket text not null,
  storage_path text not null,
  size_bytes bigint,
  sha256 text,
  created_at timestamptz not null default now(),
  unique (job_id, kind, storage_path)
);

-- RLS from the start: members read their account's rows; the service role (which
-- bypasses RLS) is the only writer; anon sees nothing.
do $$
declare
  t text;
begin
  foreach t in array array[
    'hd_ingestion_jobs', 'hd_document_files', 'hd_assets', 'hd_asset_chunks',
    'hd_interpretations', 'hd_kg_nodes', 'hd_kg_edges', 'hd_syntheses', 'hd_dynamics',
    'hd_job_logs', 'hd_job_artifacts']
  loop
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
