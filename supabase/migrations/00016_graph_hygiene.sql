-- 00016: graph hygiene. An edge keeps its strongest evidence only (at most p_max_evidence
-- items, the rest counted), and nodes and edges whose last evidence is gone are removed:
-- when a document's graph is rewritten (hd_write_document_graph, as text2kg does after a
-- re-extraction) and when its chunks or interpretations are deleted (a stale tail cut by
-- hd_replace_document_chunks, or the document deleted by the application). Same locks as
-- 00010: an account's graph changes take turns on hd__lock('hd_kg:' || account_id).
-- Re-runnable.

-- evidence_dropped: items of evidence this edge has beyond the ones stored (not stored);
-- evidence_dropped_by_document: the same count per document ({document_id: n}), so that a
-- document rewritten or deleted takes its own dropped items with it.
alter table public.hd_kg_edges
  add column if not exists evidence_dropped integer not null default 0,
  add column if not exists evidence_dropped_by_document jsonb not null default '{}'::jsonb;

-- "Edges holding dropped evidence of document D" (rewrites and deletions of D).
create index if not exists hd_kg_edges_dropped_idx
  on public.hd_kg_edges using gin (evidence_dropped_by_document)
  where evidence_dropped > 0;

comment on column public.hd_kg_edges.evidence is
  'The strongest evidence of the edge (at most hd_write_document_graph''s p_max_evidence items), '
  'strongest first: [{document_id, chunk_id, interpretation_id, quote, score}]. See 00016.';
comment on column public.hd_kg_edges.evidence_dropped is
  'How many further items of evidence the edge has that are not stored (the weakest).';

-- The nodes among p_candidates (of p_account_id) that no edge touches any more are
-- deleted (their syntheses and dynamics go with them, by cascade). Returns how many.
create or replace function public.hd__delete_orphan_nodes(p_account_id uuid, p_candidates uuid[])
returns integer
language plpgsql volatile
as $$
declare
  v_removed integer;
begin
  delete from public.hd_kg_nodes n
   where n.account_id = p_account_id and n.id = any (p_candidates)
     and not exists (select 1 from public.hd_kg_edges e
                      where e.account_id = p_account_id and e.source_node_id = n.id)
     and not exists (select 1 from public.hd_kg_edges e
                      where e.account_id = p_account_id and e.target_node_id = n.id);
  get diagnostics v_removed = row_count;
  return v_removed;
end
$$;

-- 00010's graph write, now bounded and tidy. p_edges' evidence items may carry a score
-- (0..1, how directly the quote supports the edge; text2kg computes it); each edge keeps
-- the p_max_evidence strongest items of all documents (score, then quote and ids, so the
-- choice does not depend on write order) and counts the rest per document. Only evidence
-- of interpretations made from the chunk's current content is taken. Nodes of this write
-- and ends of removed edges that are left without an edge are deleted.
drop function if exists public.hd_write_document_graph(uuid, uuid, jsonb, jsonb, timestamptz);
create or replace function public.hd_write_document_graph(
  p_job_id uuid, p_lease_token uuid, p_nodes jsonb, p_edges jsonb,
  p_now timestamptz default now(), p_max_evidence integer default 20)
returns table (nodes_inserted integer, nodes_existing integer, edges_inserted integer,
               edges_updated integer, edges_unchanged integer, edges_removed integer,
               nodes_removed integer, evidence_dropped integer)
language plpgsql volatile
as $$
declare
  v_job public.hd_ingestion_jobs;
  v_doc jsonb;
  v_max integer := least(greatest(coalesce(p_max_evidence, 20), 1), 1000);
  v_nodes_inserted integer;
  v_nodes_total integer;
  v_counts integer[];
  v_ends uuid[];
  v_nodes_removed integer;
