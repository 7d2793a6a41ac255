import { randomUUID } from 'node:crypto';
import type { TestDatabase } from './database.ts';

/** The tables that carry a tenant's rows (account_id), for before/after snapshots. */
export const TENANT_TABLES = [
  'hd_ingestion_jobs',
  'hd_document_files',
  'hd_assets',
  'hd_asset_chunks',
  'hd_interpretations',
  'hd_kg_nodes',
  'hd_kg_edges',
  'hd_syntheses',
  'hd_dynamics',
  'hd_job_logs',
  'hd_artifacts',
] as const;

/** One account's rows in every tenant table, read as the superuser, in a stable order. */
export async function snapshotAccount(t: TestDatabase, accountId: string) {
  const snapshot: Record<string, unknown[]> = {};
  for (const table of TENANT_TABLES) {
    const { rows } = await t.sql.query(
      `select * from public.${table} where account_id = $1 order by id::text`,
      [accountId],
    );
    snapshot[table] = rows;
  }
  return snapshot;
}

export interface SeededTenant {
  documentId: string;
  fileId: string;
  chunkId: string;
  interpretationId: string;
  nodeId: string;
  otherNodeId: string;
  edgeId: string;
  synthesisId: string;
}

/**
 * A document of one account as the stages leave it: a file, a chunk, its interpretation,
 * two nodes with an edge whose evidence cites the document, a synthesis and its dynamics
 * row, an asset, a job log line and an artifact. Inserted directly, as the superuser.
 */
export async function seedTenant(
  t: TestDatabase,
  accountId: string,
  documentId: string = randomUUID(),
): Promise<SeededTenant> {
  const one = async (sql: string, params: unknown[]) =>
    (await t.sql.query<{ id: string }>(sql, params)).rows[0]!.id;
  const fileId = await one(
    `insert into hd_document_files (account_id, document_id, storage_path, mime_type)
     values ($1, $2, $3, 'application/pdf') returning id`,
    [accountId, documentId, `accounts/${accountId}/${documentId}/secret.pdf`],
  );
  const chunkId = await one(
    `insert into hd_asset_chunks (account_id, document_id, file_id, chunk_index, content)
     values ($1, $2, $3, 0, $4) returning id`,
    [accountId, documentId, fileId, `confidential text of ${accountId}`],
  );
  const interpretationId = await one(
    `insert into hd_interpretations
       (account_id, document_id, chunk_id, prompt_version, payload, chunk_sha256)
     select $1, $2, $3, 'v1', '{"relations": []}', public.hd__chunk_sha256(null, c.content)
       from hd_asset_chunks c where c.id = $3
     returning id`,
    [accountId, documentId, chunkId],
  );
  const node = (label: string) =>
    one(
      `insert into hd_kg_nodes (account_id, node_type, label, normalized_label)
       values ($1, 'person', $2, lower($2)) returning id`,
      [accountId, label],
    );
  const nodeId = await node('Ada');
  const otherNodeId = await node('Bob');
  const evidence = [
    { document_id: documentId, chunk_id: chunkId, interpretation_id: interpretationId, quote: 'q' },
  ];
  const edgeId = await one(
    `insert into hd_kg_edges (account_id, source_node_id, relation, target_node_id, evidence)
     values ($1, $2, 'knows', $3, $4) returning id`,
    [accountId, nodeId, otherNodeId, JSON.stringify(evidence)],
  );
  const synthesisId = await one(
    `insert into hd_syntheses (account_id, node_id, version, content, input_sha256)
     values ($1, $2, 1, 'Ada knows Bob', 'sha-1') returning id`,
    [accountId, nodeId],
  );
  await t.sql.query(
    `insert into hd_dynamics (account_id, node_id, synthesis_id, change_kind)
     values ($1, $2, $3, 'created')`,
    [accountId, nodeId, synthesisId],
  );
  await t.sql.query(
    `insert into hd_assets (account_id, document_id, source_type, source_ref, title)
     values ($1, $2, 'upload', 'ref-1', 'confidential title')`,
    [accountId, documentId],
  );
  const jobId = randomUUID();
  await t.sql.query(
    `insert into hd_job_logs (account_id, job_id, attempt, seq, level, message)
     values ($1, $2, 1, 0, 'info', 'a line')`,
    [accountId, jobId],
  );
  await t.sql.query(
    `insert into hd_artifacts (account_id, job_id, kind, name, bucket, storage_path, content_type, size_bytes, sha256, attempt)
     values ($1, $2, 'page_text', 'p1.md', 'hd_outputs', $3, 'text/markdown', 1, repeat('0', 64), 1)`,
    [accountId, jobId, `accounts/${accountId}/ocr.txt`],
  );
  return {
    documentId,
    fileId,
    chunkId,
    interpretationId,
    nodeId,
    otherNodeId,
    edgeId,
    synthesisId,
  };
}
