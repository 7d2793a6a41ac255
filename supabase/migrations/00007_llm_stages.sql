-- 00007: the LLM stages (extract_interpretations, text2kg, synthesize_node) and pipelines.
--
-- Same rules as 00004: every function checks the caller's lease and takes account_id
-- (and document_id) from the leased job row; rows that name chunks or nodes of another
-- account or document are refused (SQLSTATE HDT01), never written. Additive, re-runnable.

-- What an interpretation was made from: a chunk is "done" for a prompt version only while
-- its content still hashes to this value (extract_text may re-chunk a document).
alter table public.hd_interpretations
  add column if not exists chunk_sha256 text,
  add column if not exists job_id uuid;
alter table public.hd_syntheses
  add column if not exists prompt_version text,
  -- Fingerprint of everything the model was shown (prompt version, model, node, edges,
  -- evidence). A synthesis is only recomputed when it changes: a re-run writes nothing.
  add column if not exists input_sha256 text,
  add column if not exists usage jsonb,
  add column if not exists job_id uuid;
-- Jobs enqueued by the queue itself carry a key; a second insert with it is a no-op.
alter table public.hd_ingestion_jobs add column if not exists idempotency_key text;

create unique index if not exists hd_ingestion_jobs_idempotency_key_idx
  on public.hd_ingestion_jobs (idempotency_key) where idempotency_key is not null;
create index if not exists hd_interpretations_document_idx
  on public.hd_interpretations (account_id, document_id);
create index if not exists hd_kg_edges_target_idx
  on public.hd_kg_edges (account_id, target_node_id);
-- "Edges with evidence from document D" (text2kg re-runs, synthesize_node per document).
create index if not exists hd_kg_edges_evidence_idx
  on public.hd_kg_edges using gin (evidence jsonb_path_ops);

-- hd_dynamics: the history of how the account's understanding of one node moves. One row
-- per synthesis version (hd_syntheses), written in the same transaction, comparing it with
-- the version before it:
--   change_kind  created          first synthesis of the node
--                evidence_added   new evidence (interpretations) since the previous version
--                evidence_removed evidence gone (a document re-extracted or re-interpreted)
--                evidence_changed both added and removed
--                regenerated      same sources, but a new prompt version or model, or more
--                                 passages behind the quotes shown
--   summary      the model's one-paragraph account of what changed in the description
--   details      {version, previous_version, sources_added, sources_removed, added, removed
--                 (interpretation ids, first 50), prompt_version, previous_prompt_version,
--                 model, content_chars, previous_content_chars}
-- A re-run that sees the same inputs writes no synthesis and therefore no dynamics row.
comment on table public.hd_dynamics is
  'What changed in a node''s synthesis against the previous version: one row per hd_syntheses '
  'version (change_kind created|evidence_added|evidence_removed|evidence_changed|regenerated, '
  'the model''s change summary, and source counts in details). See migration 00007.';

do $$
begin
  if not exists (select 1 from pg_constraint
                  where conname = 'hd_dynamics_change_kind_check'
                    and conrelid = 'public.hd_dynamics'::regclass) then
    alter table public.hd_dynamics add constraint hd_dynamics_change_kind_check
      check (change_kind in ('created', 'evidence_added', 'evidence_removed',
                             'evidence_changed', 'regenerated'));
  end if;
end
$$;

-- The hash a chunk's interpretation is keyed on: the stored one, else computed.
create or replace function public.hd__chunk_sha256(p_content_sha256 text, p_content text)
returns text
language sql immutable
as $$
  select coalesce(p_content_sha256, encode(sha256(convert_to(p_content, 'UTF8')), 'hex'))
$$;

-- How many chunks the leased job's document has, and how many still lack an
-- interpretation of p_prompt_version made from their current content.
create or replace function public.hd_count_chunks_to_interpret(
  p_job_id uuid, p_lease_token uuid, p_prompt_version text, p_now timestamptz default now())
returns table (total integer, pending integer)
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  v_job := public.hd__share_leased_job(p_job_id, p_lease_token, p_now);
  return query
  select count(*)::integer,
         (count(*) filter (where not exists (
            select 1 from public.hd_interpretations i
             where i.account_id = c.account_id and i.chunk_id = c.id
               and i.prompt_version = p_prompt_version
               and i.chunk_sha256 = public.hd__chunk_sha256(c.content_sha256, c.content))))::integer
    from public.hd_asset_chunks c
   where c.account_id = v_job.account_id and c.document_id = v_job.document_id;
