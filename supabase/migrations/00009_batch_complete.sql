-- 00009: batch completion, for workers that claim N jobs at once (hd_claim_jobs with
-- p_limit) and finish them together. One UPDATE for the lot instead of one function call
-- per job; each job is still fenced by its own lease token. Jobs that name next_stages
-- go through hd_complete_job one by one, so pipelines behave exactly as there.

create or replace function public.hd_complete_jobs(
  p_job_ids uuid[], p_lease_tokens uuid[], p_stats jsonb default '{}'::jsonb,
  p_now timestamptz default now())
returns table (job_id uuid, completed boolean)
language plpgsql volatile
as $$
declare
  v_done uuid[] := '{}';
  v_id uuid;
  v_token uuid;
begin
  if cardinality(p_job_ids) is distinct from cardinality(p_lease_tokens) then
    raise exception 'hd_complete_jobs: % job ids but % lease tokens',
      cardinality(p_job_ids), cardinality(p_lease_tokens) using errcode = '22023';
  end if;
  for v_id, v_token in
    select t.id, t.tok
      from unnest(p_job_ids, p_lease_tokens) as t(id, tok)
      join public.hd_ingestion_jobs j on j.id = t.id
     where jsonb_typeof(j.debug -> 'next_stages') = 'array'
  loop
    begin
      perform public.hd_complete_job(v_id, v_token, p_stats, p_now);
      v_done := v_done || v_id;
    exception when sqlstate 'HDL01' then
      null; -- lease lost: reported as not completed below
    end;
  end loop;
  with updated as (
    update public.hd_ingestion_jobs j
       set status = 'completed', finished_at = p_now, updated_at = p_now,
           lease_token = null, lease_expires_at = null,
           progress_percent = 100, progress_step = 'completed',
           error = null, error_code = null, error_details = null,
           debug = jsonb_set(coalesce(j.debug, '{}'::jsonb), '{stats}',
                             coalesce(j.debug -> 'stats', '{}'::jsonb) || coalesce(p_stats, '{}'::jsonb))
      from unnest(p_job_ids, p_lease_tokens) as t(id, tok)
     where j.id = t.id and j.lease_token = t.tok and j.status = 'running'
       and j.lease_expires_at > p_now
    returning j.id
  )
  select v_done || coalesce(array_agg(u.id), '{}') into v_done from updated u;
  return query
    select t.id, t.id = any (v_done) from unnest(p_job_ids) as t(id);
end
$$;

select public.hd__lock_down_functions();
