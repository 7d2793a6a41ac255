-- 00026: the LLM gateway checks a runner's credential before it reads the request's body
-- (scheduler/llm-gateway/credentials.ts). It knows the credentials it issued in memory;
-- a credential it did not issue (a runner re-adopted after a scheduler restart) is looked
-- up here, once, without reading a byte of the body and without touching the budget:
-- hd_llm_admit (00015) stays the authoritative check, after the body is read and before
-- the provider is called. Callable by the scheduler's roles only (hd__lock_down_functions).
-- Re-runnable.

-- The credential's job and account while its lease is the job's current, unexpired one
-- (hd_llm_admit's first query); NULL otherwise, for a token never issued too.
create or replace function public.hd_llm_credential(
  p_token_sha256 text, p_now timestamptz default now())
returns jsonb
language sql stable
as $$
  select jsonb_build_object('job_id', j.id, 'account_id', j.account_id,
                            'valid_until', c.valid_until)
    from hd_private.llm_credentials c
    join public.hd_ingestion_jobs j on j.id = c.job_id and j.lease_token = c.lease_token
   where c.token_sha256 = p_token_sha256 and c.valid_until > p_now
     and j.status = 'running' and j.lease_expires_at > p_now
$$;

notify pgrst, 'reload schema';

select public.hd__lock_down_functions();