end
$$;

-- The next page (by chunk_index, after p_after_index) of the document's chunks that still
-- need an interpretation. A retry therefore asks the model only about the rest.
create or replace function public.hd_list_chunks_to_interpret(
  p_job_id uuid, p_lease_token uuid, p_prompt_version text,
  p_after_index integer default -1, p_limit integer default 100,
  p_now timestamptz default now())
returns table (chunk_id uuid, chunk_index integer, content text, chunk_sha256 text,
               page_start integer, page_end integer)
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  v_job := public.hd__share_leased_job(p_job_id, p_lease_token, p_now);
  return query
  select c.id, c.chunk_index, c.content, public.hd__chunk_sha256(c.content_sha256, c.content),
         c.page_start, c.page_end
    from public.hd_asset_chunks c
   where c.account_id = v_job.account_id and c.document_id = v_job.document_id
     and c.chunk_index > coalesce(p_after_index, -1)
     and not exists (
       select 1 from public.hd_interpretations i
        where i.account_id = c.account_id and i.chunk_id = c.id
          and i.prompt_version = p_prompt_version
          and i.chunk_sha256 = public.hd__chunk_sha256(c.content_sha256, c.content))
   order by c.chunk_index
   limit greatest(coalesce(p_limit, 100), 0);
end
$$;

-- Upserts interpretations from a JSON array of {chunk_id, chunk_sha256, prompt_version,
-- model, payload, usage}, keyed (account_id, chunk_id, prompt_version). Every chunk must
-- belong to the leased job's document.
create or replace function public.hd_upsert_interpretations(
  p_job_id uuid, p_lease_token uuid, p_rows jsonb, p_now timestamptz default now())
returns table (inserted integer, updated integer, unchanged integer)
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
  v_foreign integer;
begin
  v_job := public.hd__share_leased_job(p_job_id, p_lease_token, p_now);
  select count(*) into v_foreign
    from jsonb_array_elements(p_rows) r
   where not exists (
     select 1 from public.hd_asset_chunks c
      where c.id = (r ->> 'chunk_id')::uuid and c.account_id = v_job.account_id
        and c.document_id = v_job.document_id);
  if v_foreign > 0 then
    raise exception '% interpretation(s) name a chunk outside the document of job %',
      v_foreign, p_job_id using errcode = 'HDT01';
  end if;
  return query
  with input as (
    select distinct on ((r.value ->> 'chunk_id'), r.value ->> 'prompt_version')
           (r.value ->> 'chunk_id')::uuid as chunk_id, r.value ->> 'chunk_sha256' as chunk_sha256,
           r.value ->> 'prompt_version' as prompt_version, r.value ->> 'model' as model,
           coalesce(r.value -> 'payload', '{}'::jsonb) as payload, r.value -> 'usage' as usage
      from jsonb_array_elements(p_rows) with ordinality as r(value, ord)
     order by (r.value ->> 'chunk_id'), r.value ->> 'prompt_version', r.ord desc
  ), written as (
    insert into public.hd_interpretations as t
      (account_id, document_id, chunk_id, prompt_version, model, payload, usage, chunk_sha256,
       job_id, created_at, updated_at)
    select v_job.account_id, v_job.document_id, i.chunk_id, i.prompt_version, i.model,
           i.payload, i.usage, i.chunk_sha256, v_job.id, p_now, p_now
      from input i
    on conflict (account_id, chunk_id, prompt_version) do update
       set model = excluded.model, payload = excluded.payload, usage = excluded.usage,
           chunk_sha256 = excluded.chunk_sha256, document_id = excluded.document_id,
           job_id = excluded.job_id, updated_at = excluded.updated_at
     where (t.model, t.payload, t.chunk_sha256, t.document_id)
           is distinct from (excluded.model, excluded.payload, excluded.chunk_sha256,
                             excluded.document_id)
    returning (xmax = 0) as is_insert
  )
  select (count(*) filter (where w.is_insert))::integer,
         (count(*) filter (where not w.is_insert))::integer,
         (jsonb_array_length(p_rows) - count(*))::integer
    from written w;
end
$$;

