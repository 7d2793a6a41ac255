-- 00010: least privilege. A runner container holds a credential that reaches its own
-- job and nothing else; the scheduler's and the service role's stay with the scheduler.
--
-- Two roles, NOLOGIN here (the operator gives them a password, or PostgREST switches to
-- them from a JWT; see docs/containers.md):
--   hd_runner     EXECUTE on the functions that take a lease token, nothing else: no
--                 table, no claim, no enqueue, no job it does not hold the token of.
--   hd_scheduler  every hd_ function (claim, reap, requeue, cancel, enqueue, logs …) and
--                 read access to jobs and their logs for the operator commands.
-- The functions run as their owner (SECURITY DEFINER, empty search_path), so neither role
-- needs a table privilege to do its work; every function derives account_id from the
-- leased job row, so the token is the only key a runner has, and it opens one job.
-- Re-runnable.

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'hd_runner') then
    create role hd_runner nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'hd_scheduler') then
    create role hd_scheduler nologin noinherit;
  end if;
  -- PostgREST logs in as authenticator and switches to the role a runner's JWT names.
  if exists (select 1 from pg_roles where rolname = 'authenticator') then
    grant hd_runner to authenticator;
  end if;
end
$$;

grant usage on schema public to hd_runner, hd_scheduler;
revoke all on all tables in schema public from hd_runner;
grant select on public.hd_ingestion_jobs, public.hd_job_logs to hd_scheduler;

-- Extensions live in their own schema, as on Supabase: on a plain PostgreSQL 00001's
-- pgcrypto landed in public, where PostgREST offered gen_salt, armor, dearmor … to anon.
create schema if not exists extensions;
do $$
begin
  if exists (select 1 from pg_extension
              where extname = 'pgcrypto' and extnamespace = 'public'::regnamespace) then
    alter extension pgcrypto set schema extensions;
  end if;
end
$$;

-- Makerkit grants this to authenticated (RLS policies call it); nobody else needs it.
revoke all on function public.has_role_on_account(uuid, varchar) from public, anon;
grant execute on function public.has_role_on_account(uuid, varchar) to authenticated, service_role;

-- The login role of one job's runner on the postgres transport (hd_create_job_role).
create or replace function public.hd__job_role_name(p_job_id uuid)
returns text
language sql immutable
as $$
  select 'hd_job_' || replace(p_job_id::text, '-', '')
$$;

-- A runner's JWT names its job (claim job_id); through PostgREST the claims are set by
-- the server from the verified token, so this holds even against a runner that learned
-- another job's lease token. A direct connection has no claims: the token fences it.
create or replace function public.hd__assert_runner_job(p_job_id uuid)
returns void
language plpgsql stable
as $$
declare
  v_claims jsonb := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
begin
  if v_claims ->> 'role' = 'hd_runner' and (v_claims ->> 'job_id') is distinct from p_job_id::text then
    raise exception 'permission denied: this runner credential is for job %, not job %',
      coalesce(v_claims ->> 'job_id', '(none)'), p_job_id
      using errcode = '42501';
  end if;
  -- A job's own login role (postgres transport, hd_create_job_role) is bound the same way.
  if session_user::text like 'hd\_job\_%' and session_user::text <> public.hd__job_role_name(p_job_id) then
    raise exception 'permission denied: this runner credential (%) is not for job %',
      session_user, p_job_id
      using errcode = '42501';
  end if;
end
$$;

-- 00003's lease check, plus the runner claim check, and the job's state (status, error
-- code) told only to a caller holding the job's current or last lease: a stranger who
-- guesses a job id learns nothing about it.
create or replace function public.hd__lock_leased_job(
  p_job_id uuid, p_lease_token uuid, p_now timestamptz)
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  perform public.hd__assert_runner_job(p_job_id);
  select * into v_job from public.hd_ingestion_jobs where id = p_job_id for update;
  -- A NULL token holds nothing (`null is distinct from null` would let it pass).
  if not found or p_lease_token is null
     or (v_job.lease_token is distinct from p_lease_token
         and v_job.ended_lease_token is distinct from p_lease_token) then
    raise exception 'lease lost: job % is not held by this lease', p_job_id
      using errcode = 'HDL01', detail = json_build_object('status', null)::text;
  end if;
  if v_job.status <> 'running' or v_job.lease_token is distinct from p_lease_token
     or v_job.lease_expires_at <= p_now then
    raise exception 'lease lost: job % is % (%), lease %', p_job_id, v_job.status,
        coalesce(v_job.error_code, 'no error'),
        case when v_job.lease_token is distinct from p_lease_token then 'held by another attempt'
             else 'expired' end
      using errcode = 'HDL01',
            detail = json_build_object('status', v_job.status, 'error_code', v_job.error_code)::text;
  end if;
  return v_job;
