-- 00006: what the `supabase` transport needs from the database: PostgREST's login role
-- where Supabase does not provide it, and one read-only report for `hd-runner doctor`.
-- Re-runnable. On a Supabase project the role exists and the block below changes nothing.

-- PostgREST logs in as `authenticator` and switches to the role named in the request's
-- JWT (anon, authenticated, service_role). Created without LOGIN: whoever runs PostgREST
-- against a plain PostgreSQL gives it a password (`alter role authenticator login
-- password '…'`), as the tests do.
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator noinherit nologin;
    grant anon, authenticated, service_role to authenticator;
  end if;
end
$$;

-- One call that tells an operator which database this is and how its queue stands,
-- through either transport (PostgREST exposes only functions and tables of `public`).
-- Security definer: it reads the migration bookkeeping, which the service role cannot
-- read directly; it returns no secret and no row content. Exact counts by status are a
-- scan of the jobs table, acceptable for an operator's command (about 1 s per million
-- rows), never called on a hot path.
create or replace function public.hd_doctor_report(p_now timestamptz default now())
returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
declare
  v_migrations jsonb;
  v_source text;
  v_queue jsonb;
  v_realtime boolean;
begin
  if to_regclass('public.hd_schema_migrations') is not null then
    v_source := 'hd_schema_migrations';
    select coalesce(jsonb_agg(jsonb_build_object('version', m.version, 'name', m.name,
                                                 'checksum', m.checksum, 'applied_at', m.applied_at)
                              order by m.version), '[]'::jsonb)
      into v_migrations from public.hd_schema_migrations m;
  elsif to_regclass('supabase_migrations.schema_migrations') is not null then
    -- Applied with `supabase db push`: versions only, no checksums.
    v_source := 'supabase_migrations';
    execute $q$select coalesce(jsonb_agg(jsonb_build_object('version', version, 'name', name)
                                         order by version), '[]'::jsonb)
                 from supabase_migrations.schema_migrations$q$
      into v_migrations;
  end if;

  select jsonb_build_object(
           'by_status', coalesce((select jsonb_object_agg(s.status, s.n) from (
               select j.status, count(*) as n from public.hd_ingestion_jobs j group by j.status) s),
             '{}'::jsonb),
           'oldest_queued_at', (select min(j.created_at) from public.hd_ingestion_jobs j
                                 where j.status = 'queued'),
           'next_run_after', (select min(j.run_after) from public.hd_ingestion_jobs j
                               where j.status = 'queued'),
           'expired_leases', (select count(*) from public.hd_ingestion_jobs j
                               where j.status = 'running' and j.lease_expires_at <= p_now),
           'newest_created_at', (select max(j.created_at) from public.hd_ingestion_jobs j))
    into v_queue;

  if exists (select 1 from pg_catalog.pg_publication where pubname = 'supabase_realtime') then
    v_realtime := exists (select 1 from pg_catalog.pg_publication_tables
                           where pubname = 'supabase_realtime' and schemaname = 'public'
                             and tablename = 'hd_ingestion_jobs');
  end if;

  return jsonb_build_object(
    'database', current_database(),
    'server_version', current_setting('server_version'),
    'now', p_now,
    'migrations_source', v_source,
    'migrations', v_migrations,
    'queue', v_queue,
    'realtime_publication', v_realtime);
end
$$;

select public.hd__lock_down_functions();

-- PostgREST caches the schema; new or changed functions are callable through it only
-- after a reload. Delivered at commit; ignored where no PostgREST listens.
notify pgrst, 'reload schema';
