import type pg from 'pg';
import type { SeededTenant } from './tenant-rows.ts';

/** The refusal of a call, as `code message` (or `resolved` when it was not refused). */
export async function refusal(client: pg.Pool | pg.ClientBase, sql: string, params: unknown[]) {
  try {
    await client.query(sql, params);
    return 'resolved';
  } catch (error) {
    const e = error as pg.DatabaseError;
    return `${e.code} ${e.message}`;
  }
}

/**
 * Every function hd_runner may call, each as a call on `jobId` with `token` that would
 * touch the victim's rows if it were let through: an empty chunk list or graph would
 * delete the document's chunks or evidence, the rest name the victim's chunk and node.
 */
export function leaseCalls(
  jobId: string,
  token: string | null,
  victim: Pick<SeededTenant, 'chunkId' | 'nodeId'>,
): [name: string, sql: string, params: unknown[]][] {
  const stolen = JSON.stringify({ content: 'stolen', sources: [], input_sha256: 'x' });
  return [
    ['hd_heartbeat', 'select public.hd_heartbeat($1, $2, 600)', [jobId, token]],
    ['hd_adopt_lease', 'select * from public.hd_adopt_lease($1, $2, 600)', [jobId, token]],
    ['hd_report_progress', 'select public.hd_report_progress($1, $2, 99)', [jobId, token]],
    ['hd_complete_job', 'select * from public.hd_complete_job($1, $2)', [jobId, token]],
    [
      'hd_fail_job',
      `select * from public.hd_fail_job($1, $2, 'CRASHED', 'x', false)`,
      [jobId, token],
    ],
    ['hd_release_job', 'select * from public.hd_release_job($1, $2)', [jobId, token]],
    [
      'hd_upsert_assets',
      'select * from public.hd_upsert_assets($1, $2, $3)',
      [jobId, token, JSON.stringify([{ title: 'x', source_type: 'upload', source_ref: 'ref-1' }])],
    ],
    [
      'hd_list_document_files',
      'select * from public.hd_list_document_files($1, $2)',
      [jobId, token],
    ],
    [
      'hd_replace_document_chunks',
      `select * from public.hd_replace_document_chunks($1, $2, '[]')`,
      [jobId, token],
    ],
    [
      'hd_count_chunks_to_interpret',
      `select * from public.hd_count_chunks_to_interpret($1, $2, 'v1')`,
      [jobId, token],
    ],
    [
      'hd_list_chunks_to_interpret',
      `select * from public.hd_list_chunks_to_interpret($1, $2, 'v2')`,
      [jobId, token],
    ],
    [
      'hd_upsert_interpretations',
      'select * from public.hd_upsert_interpretations($1, $2, $3)',
      [jobId, token, JSON.stringify([{ chunk_id: victim.chunkId, prompt_version: 'v1' }])],
    ],
    [
      'hd_list_document_interpretations',
      'select * from public.hd_list_document_interpretations($1, $2)',
      [jobId, token],
    ],
    [
      'hd_write_document_graph',
      `select * from public.hd_write_document_graph($1, $2, '[]', '[]')`,
      [jobId, token],
    ],
    [
      'hd_list_document_nodes',
      'select * from public.hd_list_document_nodes($1, $2)',
      [jobId, token],
    ],
    [
      'hd_get_node_context',
      'select public.hd_get_node_context($1, $2, $3)',
      [jobId, token, victim.nodeId],
    ],
    [
      'hd_record_synthesis',
      'select * from public.hd_record_synthesis($1, $2, $3, $4)',
      [jobId, token, victim.nodeId, stolen],
    ],
  ];
}