end
$$;

create or replace function public.hd__share_leased_job(
  p_job_id uuid, p_lease_token uuid, p_now timestamptz)
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  perform public.hd__assert_runner_job(p_job_id);
  select * into v_job from public.hd_ingestion_jobs
   where id = p_job_id and status = 'running' and lease_token = p_lease_token
     and lease_expires_at > p_now
     for share;
  if not found then
    -- Raises HDL01 (with the job's state for its own lease holder).
    return public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
  end if;
  return v_job;
end
$$;

-- 00003's heartbeat with the runner claim check (its fast path skips the lease helpers).
create or replace function public.hd_heartbeat(
  p_job_id uuid, p_lease_token uuid, p_lease_seconds integer default 60,
  p_now timestamptz default now())
returns timestamptz
language plpgsql volatile
as $$
declare
  -- Capped: a runner must not make its lease outlive it (the reaper would never come).
  v_expires timestamptz := p_now + make_interval(secs => least(p_lease_seconds, 3600));
begin
  perform public.hd__assert_runner_job(p_job_id);
  update public.hd_ingestion_jobs
     set lease_expires_at = v_expires, updated_at = p_now
   where id = p_job_id and status = 'running' and lease_token = p_lease_token
     and lease_expires_at > p_now;
  if not found then
    perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
    raise exception 'lease lost: job %', p_job_id using errcode = 'HDL01';
  end if;
  return v_expires;
end
$$;

-- What a runner handed a lease does first: renew the lease (proving it is still held)
-- and read its job. Replaces a plain SELECT, which a runner has no right to.
create or replace function public.hd_adopt_lease(
  p_job_id uuid, p_lease_token uuid, p_lease_seconds integer default 60,
  p_now timestamptz default now())
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  perform public.hd_heartbeat(p_job_id, p_lease_token, p_lease_seconds, p_now);
  select * into v_job from public.hd_ingestion_jobs where id = p_job_id;
  return v_job;
end
$$;

-- 00007's hd_complete_job (pipelines), with the runner claim check first.
create or replace function public.hd_complete_job(
  p_job_id uuid, p_lease_token uuid, p_stats jsonb default '{}'::jsonb,
  p_now timestamptz default now())
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
  v_next_stages jsonb;
  v_stage text;
  v_key text;
  v_next_id uuid;
begin
  perform public.hd__assert_runner_job(p_job_id);
  -- Fast path: one UPDATE that checks the lease itself. A separate SELECT … FOR UPDATE
  -- first would write the row twice (measured: about a fifth of the claim+complete cost).
  update public.hd_ingestion_jobs
     set status = 'completed', finished_at = p_now, updated_at = p_now,
         lease_token = null, lease_expires_at = null,
         progress_percent = 100, progress_step = 'completed',
         error = null, error_code = null, error_details = null,
         debug = jsonb_set(coalesce(debug, '{}'::jsonb), '{stats}',
                           coalesce(debug -> 'stats', '{}'::jsonb) || coalesce(p_stats, '{}'::jsonb))
   where id = p_job_id and status = 'running' and lease_token = p_lease_token
     and lease_expires_at > p_now
  returning * into v_job;
  if not found then
    -- Raises HDL01 with the job's state; it cannot pass, the UPDATE above just failed.
    perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
    raise exception 'lease lost: job %', p_job_id using errcode = 'HDL01';
  end if;
  v_next_stages := v_job.debug -> 'next_stages';
  if jsonb_typeof(v_next_stages) = 'array' and jsonb_typeof(v_next_stages -> 0) = 'string' then
    v_stage := v_next_stages ->> 0;
    v_key := format('pipeline:%s:%s', v_job.id, v_stage);
    insert into public.hd_ingestion_jobs
      (account_id, document_id, job_type, debug, priority, max_attempts, run_after,
       idempotency_key)
    values (v_job.account_id, v_job.document_id, v_stage,
            jsonb_build_object(
              'next_stages', v_next_stages - 0,
              'pipeline', jsonb_build_object(
                'root_job_id', coalesce(v_job.debug #>> '{pipeline,root_job_id}', v_job.id::text),
                'parent_job_id', v_job.id)),
            v_job.priority, v_job.max_attempts, p_now, v_key)
    on conflict (idempotency_key) where idempotency_key is not null do nothing
    returning id into v_next_id;
    if v_next_id is null then
      select j.id into v_next_id from public.hd_ingestion_jobs j where j.idempotency_key = v_key;
    end if;
    update public.hd_ingestion_jobs
       set debug = jsonb_set(debug, '{stats,next_job}',
                             jsonb_build_object('id', v_next_id, 'job_type', v_stage))
     where id = p_job_id
    returning * into v_job;
  end if;
  return v_job;
end
$$;

-- Locks that only these functions can take. Advisory locks are open to every session
-- (pg_advisory_lock is PUBLIC, cannot be revoked on Supabase, and pg_locks shows every held
-- key), so a runner could hold another tenant's key and stall its writes or the claim;
-- a row lock in a schema no client role can reach cannot be taken from outside.
create schema if not exists hd_private;
revoke all on schema hd_private from public;
create table if not exists hd_private.locks (scope text primary key);

-- Waits for, then holds until the transaction ends, the lock named p_scope.
create or replace function public.hd__lock(p_scope text)
returns void
language plpgsql volatile
as $$
begin
  insert into hd_private.locks (scope) values (p_scope) on conflict (scope) do nothing;
  perform 1 from hd_private.locks l where l.scope = p_scope for update;
end
$$;

-- Takes the lock named p_scope if it is free; false if another transaction holds it.
create or replace function public.hd__try_lock(p_scope text)
returns boolean
language plpgsql volatile
as $$
begin
  insert into hd_private.locks (scope) values (p_scope) on conflict (scope) do nothing;
  perform 1 from hd_private.locks l where l.scope = p_scope for update skip locked;
  return found;
end
$$;

-- 00007's graph write: an account's graph writes take turns on hd__lock, not an advisory lock.
create or replace function public.hd_write_document_graph(
  p_job_id uuid, p_lease_token uuid, p_nodes jsonb, p_edges jsonb,
  p_now timestamptz default now())
returns table (nodes_inserted integer, nodes_existing integer, edges_inserted integer,
               edges_updated integer, edges_unchanged integer, edges_removed integer)
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
  v_doc jsonb;
  v_nodes_inserted integer;
  v_nodes_total integer;
begin
  v_job := public.hd__share_leased_job(p_job_id, p_lease_token, p_now);
  v_doc := to_jsonb(v_job.document_id::text);
  -- Edges are read, merged and written back: two documents of one account must not
  -- interleave that (lost update), so graph writes of an account take turns.
  perform public.hd__lock('hd_kg:' || v_job.account_id::text);

  with input as (
    select distinct on (n ->> 'node_type', n ->> 'normalized_label')
           n ->> 'node_type' as node_type, n ->> 'normalized_label' as key, n ->> 'label' as label
      from jsonb_array_elements(p_nodes) n
     order by n ->> 'node_type', n ->> 'normalized_label', n ->> 'label'
  ), ins as (
    insert into public.hd_kg_nodes
      (account_id, node_type, label, normalized_label, created_at, updated_at)
    select v_job.account_id, i.node_type, i.label, i.key, p_now, p_now from input i
    on conflict (account_id, node_type, normalized_label) do nothing
    returning 1
  )
  select (select count(*) from ins), (select count(*) from input)
    into v_nodes_inserted, v_nodes_total;

  return query
  with edge_in as (
    select s.id as source_id, e ->> 'relation' as relation, t.id as target_id, ev
      from jsonb_array_elements(p_edges) e
      join public.hd_kg_nodes s on s.account_id = v_job.account_id
       and s.node_type = e ->> 'source_type' and s.normalized_label = e ->> 'source_key'
      join public.hd_kg_nodes t on t.account_id = v_job.account_id
       and t.node_type = e ->> 'target_type' and t.normalized_label = e ->> 'target_key'
     cross join lateral jsonb_array_elements(e -> 'evidence') ev
  ), mine as (
    -- This document's evidence, checked against its own interpretations.
    select distinct ei.source_id, ei.relation, ei.target_id,
           jsonb_build_object('document_id', v_doc, 'chunk_id', i.chunk_id,
                              'interpretation_id', i.id,
                              'quote', left(coalesce(ei.ev ->> 'quote', ''), 500)) as item
      from edge_in ei
      join public.hd_interpretations i on i.id = (ei.ev ->> 'interpretation_id')::uuid
       and i.account_id = v_job.account_id and i.document_id = v_job.document_id
  ), keys as (
    select m.source_id, m.relation, m.target_id from mine m
    union
    select x.source_node_id, x.relation, x.target_node_id from public.hd_kg_edges x
     where x.account_id = v_job.account_id
       and x.evidence @> jsonb_build_array(jsonb_build_object('document_id', v_doc))
  ), others as (
    -- Evidence of the account's other documents on the same edges, kept as it is.
    select k.source_id, k.relation, k.target_id, it as item
      from keys k
      join public.hd_kg_edges x on x.account_id = v_job.account_id
       and x.source_node_id = k.source_id and x.relation = k.relation
       and x.target_node_id = k.target_id
     cross join lateral jsonb_array_elements(x.evidence) it
     where it -> 'document_id' is distinct from v_doc
  ), final as (
    select k.source_id, k.relation, k.target_id,
           coalesce(jsonb_agg(u.item order by u.item ->> 'document_id', u.item ->> 'chunk_id',
                                              u.item ->> 'interpretation_id')
                      filter (where u.item is not null), '[]'::jsonb) as evidence
      from keys k
      left join (select * from mine union all select * from others) u
        on u.source_id = k.source_id and u.relation = k.relation and u.target_id = k.target_id
     group by k.source_id, k.relation, k.target_id
  ), upserted as (
    insert into public.hd_kg_edges as x
      (account_id, source_node_id, relation, target_node_id, evidence, created_at, updated_at)
    select v_job.account_id, f.source_id, f.relation, f.target_id, f.evidence, p_now, p_now
      from final f where f.evidence <> '[]'::jsonb
    on conflict (account_id, source_node_id, relation, target_node_id) do update
       set evidence = excluded.evidence, updated_at = excluded.updated_at
     where x.evidence is distinct from excluded.evidence
    returning (xmax = 0) as is_insert
  ), removed as (
    delete from public.hd_kg_edges x using final f
     where x.account_id = v_job.account_id and x.source_node_id = f.source_id
       and x.relation = f.relation and x.target_node_id = f.target_id
       and f.evidence = '[]'::jsonb
    returning 1
  )
  select v_nodes_inserted, v_nodes_total - v_nodes_inserted,
         (select count(*) filter (where u.is_insert) from upserted u)::integer,
         (select count(*) filter (where not u.is_insert) from upserted u)::integer,
         ((select count(*) from final f where f.evidence <> '[]'::jsonb)
           - (select count(*) from upserted))::integer,
         (select count(*) from removed)::integer;
end
$$;


-- One login role per running job (postgres transport), made by the scheduler: member of
-- hd_runner, its password valid until the job's time limit. Runners of different jobs
-- then cannot end each other's sessions or read each other's queries (PostgreSQL allows
-- both within one role), and hd__assert_runner_job binds the role to its job. The roles
-- made are listed, so that only they are ever dropped (roles are per server, not per
-- database). Creating roles needs the functions' owner to have CREATEROLE (Supabase's
-- `postgres` has it); where it does not, give runners HD_RUNNER_DATABASE_URL instead.
create table if not exists hd_private.job_roles (
  role_name text primary key,
  job_id uuid not null,
  created_at timestamptz not null default now());

create or replace function public.hd_create_job_role(
  p_job_id uuid, p_lease_token uuid, p_password text, p_valid_until timestamptz,
  p_now timestamptz default now())
returns text
language plpgsql volatile
as $$
declare
  v_role text := public.hd__job_role_name(p_job_id);
begin
  perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
  if length(coalesce(p_password, '')) < 24 then
    raise exception 'a job role password must have at least 24 characters' using errcode = '22023';
  end if;
  if exists (select 1 from pg_catalog.pg_roles r where r.rolname = v_role) then
    execute format('alter role %I login password %L valid until %L', v_role, p_password,
                   p_valid_until);
  else
    execute format('create role %I login inherit connection limit 16 password %L valid until %L in role hd_runner',
                   v_role, p_password, p_valid_until);
  end if;
  insert into hd_private.job_roles (role_name, job_id) values (v_role, p_job_id)
  on conflict (role_name) do nothing;
  return v_role;
end
$$;

-- Drops the roles this database made for jobs that no longer run (the one of p_job_id,
-- or all of them), ending their sessions first (a runner that outlived its job).
create or replace function public.hd_drop_job_roles(p_job_id uuid default null)
returns integer
language plpgsql volatile
as $$
declare
  v_role text;
  v_count integer := 0;
begin
  for v_role in
    select jr.role_name from hd_private.job_roles jr
     where (p_job_id is null or jr.job_id = p_job_id)
       and not exists (select 1 from public.hd_ingestion_jobs j
                        where j.id = jr.job_id and j.status = 'running')
     for update skip locked
  loop
    perform pg_catalog.pg_terminate_backend(a.pid)
       from pg_catalog.pg_stat_activity a where a.usename = v_role;
    execute format('drop role if exists %I', v_role);
    delete from hd_private.job_roles where role_name = v_role;
    v_count := v_count + 1;
  end loop;
  return v_count;
end
$$;

-- The grant matrix, applied to every hd_ function by every migration that ends with
-- `select public.hd__lock_down_functions();`. PostgreSQL grants EXECUTE to PUBLIC by
-- default (and Supabase's default privileges to anon and authenticated), which through
-- PostgREST would mean anyone with the anon key; so each function is revoked from all
-- and granted back by this list. Internal helpers (hd__*) are callable by no one: the
-- functions that use them run as the owner. A new function reaches hd_runner only by
-- being named here.
create or replace function public.hd__lock_down_functions()
returns void
language plpgsql volatile
as $$
declare
  v_runner_functions constant text[] := array[
    'hd_adopt_lease', 'hd_heartbeat', 'hd_report_progress', 'hd_complete_job',
    'hd_fail_job', 'hd_release_job',
    'hd_upsert_assets', 'hd_list_document_files', 'hd_replace_document_chunks',
    'hd_count_chunks_to_interpret', 'hd_list_chunks_to_interpret',
    'hd_upsert_interpretations', 'hd_list_document_interpretations',
    'hd_write_document_graph', 'hd_list_document_nodes', 'hd_get_node_context',
    'hd_record_synthesis'];
  f record;
begin
  for f in
    select p.oid::regprocedure as signature, p.proname, p.prorettype
      from pg_proc p
     where p.pronamespace = 'public'::regnamespace and p.proname like 'hd\_%'
  loop
    execute format('revoke all on function %s from public, anon, authenticated, service_role, hd_runner, hd_scheduler',
                   f.signature);
    continue when f.proname like 'hd\_\_%';
    if f.prorettype <> 'trigger'::regtype then
      execute format('alter function %s security definer set search_path = %L', f.signature, '');
    end if;
    execute format('grant execute on function %s to service_role, hd_scheduler', f.signature);
    if f.proname = any (v_runner_functions) then
      execute format('grant execute on function %s to hd_runner', f.signature);
    end if;
  end loop;
end
$$;

select public.hd__lock_down_functions();

notify pgrst, 'reload schema';
