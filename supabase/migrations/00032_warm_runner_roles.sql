-- 00032: a warm runner's login role, made before its job exists and bound to the job at
-- hand-over (issue 13). A warm runner (HD_WARM_RUNNERS, process launcher) then opens its
-- database connection while it waits, instead of after the hand-over: a new server
-- process and a SCRAM log-in cost 50-160 ms of a job's wall time on a busy 2-core host,
-- and binding a role is one row's update where making one (hd_create_job_role) writes
-- the role catalogue.
--
-- Until it is bound the role reaches nothing: hd__assert_runner_job refuses every job to
-- an `hd_job_…` session that is neither the job's own role (00010) nor a role bound to
-- that job here. Bound once, to one job; dropped with that job's roles
-- (hd_drop_job_roles), or unbound by the scheduler that made it (hd_drop_warm_role), or,
-- left by a scheduler that died, by any scheduler's sweep once past its validity.

alter table hd_private.job_roles alter column job_id drop not null;
-- An unbound warm role's end of validity (its password's too): swept after it.
alter table hd_private.job_roles add column if not exists expires_at timestamptz;

-- A warm role's name: `hd_job_warm_` and 32 hex digits. Never a job's own role name
-- (hd__job_role_name: `hd_job_` and the job id's 32 hex digits), so it is bound only by
-- its row here.
create or replace function public.hd_create_warm_role(
  p_password text, p_valid_until timestamptz)
returns text
language plpgsql volatile
as $$
declare
  v_role text := 'hd_job_warm_' || replace(gen_random_uuid()::text, '-', '');
begin
  if length(coalesce(p_password, '')) < 24 then
    raise exception 'a job role password must have at least 24 characters' using errcode = '22023';
  end if;
  -- Valid while its runner waits; binding extends it to its job's time limit.
  if p_valid_until is null or p_valid_until <= now() or p_valid_until > now() + interval '1 day' then
    raise exception 'a warm role is valid for up to a day (valid until %)', p_valid_until
      using errcode = '22023';
  end if;
  execute format('create role %I login inherit connection limit 16 password %L valid until %L in role hd_runner',
                 v_role, p_password, p_valid_until);
  insert into hd_private.job_roles (role_name, job_id, expires_at)
  values (v_role, null, p_valid_until);
  return v_role;
end
$$;

-- Binds an unbound warm role to the leased job its runner is handed, once only, its
-- password then valid until p_valid_until (the job's time limit) instead.
create or replace function public.hd_bind_warm_role(
  p_role text, p_job_id uuid, p_lease_token uuid, p_valid_until timestamptz,
  p_now timestamptz default now())
returns void
language plpgsql volatile
as $$
begin
  perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
  if p_valid_until is null or p_valid_until <= now() or p_valid_until > now() + interval '1 day' then
    raise exception 'a job role is valid for up to a day (valid until %)', p_valid_until
      using errcode = '22023';
  end if;
  update hd_private.job_roles
     set job_id = p_job_id, expires_at = p_valid_until
   where role_name = p_role and job_id is null;
  if not found then
    raise exception 'role % is not an unbound warm runner role', p_role using errcode = '22023';
  end if;
  execute format('alter role %I valid until %L', p_role, p_valid_until);
end
$$;

-- Drops an unbound warm role (its runner ended without a job), ending its sessions.
-- Returns false for any other role: a bound one goes with its job (hd_drop_job_roles).
create or replace function public.hd_drop_warm_role(p_role text)
returns boolean
language plpgsql volatile
as $$
begin
  perform 1 from hd_private.job_roles
   where role_name = p_role and job_id is null
     for update;
  if not found then
    return false;
  end if;
  perform pg_catalog.pg_terminate_backend(a.pid)
     from pg_catalog.pg_stat_activity a where a.usename = p_role;
  execute format('drop role if exists %I', p_role);
  delete from hd_private.job_roles where role_name = p_role;
  return true;
end
$$;

-- 00010's check, with warm roles: an `hd_job_…` session reaches a job only as the job's
-- own role or as a warm role bound to it.
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
  if session_user::text like 'hd\_job\_%'
     and session_user::text <> public.hd__job_role_name(p_job_id)
     and not exists (select 1 from hd_private.job_roles jr
                      where jr.role_name = session_user::text and jr.job_id = p_job_id) then
    raise exception 'permission denied: this runner credential (%) is not for job %',
      session_user, p_job_id
      using errcode = '42501';
  end if;
end
$$;

-- 00010's sweep, with warm roles: an unbound one only once past its validity (another
-- scheduler's warm runner may be waiting with it).
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
       and case when jr.job_id is null then jr.expires_at < now()
                else not exists (select 1 from public.hd_ingestion_jobs j
                                  where j.id = jr.job_id and j.status = 'running') end
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

create index if not exists job_roles_job_id on hd_private.job_roles (job_id);

select public.hd__lock_down_functions();
