-- 00008: runner output in hd_job_logs, to the last line.
--
-- The scheduler stores what each runner prints (hd_append_job_logs, lease-checked). But a
-- runner settles its own job (complete, fail, hand back) and only then prints its last
-- lines and exits, so the scheduler's final batch arrives after the lease has ended and
-- hd__lock_leased_job refuses it. The job row therefore keeps the lease that ended last
-- and the attempt it belonged to: its holder, and no one else, may still append lines to
-- that attempt. A newer attempt's lines stay fenced by its own lease. Additive, re-runnable.

alter table public.hd_ingestion_jobs
  add column if not exists ended_lease_token uuid,
  add column if not exists ended_lease_attempt integer;

-- One place for every way a lease ends (complete, fail, release, cancel, reap, and any
-- later function): whatever clears or replaces lease_token.
create or replace function public.hd__remember_ended_lease()
returns trigger
language plpgsql
as $$
begin
  new.ended_lease_token := old.lease_token;
  new.ended_lease_attempt := old.attempts;
  return new;
end
$$;

drop trigger if exists hd_ingestion_jobs_ended_lease on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_ended_lease
  before update of lease_token on public.hd_ingestion_jobs
  for each row
  when (old.lease_token is not null and new.lease_token is distinct from old.lease_token)
  execute function public.hd__remember_ended_lease();

-- Appends runner log lines ({seq, level, message, fields, logged_at}) to the attempt of
-- the caller's lease: the live one, or the one that ended last (the runner's final lines).
-- A repeated seq is ignored so a retried batch does not duplicate lines.
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
  select * into v_job from public.hd_ingestion_jobs where id = p_job_id;
  if found and v_job.ended_lease_token = p_lease_token then
    v_attempt := v_job.ended_lease_attempt;
  else
    v_job := public.hd__share_leased_job(p_job_id, p_lease_token, p_now);
    v_attempt := v_job.attempts;
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
