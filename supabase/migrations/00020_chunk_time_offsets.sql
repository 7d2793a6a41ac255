-- 00020: where in a recording a chunk of its transcript was said, as PDF chunks say which
-- pages they come from (issue 13). Seconds from the start of the file, to the
-- millisecond, taken from the transcription's segments; null for chunks of anything else.

alter table public.hd_asset_chunks
  add column if not exists seconds_start numeric(12, 3),
  add column if not exists seconds_end numeric(12, 3);

alter table public.hd_asset_chunks
  drop constraint if exists hd_asset_chunks_seconds_check;
alter table public.hd_asset_chunks
  add constraint hd_asset_chunks_seconds_check
  check (seconds_start >= 0 and seconds_end >= seconds_start
         and (seconds_start is null) = (seconds_end is null));

-- 00005's hd_replace_document_chunks, whole, with the two columns: p_chunks elements may
-- carry seconds_start and seconds_end (absent: null). Everything else is unchanged.
create or replace function public.hd_replace_document_chunks(
  p_job_id uuid, p_lease_token uuid, p_chunks jsonb, p_now timestamptz default now())
returns table (inserted integer, updated integer, unchanged integer, deleted integer)
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
  v_count integer := jsonb_array_length(p_chunks);
  v_deleted integer;
begin
  v_job := public.hd__share_leased_job(p_job_id, p_lease_token, p_now);
  if v_job.document_id is null then
    raise exception 'job % has no document_id', p_job_id using errcode = '22023';
  end if;
  if exists (
    select 1
      from jsonb_array_elements(p_chunks) with ordinality as e(value, ord)
     where (e.value ->> 'chunk_index')::integer is distinct from (e.ord - 1)::integer) then
    raise exception 'chunk_index values must be 0..% in order', v_count - 1
      using errcode = '22023';
  end if;
  -- A chunk may only point at a file of the same account and document.
  if exists (
    select 1
      from jsonb_array_elements(p_chunks) as e(value)
     where e.value ->> 'file_id' is not null
       and not exists (
         select 1 from public.hd_document_files f
          where f.id = (e.value ->> 'file_id')::uuid
            and f.account_id = v_job.account_id and f.document_id = v_job.document_id)) then
    raise exception 'a chunk refers to a file that is not part of document %', v_job.document_id
      using errcode = '22023';
  end if;

  delete from public.hd_asset_chunks c
   where c.account_id = v_job.account_id and c.document_id = v_job.document_id
     and c.chunk_index >= v_count;
  get diagnostics v_deleted = row_count;

  return query
  with written as (
    insert into public.hd_asset_chunks as c
      (account_id, document_id, file_id, chunk_index, content, page_start, page_end,
       char_start, char_end, seconds_start, seconds_end, content_sha256, created_at,
       updated_at)
    select v_job.account_id, v_job.document_id, (e.value ->> 'file_id')::uuid,
           (e.value ->> 'chunk_index')::integer, e.value ->> 'content',
           (e.value ->> 'page_start')::integer, (e.value ->> 'page_end')::integer,
           (e.value ->> 'char_start')::integer, (e.value ->> 'char_end')::integer,
           (e.value ->> 'seconds_start')::numeric(12, 3),
           (e.value ->> 'seconds_end')::numeric(12, 3),
           e.value ->> 'content_sha256', p_now, p_now
      from jsonb_array_elements(p_chunks) as e(value)
    on conflict (account_id, document_id, chunk_index) do update
       set file_id = excluded.file_id, content = excluded.content,
           page_start = excluded.page_start, page_end = excluded.page_end,
           char_start = excluded.char_start, char_end = excluded.char_end,
           seconds_start = excluded.seconds_start, seconds_end = excluded.seconds_end,
           content_sha256 = excluded.content_sha256, updated_at = excluded.updated_at
     where (c.file_id, c.content, c.page_start, c.page_end, c.char_start, c.char_end,
            c.seconds_start, c.seconds_end, c.content_sha256)
           is distinct from
           (excluded.file_id, excluded.content, excluded.page_start, excluded.page_end,
            excluded.char_start, excluded.char_end, excluded.seconds_start,
            excluded.seconds_end, excluded.content_sha256)
    returning (xmax = 0) as is_insert
  )
  select (count(*) filter (where w.is_insert))::integer,
         (count(*) filter (where not w.is_insert))::integer,
         (v_count - count(*))::integer,
         v_deleted
    from written w;
end
$$;

select public.hd__lock_down_functions();
