-- The functions a runner may call, as rows instead of an array inside
-- hd__lock_down_functions(): a migration that adds a runner-callable function inserts its
-- name here before calling hd__lock_down_functions(), so two migrations written side by
-- side cannot drop each other's grants by redefining the function whole.
create table if not exists hd_private.runner_functions (
  proname text primary key check (proname like 'hd\_%' and proname not like 'hd\_\_%')
);
revoke all on hd_private.runner_functions from public;

insert into hd_private.runner_functions (proname)
values ('hd_adopt_lease'), ('hd_heartbeat'), ('hd_report_progress'), ('hd_complete_job'),
       ('hd_fail_job'), ('hd_release_job'),
       ('hd_upsert_assets'), ('hd_list_document_files'), ('hd_replace_document_chunks'),
       ('hd_count_chunks_to_interpret'), ('hd_list_chunks_to_interpret'),
       ('hd_upsert_interpretations'), ('hd_list_document_interpretations'),
       ('hd_write_document_graph'), ('hd_list_document_nodes'), ('hd_get_node_context'),
       ('hd_record_synthesis')
on conflict (proname) do nothing;

-- Same grant matrix as 00010; only where the runner list comes from changed.
create or replace function public.hd__lock_down_functions()
returns void
language plpgsql volatile
as $$
declare
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
    if exists (select 1 from hd_private.runner_functions r where r.proname = f.proname) then
      execute format('grant execute on function %s to hd_runner', f.signature);
    end if;
  end loop;
end
$$;

select public.hd__lock_down_functions();

notify pgrst, 'reload schema';
