-- 00011: a runner's log lines are stored until its lease has ended, also when they race
-- the lease's own end.
--
-- 00008 read the job row without a lock: a batch arriving while hd_complete_job (or fail,
-- release, cancel) was committing saw the lease as still live, then waited on the row
-- lock in hd__share_leased_job, re-checked the row as committed (lease gone) and was
-- refused with HDL01, although the ended lease's own lines are accepted a moment later.
-- Now the row is read FOR SHARE first: the batch waits for the settling transaction and
-- decides on the committed row. The caller's lease is accepted while it is the job's
-- lease (also expired but not yet reaped: no newer attempt exists) or the one that ended
-- last; only a newer attempt's lease or a stranger is refused. Same signature as 00008.

create or replace function public.hd_append_job_logs(
  p_job_id uuid, p_lease_token uuid, p_lines jsonb, p_now timestamptz default now())
returns integer
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
  v_attempt integer;
  v_count integer;
begin
  select * into v_job from public.hd_ingestion_jobs where id = p_job_id for share;
  if found and v_job.lease_token = p_lease_token then
    v_attempt := v_job.attempts;
  elsif found and v_job.ended_lease_token = p_lease_token then
    v_attempt := v_job.ended_lease_attempt;
  else
    -- HDL01 with the job's state, as hd__lock_leased_job raises it, but from the row read
    -- here: upgrading this share lock to FOR UPDATE would deadlock with a concurrent
    -- refused batch.
    raise exception 'lease lost: job % is %, lease held by another attempt', p_job_id,
        coalesce(v_job.status, 'gone')
      using errcode = 'HDL01',
            detail = json_build_object('status', v_job.status, 'error_code', v_job.error_code)::text;
  end if;
  insert into public.hd_job_logs (account_id, job_id, attempt, seq, logged_at, level, message, fields)
  select v_job.account_id, v_job.id, v_attempt, (l ->> 'seq')::integer,
         coalesce((l ->> 'logged_at')::timestamptz, p_now), coalesce(l ->> 'level', 'info'),
         coalesce(l ->> 'message', ''), nullif(l -> 'fields', 'null'::jsonb)
    from jsonb_array_elements(p_lines) as l
  on conflict (job_id, attempt, seq) do nothing;
  get diagnostics v_count = row_count;
  return v_count;
end
$$;

select public.hd__lock_down_functions();