begin
  v_job := public.hd__share_leased_job(p_job_id, p_lease_token, p_now);
  v_doc := to_jsonb(v_job.document_id::text);
  -- Edges are read, merged and written back: two documents of one account must not
  -- interleave that (lost update), so graph writes of an account take turns.
  perform public.hd__lock('hd_kg:' || v_job.account_id::text);

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

  with edge_in as (
    select s.id as source_id, e ->> 'relation' as relation, t.id as target_id, ev
      from jsonb_array_elements(p_edges) e
      join public.hd_kg_nodes s on s.account_id = v_job.account_id
       and s.node_type = e ->> 'source_type' and s.normalized_label = e ->> 'source_key'
      join public.hd_kg_nodes t on t.account_id = v_job.account_id
       and t.node_type = e ->> 'target_type' and t.normalized_label = e ->> 'target_key'
     cross join lateral jsonb_array_elements(e -> 'evidence') ev
  ), mine as (
    -- This document's evidence, checked against its own current interpretations.
    select distinct on (ei.source_id, ei.relation, ei.target_id, i.id)
           ei.source_id, ei.relation, ei.target_id,
           jsonb_build_object('document_id', v_doc, 'chunk_id', i.chunk_id,
                              'interpretation_id', i.id,
                              'quote', left(coalesce(ei.ev ->> 'quote', ''), 500),
                              'score', round(least(greatest(
                                case when jsonb_typeof(ei.ev -> 'score') = 'number'
                                     then (ei.ev ->> 'score')::numeric else 0 end, 0), 1), 3))
             as item
      from edge_in ei
      join public.hd_interpretations i on i.id = (ei.ev ->> 'interpretation_id')::uuid
       and i.account_id = v_job.account_id and i.document_id = v_job.document_id
      join public.hd_asset_chunks c on c.id = i.chunk_id and c.account_id = v_job.account_id
       and i.chunk_sha256 = public.hd__chunk_sha256(c.content_sha256, c.content)
     order by ei.source_id, ei.relation, ei.target_id, i.id, ei.ev ->> 'quote'
  ), keys as (
    select m.source_id, m.relation, m.target_id from mine m
    union
    select x.source_node_id, x.relation, x.target_node_id from public.hd_kg_edges x
     where x.account_id = v_job.account_id
       and (x.evidence @> jsonb_build_array(jsonb_build_object('document_id', v_doc))
            or (x.evidence_dropped > 0 and x.evidence_dropped_by_document ? (v_doc #>> '{}')))
  ), current as (
    select k.source_id, k.relation, k.target_id, x.id, x.evidence,
           coalesce(x.evidence_dropped_by_document, '{}'::jsonb) - (v_doc #>> '{}') as others_dropped
      from keys k
      left join public.hd_kg_edges x on x.account_id = v_job.account_id
       and x.source_node_id = k.source_id and x.relation = k.relation
       and x.target_node_id = k.target_id
  ), candidates as (
    select m.source_id, m.relation, m.target_id, m.item from mine m
    union all
    -- Evidence of the account's other documents on the same edges, ranked anew with ours.
    select c.source_id, c.relation, c.target_id, it
      from current c cross join lateral jsonb_array_elements(coalesce(c.evidence, '[]')) it
     where it -> 'document_id' is distinct from v_doc
  ), ranked as (
    select r.*, row_number() over (
             partition by r.source_id, r.relation, r.target_id
             order by coalesce((r.item ->> 'score')::numeric, 0) desc, r.item ->> 'quote',
                      r.item ->> 'document_id', r.item ->> 'chunk_id',
                      r.item ->> 'interpretation_id') as rank
      from candidates r
  ), dropped as (
    -- Per edge and document: dropped before (other documents) plus dropped now.
    select d.source_id, d.relation, d.target_id, jsonb_object_agg(d.doc, d.n) as by_document,
           sum(d.n)::integer as total
      from (select u.source_id, u.relation, u.target_id, u.doc, sum(u.n)::integer as n
              from (select c.source_id, c.relation, c.target_id, o.key as doc,
                           (o.value #>> '{}')::integer as n
                      from current c cross join lateral jsonb_each(c.others_dropped) o
                    union all
                    select r.source_id, r.relation, r.target_id, r.item ->> 'document_id', 1
                      from ranked r where r.rank > v_max) u
             group by u.source_id, u.relation, u.target_id, u.doc) d
     where d.n > 0
     group by d.source_id, d.relation, d.target_id
  ), final as (
    select c.source_id, c.relation, c.target_id,
           coalesce((select jsonb_agg(r.item order by r.rank) from ranked r
                      where r.source_id = c.source_id and r.relation = c.relation
                        and r.target_id = c.target_id and r.rank <= v_max), '[]'::jsonb)
             as evidence,
           coalesce(d.by_document, '{}'::jsonb) as by_document, coalesce(d.total, 0) as dropped
      from current c
      left join dropped d on d.source_id = c.source_id and d.relation = c.relation
       and d.target_id = c.target_id
  ), upserted as (
    insert into public.hd_kg_edges as x
      (account_id, source_node_id, relation, target_node_id, evidence, evidence_dropped,
       evidence_dropped_by_document, created_at, updated_at)
    select v_job.account_id, f.source_id, f.relation, f.target_id, f.evidence, f.dropped,
           f.by_document, p_now, p_now
      from final f where f.evidence <> '[]'::jsonb or f.dropped > 0
    on conflict (account_id, source_node_id, relation, target_node_id) do update
       set evidence = excluded.evidence, evidence_dropped = excluded.evidence_dropped,
           evidence_dropped_by_document = excluded.evidence_dropped_by_document,
           updated_at = excluded.updated_at
     where (x.evidence, x.evidence_dropped, x.evidence_dropped_by_document)
           is distinct from
           (excluded.evidence, excluded.evidence_dropped, excluded.evidence_dropped_by_document)
    returning (xmax = 0) as is_insert
  ), removed as (
    delete from public.hd_kg_edges x using final f
     where x.account_id = v_job.account_id and x.source_node_id = f.source_id
       and x.relation = f.relation and x.target_node_id = f.target_id
       and f.evidence = '[]'::jsonb and f.dropped = 0
    returning x.source_node_id, x.target_node_id
  )
  select array[
           (select count(*) filter (where u.is_insert) from upserted u)::integer,
           (select count(*) filter (where not u.is_insert) from upserted u)::integer,
           ((select count(*) from final f where f.evidence <> '[]'::jsonb or f.dropped > 0)
             - (select count(*) from upserted))::integer,
           (select count(*) from removed)::integer,
           (select count(*) from ranked r
             where r.rank > v_max and r.item -> 'document_id' = v_doc)::integer],
         (select coalesce(array_agg(distinct e.id), '{}') from removed
            cross join lateral (values (removed.source_node_id), (removed.target_node_id)) e(id))
    into v_counts, v_ends;

  -- A later statement: it sees the edges the one above removed as gone.
  v_nodes_removed := public.hd__delete_orphan_nodes(v_job.account_id, v_ends || array(
    select n.id from jsonb_array_elements(p_nodes) j
      join public.hd_kg_nodes n on n.account_id = v_job.account_id
       and n.node_type = j ->> 'node_type' and n.normalized_label = j ->> 'normalized_label'));

  return query select v_nodes_inserted, v_nodes_total - v_nodes_inserted, v_counts[1],
                      v_counts[2], v_counts[3], v_counts[4], v_nodes_removed, v_counts[5];
end
$$;

-- Takes out of the graph the evidence that points at chunks or interpretations that were
-- deleted (p_gone: [{account_id, document_id, id}]), with the dropped counts of documents
-- that have no chunk left; deletes edges left without evidence and nodes left without
-- edges. Called by the delete triggers below, whoever deletes.
create or replace function public.hd__forget_graph_evidence(p_gone jsonb)
returns void
language plpgsql volatile
as $$
declare
  v_account uuid;
  v_documents text[];
  v_gone_documents text[];
  v_ids text[];
  v_ends uuid[];
begin
  -- One account at a time, in a fixed order (two deleters of two accounts cannot deadlock).
  for v_account in
    select distinct (g ->> 'account_id')::uuid from jsonb_array_elements(p_gone) g order by 1
  loop
    perform public.hd__lock('hd_kg:' || v_account::text);
    select array_agg(distinct g ->> 'document_id'), array_agg(distinct g ->> 'id')
      into v_documents, v_ids
      from jsonb_array_elements(p_gone) g where (g ->> 'account_id')::uuid = v_account;
    select coalesce(array_agg(d), '{}') into v_gone_documents
      from unnest(v_documents) d
     where not exists (select 1 from public.hd_asset_chunks c
                        where c.account_id = v_account and c.document_id = d::uuid);

    with hit as (
      select x.id, x.source_node_id, x.target_node_id,
             coalesce((select jsonb_agg(it order by ord)
                         from jsonb_array_elements(x.evidence) with ordinality q(it, ord)
                        where not (it ->> 'chunk_id' = any (v_ids)
                                   or it ->> 'interpretation_id' = any (v_ids))), '[]'::jsonb)
               as evidence,
             x.evidence_dropped_by_document - v_gone_documents as by_document
        from public.hd_kg_edges x
       where x.account_id = v_account
         and (exists (select 1 from unnest(v_documents) d
                       where x.evidence @> jsonb_build_array(jsonb_build_object('document_id', d)))
              or (x.evidence_dropped > 0 and x.evidence_dropped_by_document ?| v_gone_documents))
    ), counted as (
      select h.*, coalesce((select sum((v #>> '{}')::integer) from jsonb_each(h.by_document) e(k, v)),
                           0)::integer as dropped
        from hit h
    ), changed as (
      update public.hd_kg_edges x
         set evidence = c.evidence, evidence_dropped = c.dropped,
             evidence_dropped_by_document = c.by_document, updated_at = now()
        from counted c
       where x.id = c.id and (c.evidence <> '[]'::jsonb or c.dropped > 0)
         and (x.evidence, x.evidence_dropped_by_document)
             is distinct from (c.evidence, c.by_document)
      returning 1
    ), removed as (
      delete from public.hd_kg_edges x using counted c
       where x.id = c.id and c.evidence = '[]'::jsonb and c.dropped = 0
      returning x.source_node_id, x.target_node_id
    )
    select coalesce(array_agg(e.id), '{}') into v_ends
      from removed cross join lateral (values (removed.source_node_id),
                                              (removed.target_node_id)) e(id);
    perform public.hd__delete_orphan_nodes(v_account, v_ends);
  end loop;
end
$$;

create or replace function public.hd__forget_deleted_graph_sources()
returns trigger
language plpgsql security definer set search_path = ''
as $$
begin
  perform public.hd__forget_graph_evidence(coalesce(
    (select jsonb_agg(jsonb_build_object('account_id', g.account_id,
                                         'document_id', g.document_id, 'id', g.id))
       from gone g), '[]'::jsonb));
  return null;
end
$$;

drop trigger if exists hd_asset_chunks_forget_evidence on public.hd_asset_chunks;
create trigger hd_asset_chunks_forget_evidence
  after delete on public.hd_asset_chunks
  referencing old table as gone
  for each statement execute function public.hd__forget_deleted_graph_sources();

drop trigger if exists hd_interpretations_forget_evidence on public.hd_interpretations;
create trigger hd_interpretations_forget_evidence
  after delete on public.hd_interpretations
  referencing old table as gone
  for each statement execute function public.hd__forget_deleted_graph_sources();

-- 00007's node context for synthesize_node; an edge's evidence_count (and the order of
-- the strongest edges) now includes the evidence not stored. Its quotes are the first
-- p_max_evidence stored, which are the strongest since this migration.
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
               'evidence_count', jsonb_array_length(e.evidence) + e.evidence_dropped,
               'evidence', (select coalesce(jsonb_agg(it order by ord), '[]'::jsonb)
                              from jsonb_array_elements(e.evidence) with ordinality q(it, ord)
                             where ord <= greatest(p_max_evidence, 0)))
             order by jsonb_array_length(e.evidence) + e.evidence_dropped desc, e.relation, o.label, e.id)
        from (select * from public.hd_kg_edges x
               where x.account_id = v_job.account_id
                 and (x.source_node_id = v_node.id or x.target_node_id = v_node.id)
               order by jsonb_array_length(x.evidence) + x.evidence_dropped desc, x.id
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

select public.hd__lock_down_functions();

notify pgrst, 'reload schema';
