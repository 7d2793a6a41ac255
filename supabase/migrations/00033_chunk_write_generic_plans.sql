-- 00033: hd_replace_document_chunks plans its statements generically (issue 13: a
-- 1,000-page PDF's 2,000 chunks, ~3 MB of JSON, took a third of extract_text's wall in
-- this one call). In a session that has not yet run it five times, as a runner's fresh
-- connection, plpgsql plans each statement for the call's arguments, as constants: the
-- whole p_chunks is copied into the plan of each of the three statements that read it,
-- and a fresh backend pays a page fault for every new page of those copies (perf: datumCopy
-- and the page faults led the profile). A generic plan passes the argument by reference;
-- the plans do not depend on the values (index lookups by the job's account and document).
-- bench/chunk-write.ts: 2,000 chunks on a fresh connection, server CPU 0.7-0.85x; on a
-- warm one (a pooler's, PostgREST's) the same as before. The function is otherwise 00020's.
alter function public.hd_replace_document_chunks(uuid, uuid, jsonb, timestamptz)
  set plan_cache_mode = force_generic_plan;