-- The document's current interpretations, one per chunk (the newest made from the
-- chunk's current content), paged by chunk_index. text2kg reads these.
create or replace function public.hd_list_document_interpretations(
  p_job_id uuid, p_lease_token uuid, p_after_index integer default -1,
  p_limit integer default 500, p_now timestamptz default now())
returns table (interpretation_id uuid, chunk_id uuid, chunk_index integer,
               prompt_version text, payload jsonb)
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  v_job := public.hd__share_leased_job(p_job_id, p_lease_token, p_now);
  return query
  select distinct on (c.chunk_index) i.id, c.id, c.chunk_index, i.prompt_version, i.payload
    from public.hd_asset_chunks c
    join public.hd_interpretations i
      on i.account_id = c.account_id and i.chunk_id = c.id
     and i.chunk_sha256 = public.hd__chunk_sha256(c.content_sha256, c.content)
   where c.account_id = v_job.account_id and c.document_id = v_job.document_id
     and c.chunk_index > coalesce(p_after_index, -1)
   order by c.chunk_index, i.updated_at desc, i.id
   limit greatest(coalesce(p_limit, 500), 0);
end
$$;

-- Writes the knowledge graph of the leased job's document in one transaction:
-- p_nodes [{node_type, label, normalized_label}] are upserted by (account, type,
-- normalised label), keeping the first label seen; p_edges [{source_type, source_key,
-- relation, target_type, target_key, evidence: [{interpretation_id, quote}]}] become this
-- document's evidence on the account's edges. Evidence of other documents is kept; this
-- document's previous evidence is replaced, and an edge left without evidence is deleted,
-- so a re-run (or a re-extracted document) converges to the same rows. Evidence must point
-- at interpretations of this document; anything else is dropped.
create or replace function public.hd_write_document_graph(
  p_job_id uuid, p_lease_token uuid, p_nodes jsonb, p_edges jsonb,
  p_now timestamptz default now())
returns table (nodes_inserted integer, nodes_existing integer, edges_inserted integer,
               edges_updated integer, edges_unchanged integer, edges_removed integer)
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
  v_doc jsonb;
  v_nodes_inserted integer;
  v_nodes_total integer;
