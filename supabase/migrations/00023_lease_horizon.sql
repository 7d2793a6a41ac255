-- No lease ends more than an hour from now, whoever writes it and with whatever clock.
-- Every lease function takes `p_now` (a moved clock for the tests), and runners may call
-- hd_heartbeat: with `p_now => '2100-01-01'` a runner stretched its own lease for decades,
-- past 00010's one-hour heartbeat cap, and a hung runner's job would never be reaped (its
-- account's running limit held forever). The row is the one place every writer passes.
-- The WHEN clause keeps the claim and heartbeat hot path at one comparison.
create or replace function public.hd__refuse_distant_lease()
returns trigger
language plpgsql
as $$
begin
  raise exception 'a lease cannot end more than an hour from now (job %, lease until %)',
    new.id, new.lease_expires_at
    using errcode = '22023';
end
$$;

drop trigger if exists hd_ingestion_jobs_lease_horizon on public.hd_ingestion_jobs;
create trigger hd_ingestion_jobs_lease_horizon
  before insert or update of lease_expires_at on public.hd_ingestion_jobs
  for each row
  when (new.lease_expires_at > statement_timestamp() + interval '1 hour 1 minute')
  execute function public.hd__refuse_distant_lease();

select public.hd__lock_down_functions();
