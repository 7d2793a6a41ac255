-- 00036: a warm runner warms its database session while it waits for its job (issue 13).
-- A fresh server process pays on the job's path for what it has not done yet: compiling
-- each plpgsql function on its first call (hd_adopt_lease: ~15 of a cold session's ~20 ms
-- of CPU), and growing its memory for the first megabytes it receives and parses (a
-- 200-page PDF's 400-chunk write: ~60 -> ~50 ms of CPU after a parse of a sample of that
-- size; bench/warm-session.ts). hd_warm_up_session does both before the job exists: it
-- calls the functions a job calls first and last with no job, each call refused and the
-- refusal caught in a subtransaction (nothing is written, no error reaches the client or
-- the server's log: an unbound warm role is refused by hd__assert_runner_job, any other
-- credential finds no job; their own statements past that check are planned at the job's
-- first call), and takes a sample of chunk rows as its argument, which the server parses
-- as the chunk write's argument is parsed. What stays is the session's own caches and
-- memory.
create or replace function public.hd_warm_up_session(p_sample jsonb default null)
returns integer
language plpgsql volatile
as $$
declare
  v_nil constant uuid := '00000000-0000-0000-0000-000000000000';
  v_refused integer := 0;
begin
  begin
    perform public.hd_adopt_lease(v_nil, v_nil, 1);
  exception when others then v_refused := v_refused + 1;
  end;
  begin
    perform public.hd_report_progress(v_nil, v_nil, 0, 'initializing');
  exception when others then v_refused := v_refused + 1;
  end;
  begin
    perform public.hd_list_document_files(v_nil, v_nil);
  exception when others then v_refused := v_refused + 1;
  end;
  begin
    perform public.hd_heartbeat(v_nil, v_nil, 1);
  exception when others then v_refused := v_refused + 1;
  end;
  begin
    perform public.hd_replace_document_chunks(v_nil, v_nil, '[]'::jsonb);
  exception when others then v_refused := v_refused + 1;
  end;
  begin
    perform public.hd_complete_job(v_nil, v_nil, '{}'::jsonb);
  exception when others then v_refused := v_refused + 1;
  end;
  -- p_sample is not read: its parse, before the call, is its use. The calls refused: six,
  -- whatever the credential (a test checks it).
  return v_refused;
end
$$;

insert into hd_private.runner_functions (proname) values ('hd_warm_up_session')
on conflict (proname) do nothing;

select public.hd__lock_down_functions();

notify pgrst, 'reload schema';