begin
  v_job := public.hd__share_leased_job(p_job_id, p_lease_token, p_now);
  v_doc := to_jsonb(v_job.document_id::text);
  -- Edges are read, merged and written back: two documents of one account must not
  -- interleave that (lost update), so graph writes of an account take turns.
  perform pg_advisory_xact_lock(hashtextextended('hd_kg:' || v_job.account_id::text, 0));

  with input as (
    select distinct on (n ->> 'node_type', n ->> 'normalized_label')
           n ->> 'node_type' as node_type, n ->> 'normalized_label' as key, n ->> 'label' as label
      from jsonb_array_elements(p_nodes) n
     order by n ->> 'node_type', n ->> 'normalized_label', n ->> 'label'
  ), ins as (
    insert into public.hd_kg_nodes
      (account_id, node_type, label, normalized_label, created_at, updated_at)
    select v_job.account_id, i.node_type, i.label, i.key, p_now, p_now from input i
    on conflict (account_id, node_type, normalized_label) do nothing
    returning 1
  )
  select (select count(*) from ins), (select count(*) from input)
    into v_nodes_inserted, v_nodes_total;

  return query
  with edge_in as (
    select s.id as source_id, e ->> 'relation' as relation, t.id as target_id, ev
      from jsonb_array_elements(p_edges) e
      join public.hd_kg_nodes s on s.account_id = v_job.account_id
       and s.node_type = e ->> 'source_type' and s.normalized_label = e ->> 'source_key'
      join public.hd_kg_nodes t on t.account_id = v_job.account_id
       and t.node_type = e ->> 'target_type' and t.normalized_label = e ->> 'target_key'
     cross join lateral jsonb_array_elements(e -> 'evidence') ev
  ), mine as (
    -- This document's evidence, checked against its own interpretations.
    select distinct ei.source_id, ei.relation, ei.target_id,
           jsonb_build_object('document_id', v_doc, 'chunk_id', i.chunk_id,
                              'interpretation_id', i.id,
                              'quote', left(coalesce(ei.ev ->> 'quote', ''), 500)) as item
      from edge_in ei
      join public.hd_interpretations i on i.id = (ei.ev ->> 'interpretation_id')::uuid
       and i.account_id = v_job.account_id and i.document_id = v_job.document_id
  ), keys as (
    select m.source_id, m.relation, m.target_id from mine m
    union
    select x.source_node_id, x.relation, x.target_node_id from public.hd_kg_edges x
     where x.account_id = v_job.account_id
       and x.evidence @> jsonb_build_array(jsonb_build_object('document_id', v_doc))
  ), others as (
    -- Evidence of the account's other documents on the same edges, kept as it is.
    select k.source_id, k.relation, k.target_id, it as item
      from keys k
      join public.hd_kg_edges x on x.account_id = v_job.account_id
       and x.source_node_id = k.source_id and x.relation = k.relation
       and x.target_node_id = k.target_id
     cross join lateral jsonb_array_elements(x.evidence) it
     where it -> 'document_id' is distinct from v_doc
  ), final as (
    select k.source_id, k.relation, k.target_id,
           coalesce(jsonb_agg(u.item order by u.item ->> 'document_id', u.item ->> 'chunk_id',
                                              u.item ->> 'interpretation_id')
                      filter (where u.item is not null), '[]'::jsonb) as evidence
      from keys k
      left join (select * from mine union all select * from others) u
        on u.source_id = k.source_id and u.relation = k.relation and u.target_id = k.target_id
     group by k.source_id, k.relation, k.target_id
  ), upserted as (
    insert into public.hd_kg_edges as x
      (account_id, source_node_id, relation, target_node_id, evidence, created_at, updated_at)
    select v_job.account_id, f.source_id, f.relation, f.target_id, f.evidence, p_now, p_now
      from final f where f.evidence <> '[]'::jsonb
    on conflict (account_id, source_node_id, relation, target_node_id) do update
       set evidence = excluded.evidence, updated_at = excluded.updated_at
     where x.evidence is distinct from excluded.evidence
    returning (xmax = 0) as is_insert
  ), removed as (
    delete from public.hd_kg_edges x using final f
     where x.account_id = v_job.account_id and x.source_node_id = f.source_id
       and x.relation = f.relation and x.target_node_id = f.target_id
       and f.evidence = '[]'::jsonb
    returning 1
  )
  select v_nodes_inserted, v_nodes_total - v_nodes_inserted,
         (select count(*) filter (where u.is_insert) from upserted u)::integer,
         (select count(*) filter (where not u.is_insert) from upserted u)::integer,
         ((select count(*) from final f where f.evidence <> '[]'::jsonb)
           - (select count(*) from upserted))::integer,
         (select count(*) from removed)::integer;
end
$$;

-- Nodes on an edge with evidence from the leased job's document (synthesize_node without
-- a node_id synthesises these).
create or replace function public.hd_list_document_nodes(
  p_job_id uuid, p_lease_token uuid, p_now timestamptz default now())
returns table (node_id uuid)
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
begin
  v_job := public.hd__share_leased_job(p_job_id, p_lease_token, p_now);
  return query
  select n.id from public.hd_kg_edges e
   cross join lateral (values (e.source_node_id), (e.target_node_id)) n(id)
   where e.account_id = v_job.account_id
     and e.evidence @> jsonb_build_array(jsonb_build_object(
           'document_id', v_job.document_id::text))
   group by n.id
   order by n.id;
end
$$;

-- What synthesize_node shows the model about one node of the leased job's account: the
-- node, its strongest edges (most evidence first, at most p_max_edges) with the first
-- p_max_evidence quotes of each, and its latest synthesis. Null when the node is not
-- the account's.
create or replace function public.hd_get_node_context(
  p_job_id uuid, p_lease_token uuid, p_node_id uuid, p_max_edges integer default 50,
  p_max_evidence integer default 3, p_now timestamptz default now())
returns jsonb
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
  v_node public.hd_kg_nodes;
