-- 00034: hd_replace_document_chunks reads each chunk once and leaves unchanged rows alone
-- (issue 13: the write of a 1,000-page PDF's 2,000 chunks, ~3.4 MB of JSON, was the
-- largest part of extract_text after pdftotext). Measured on the server (perf, auto_explain,
-- bench/chunk-write.ts) at 2,000 chunks, 00020's body spent its time on:
-- - p_chunks, walked three times with jsonb_array_elements, each walk copying every element
--   into a tuplestore first (a fresh backend pays a page fault for each new page of those);
-- - gen_random_uuid() for every row, ~6 us each here (OpenSSL, a getpid() per call), also
--   for the rows that then conflict, and random ids that put each insert on a random leaf
--   page of the primary key (a fifth of a first write's server CPU);
-- - for a re-run, an index descent, a row lock (WAL) and a comparison per unchanged chunk.
-- Now: each chunk is read in place (p_chunks -> i) by the one statement that writes it;
-- the stored rows are read in index order and rewritten only where their chunk differs;
-- only positions past the stored ones go through the upsert; new rows get UUIDv7 ids.
-- (So a re-run no longer locks the rows it leaves as they are; writers of one document
-- take turns instead, by an advisory lock held to their commit.) Rows written by hand with
-- a negative chunk_index are left alone, as 00020 left them.
-- Same signature, counts, errors and effect as 00020 (test/chunk-write.test.ts). One
-- difference: where a call has a bad chunk_index or file AND a malformed value in an
-- earlier chunk (a non-number page, a null content), the malformed value's error can come
-- first (00020 checked every chunk before it wrote any).

-- 00020's checks, whole and in its order, raising its errors: run for a chunk that fails the
-- quick test in the write (its index is not its position, or its file is not one of the
-- document's), so that the error is the one 00020 gave for the whole call. True where every
-- chunk passes after all (a file added to the document since the write read its files).
create or replace function public.hd__check_document_chunks(
  p_chunks jsonb, p_account_id uuid, p_document_id uuid)
returns boolean
language plpgsql stable
as $$
begin
  if exists (
    select 1
      from jsonb_array_elements(p_chunks) with ordinality as e(value, ord)
     where (e.value ->> 'chunk_index')::integer is distinct from (e.ord - 1)::integer) then
    raise exception 'chunk_index values must be 0..% in order', jsonb_array_length(p_chunks) - 1
      using errcode = '22023';
  end if;
  if exists (
    select 1
      from jsonb_array_elements(p_chunks) as e(value)
     where e.value ->> 'file_id' is not null
       and not exists (
         select 1 from public.hd_document_files f
          where f.id = (e.value ->> 'file_id')::uuid
            and f.account_id = p_account_id and f.document_id = p_document_id)) then
    raise exception 'a chunk refers to a file that is not part of document %', p_document_id
      using errcode = '22023';
  end if;
  return true;
end
$$;

-- plan_cache_mode: 00033's reason, and p_chunks is read by two statements here.
-- `offset 0` keeps each chunk a value of its own: without it the planner would put
-- `p_chunks -> i` in place of every field read, copying the chunk once per field.
create or replace function public.hd_replace_document_chunks(
  p_job_id uuid, p_lease_token uuid, p_chunks jsonb, p_now timestamptz default now())
returns table (inserted integer, updated integer, unchanged integer, deleted integer)
language plpgsql volatile
set plan_cache_mode = force_generic_plan
as $$
declare
  v_job public.hd_ingestion_jobs;
  v_count integer := jsonb_array_length(p_chunks);
  v_files uuid[];
  v_deleted integer;
  v_rewritten integer;
  v_inserted integer;
  v_upserted integer;
  v_stored integer;
  v_last_stored integer;
  v_random bytea := uuid_send(gen_random_uuid());
  -- New rows' ids, UUIDv7 (RFC 9562, "monotonic random"): this call's millisecond, version
  -- 7 and 12 random bits, then the variant and a random start plus the chunk's position.
  v_id_head bytea := substring(int8send(floor(extract(epoch from clock_timestamp()) * 1000)::bigint)
                               from 3 for 6)
                     || set_byte(substring(v_random from 7 for 2), 0,
                                 (get_byte(v_random, 6) & 15) | 112);
  v_id_tail bigint := (('x' || encode(substring(v_random from 9 for 8), 'hex'))::bit(64)::bigint
                       & x'1fffffffffffffff'::bigint) | x'8000000000000000'::bigint;
begin
  -- A p_chunks read from a table column can come compressed or out of line (TOAST): read in
  -- place, it would be expanded again for every chunk, so it is expanded once here. Its
  -- size as stored then differs from its size expanded; a parameter's does not, and is not
  -- copied (3.4 MB: ~10 ms of a fresh backend's page faults).
  if pg_column_size(p_chunks) <> pg_column_size(p_chunks #> '{}') then
    p_chunks := p_chunks #> '{}';
  end if;
  v_job := public.hd__share_leased_job(p_job_id, p_lease_token, p_now);
  if v_job.document_id is null then
    raise exception 'job % has no document_id', p_job_id using errcode = '22023';
  end if;
  -- One writer of a document's chunks at a time, until it commits: the statements below
  -- then see the last writer's rows. Without it, two jobs of one document writing at once
  -- could leave a mix of both (rows one found unchanged are read without a lock).
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended(
    'hd_asset_chunks ' || v_job.account_id::text || ' ' || v_job.document_id::text, 0));
  select coalesce(array_agg(f.id), '{}') into v_files
    from public.hd_document_files f
   where f.account_id = v_job.account_id and f.document_id = v_job.document_id;

  delete from public.hd_asset_chunks c
   where c.account_id = v_job.account_id and c.document_id = v_job.document_id
     and c.chunk_index >= v_count;
  get diagnostics v_deleted = row_count;

  -- The stored rows, in index order, each against the chunk at its position: checked, and
  -- rewritten only where a field differs (no lock, no WAL for the others).
  update public.hd_asset_chunks c
     set (file_id, content, page_start, page_end, char_start, char_end, seconds_start,
          seconds_end, content_sha256, updated_at) =
         (select (e ->> 'file_id')::uuid, e ->> 'content', (e ->> 'page_start')::integer,
                 (e ->> 'page_end')::integer, (e ->> 'char_start')::integer,
                 (e ->> 'char_end')::integer, (e ->> 'seconds_start')::numeric(12, 3),
                 (e ->> 'seconds_end')::numeric(12, 3), e ->> 'content_sha256', p_now
            from (select p_chunks -> c.chunk_index as e offset 0) as chunk)
   where c.account_id = v_job.account_id and c.document_id = v_job.document_id
     and c.chunk_index >= 0 and c.chunk_index < v_count
     and (select ((e ->> 'chunk_index')::integer is not distinct from c.chunk_index
                  and ((e ->> 'file_id') is null or (e ->> 'file_id')::uuid = any (v_files))
                  or public.hd__check_document_chunks(p_chunks, v_job.account_id,
                                                      v_job.document_id))
                 and (c.file_id, c.content, c.page_start, c.page_end, c.char_start,
                      c.char_end, c.seconds_start, c.seconds_end, c.content_sha256)
                     is distinct from
                     ((e ->> 'file_id')::uuid, e ->> 'content', (e ->> 'page_start')::integer,
                      (e ->> 'page_end')::integer, (e ->> 'char_start')::integer,
                      (e ->> 'char_end')::integer, (e ->> 'seconds_start')::numeric(12, 3),
                      (e ->> 'seconds_end')::numeric(12, 3), e ->> 'content_sha256')
            from (select p_chunks -> c.chunk_index as e offset 0) as chunk);
  get diagnostics v_rewritten = row_count;

  -- After a whole write the stored rows are 0..k-1, and the chunks from k on are new. Where
  -- they are not (a row removed by hand), every chunk goes through the upsert, as in 00020.
  select count(*), max(c.chunk_index) into v_stored, v_last_stored
    from public.hd_asset_chunks c
   where c.account_id = v_job.account_id and c.document_id = v_job.document_id
     and c.chunk_index >= 0;
  if v_last_stored is distinct from v_stored - 1 then
    v_stored := 0;
  end if;

  with written as (
    insert into public.hd_asset_chunks as c
      (id, account_id, document_id, file_id, chunk_index, content, page_start, page_end,
       char_start, char_end, seconds_start, seconds_end, content_sha256, created_at,
       updated_at)
    select encode(v_id_head || int8send(v_id_tail + i), 'hex')::uuid, v_job.account_id,
           v_job.document_id, (e ->> 'file_id')::uuid, i, e ->> 'content',
           (e ->> 'page_start')::integer, (e ->> 'page_end')::integer,
           (e ->> 'char_start')::integer, (e ->> 'char_end')::integer,
           (e ->> 'seconds_start')::numeric(12, 3), (e ->> 'seconds_end')::numeric(12, 3),
           e ->> 'content_sha256', p_now, p_now
      from generate_series(v_stored, v_count - 1) as i,
           lateral (select p_chunks -> i as e offset 0) as chunk
     where (e ->> 'chunk_index')::integer is not distinct from i
           and ((e ->> 'file_id') is null or (e ->> 'file_id')::uuid = any (v_files))
           or public.hd__check_document_chunks(p_chunks, v_job.account_id, v_job.document_id)
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
         (count(*) filter (where not w.is_insert))::integer
    into v_inserted, v_upserted
    from written w;

  return query
  select v_inserted, v_rewritten + v_upserted, v_count - v_inserted - v_rewritten - v_upserted,
         v_deleted;
end
$$;

select public.hd__lock_down_functions();
