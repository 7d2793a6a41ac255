-- A budget refusal (LLM_BUDGET_EXCEEDED, retryable) queues the job for the next UTC day
-- with its attempt refunded (00015, 00027). Unbounded, a job that needs more than the
-- account's daily budget ran every day for ever, spending the budget each time, and a
-- runner could fail its job with that code to be retried for ever. Now at most
-- 7 deferrals a job (a week of budget periods), counted in debug.llm_budget_deferrals;
-- the 8th refusal is an ordinary retryable failure: it spends an attempt, and fails the
-- job once its attempts are used up.
create or replace function public.hd__retry_after_budget_reset()
returns trigger
language plpgsql
as $$
declare
  v_deferrals integer := coalesce((old.debug ->> 'llm_budget_deferrals')::integer, 0);
begin
  if v_deferrals >= 7 then
    return new;
  end if;
  new.status := 'queued';
  new.finished_at := null;
  new.attempts := greatest(old.attempts - 1, 0);
  new.run_after := greatest(
    new.run_after,
    (date_trunc('day', new.updated_at at time zone 'UTC') + interval '1 day') at time zone 'UTC');
  new.debug := jsonb_set(coalesce(new.debug, '{}'::jsonb), '{llm_budget_deferrals}',
                         to_jsonb(v_deferrals + 1));
  return new;
end
$$;

select public.hd__lock_down_functions();