begin
  v_job := public.hd__share_leased_job(p_job_id, p_lease_token, p_now);
  select * into v_node from public.hd_kg_nodes
   where id = p_node_id and account_id = v_job.account_id;
  if not found then
    return null;
  end if;
  return jsonb_build_object(
    'node', jsonb_build_object('id', v_node.id, 'label', v_node.label,
                               'node_type', v_node.node_type,
                               'canonical_description', v_node.canonical_description),
    'edges', coalesce((
      select jsonb_agg(jsonb_build_object(
               'edge_id', e.id,
               'direction', case when e.source_node_id = v_node.id then 'out' else 'in' end,
               'relation', e.relation, 'other_label', o.label, 'other_type', o.node_type,
               'evidence_count', jsonb_array_length(e.evidence),
               'evidence', (select coalesce(jsonb_agg(it order by ord), '[]'::jsonb)
                              from jsonb_array_elements(e.evidence) with ordinality q(it, ord)
                             where ord <= greatest(p_max_evidence, 0)))
             order by jsonb_array_length(e.evidence) desc, e.relation, o.label, e.id)
        from (select * from public.hd_kg_edges x
               where x.account_id = v_job.account_id
                 and (x.source_node_id = v_node.id or x.target_node_id = v_node.id)
               order by jsonb_array_length(x.evidence) desc, x.id
               limit greatest(p_max_edges, 0)) e
        join public.hd_kg_nodes o on o.account_id = v_job.account_id
         and o.id = case when e.source_node_id = v_node.id then e.target_node_id
                         else e.source_node_id end), '[]'::jsonb),
    'latest', (select jsonb_build_object('id', s.id, 'version', s.version,
                                         'content', s.content, 'input_sha256', s.input_sha256,
                                         'prompt_version', s.prompt_version)
                 from public.hd_syntheses s
                where s.account_id = v_job.account_id and s.node_id = v_node.id
                order by s.version desc limit 1));
end
$$;

-- Records a synthesis of one node of the leased job's account from p_synthesis {content,
-- summary, sources: [{interpretation_id, chunk_id, document_id, edge_id}], model,
-- prompt_version, input_sha256, usage}: the next version in hd_syntheses, its hd_dynamics
-- row, and the node's canonical_description. When the latest version was made from the
-- same input_sha256 nothing is written and that version is returned (created = false).
create or replace function public.hd_record_synthesis(
  p_job_id uuid, p_lease_token uuid, p_node_id uuid, p_synthesis jsonb,
  p_now timestamptz default now())
returns table (synthesis_id uuid, version integer, created boolean, change_kind text)
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
  v_prev public.hd_syntheses;
  v_new public.hd_syntheses;
  v_added text[];
  v_removed text[];
  v_kind text;
begin
  v_job := public.hd__share_leased_job(p_job_id, p_lease_token, p_now);
  -- The node row lock serialises syntheses of one node, so versions never collide.
  perform 1 from public.hd_kg_nodes n
   where n.id = p_node_id and n.account_id = v_job.account_id for update;
  if not found then
    raise exception 'node % is not a node of the account of job %', p_node_id, p_job_id
      using errcode = 'HDT01';
  end if;
  select * into v_prev from public.hd_syntheses s
   where s.account_id = v_job.account_id and s.node_id = p_node_id
   order by s.version desc limit 1;
  if v_prev.id is not null and v_prev.input_sha256 = p_synthesis ->> 'input_sha256' then
    return query select v_prev.id, v_prev.version, false,
      (select d.change_kind from public.hd_dynamics d where d.synthesis_id = v_prev.id);
    return;
  end if;

  insert into public.hd_syntheses
    (account_id, node_id, version, content, sources, model, prompt_version, input_sha256,
     usage, job_id, created_at)
  values (v_job.account_id, p_node_id, coalesce(v_prev.version, 0) + 1,
          p_synthesis ->> 'content', coalesce(p_synthesis -> 'sources', '[]'::jsonb),
          p_synthesis ->> 'model', p_synthesis ->> 'prompt_version',
          p_synthesis ->> 'input_sha256', p_synthesis -> 'usage', v_job.id, p_now)
  returning * into v_new;

  select coalesce(array_agg(k order by k), '{}') into v_added
    from (select distinct coalesce(x ->> 'interpretation_id', x::text) k
            from jsonb_array_elements(v_new.sources) x
          except
          select coalesce(x ->> 'interpretation_id', x::text)
            from jsonb_array_elements(coalesce(v_prev.sources, '[]'::jsonb)) x) a;
  select coalesce(array_agg(k order by k), '{}') into v_removed
    from (select distinct coalesce(x ->> 'interpretation_id', x::text) k
            from jsonb_array_elements(coalesce(v_prev.sources, '[]'::jsonb)) x
          except
          select coalesce(x ->> 'interpretation_id', x::text)
            from jsonb_array_elements(v_new.sources) x) r;
  v_kind := case
    when v_prev.id is null then 'created'
    when cardinality(v_added) > 0 and cardinality(v_removed) > 0 then 'evidence_changed'
    when cardinality(v_added) > 0 then 'evidence_added'
    when cardinality(v_removed) > 0 then 'evidence_removed'
    else 'regenerated' end;

  insert into public.hd_dynamics
    (account_id, node_id, synthesis_id, previous_synthesis_id, change_kind, summary, details,
     created_at)
  values (v_job.account_id, p_node_id, v_new.id, v_prev.id, v_kind, p_synthesis ->> 'summary',
          jsonb_build_object(
            'version', v_new.version, 'previous_version', v_prev.version,
            'sources_added', cardinality(v_added), 'sources_removed', cardinality(v_removed),
            'added', to_jsonb(v_added[1:50]), 'removed', to_jsonb(v_removed[1:50]),
            'prompt_version', v_new.prompt_version,
            'previous_prompt_version', v_prev.prompt_version, 'model', v_new.model,
            'content_chars', length(v_new.content),
            'previous_content_chars', length(v_prev.content)),
          p_now);
  update public.hd_kg_nodes
     set canonical_description = v_new.content, updated_at = p_now
   where id = p_node_id;
  return query select v_new.id, v_new.version, true, v_kind;
end
$$;

-- 00003's hd_complete_job, same signature and behaviour, plus pipelines: when the job's
-- debug names `next_stages` (["text2kg", "synthesize_node"]), the first is enqueued for
-- the same account and document, carrying the rest, in the same transaction. Its
-- idempotency key (pipeline:{job id}:{stage}) makes that happen once per job, however
-- often the job is re-run and completed; the next job's id lands in debug.stats.next_job.
create or replace function public.hd_complete_job(
  p_job_id uuid, p_lease_token uuid, p_stats jsonb default '{}'::jsonb,
  p_now timestamptz default now())
returns public.hd_ingestion_jobs
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
  v_next_stages jsonb;
  v_stage text;
  v_key text;
  v_next_id uuid;
begin
  -- Fast path: one UPDATE that checks the lease itself. A separate SELECT … FOR UPDATE
  -- first would write the row twice (measured: about a fifth of the claim+complete cost).
  update public.hd_ingestion_jobs
     set status = 'completed', finished_at = p_now, updated_at = p_now,
         lease_token = null, lease_expires_at = null,
         progress_percent = 100, progress_step = 'completed',
         error = null, error_code = null, error_details = null,
         debug = jsonb_set(coalesce(debug, '{}'::jsonb), '{stats}',
                           coalesce(debug -> 'stats', '{}'::jsonb) || coalesce(p_stats, '{}'::jsonb))
   where id = p_job_id and status = 'running' and lease_token = p_lease_token
     and lease_expires_at > p_now
  returning * into v_job;
  if not found then
    -- Raises HDL01 with the job's state; it cannot pass, the UPDATE above just failed.
    perform public.hd__lock_leased_job(p_job_id, p_lease_token, p_now);
    raise exception 'lease lost: job %', p_job_id using errcode = 'HDL01';
  end if;
  v_next_stages := v_job.debug -> 'next_stages';
  if jsonb_typeof(v_next_stages) = 'array' and jsonb_typeof(v_next_stages -> 0) = 'string' then
    v_stage := v_next_stages ->> 0;
    v_key := format('pipeline:%s:%s', v_job.id, v_stage);
    insert into public.hd_ingestion_jobs
      (account_id, document_id, job_type, debug, priority, max_attempts, run_after,
       idempotency_key)
    values (v_job.account_id, v_job.document_id, v_stage,
            jsonb_build_object(
              'next_stages', v_next_stages - 0,
              'pipeline', jsonb_build_object(
                'root_job_id', coalesce(v_job.debug #>> '{pipeline,root_job_id}', v_job.id::text),
                'parent_job_id', v_job.id)),
            v_job.priority, v_job.max_attempts, p_now, v_key)
    on conflict (idempotency_key) where idempotency_key is not null do nothing
    returning id into v_next_id;
    if v_next_id is null then
      select j.id into v_next_id from public.hd_ingestion_jobs j where j.idempotency_key = v_key;
    end if;
    update public.hd_ingestion_jobs
       set debug = jsonb_set(debug, '{stats,next_job}',
                             jsonb_build_object('id', v_next_id, 'job_type', v_stage))
     where id = p_job_id
    returning * into v_job;
  end if;
  return v_job;
end
$$;

select public.hd__lock_down_functions();
