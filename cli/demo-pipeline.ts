import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import type pg from 'pg';
import type { Config } from '../control-plane/config.ts';
import type { ControlPlaneDb } from '../control-plane/db/transport.ts';
import { PACKAGE_ROOT } from '../control-plane/package-root.ts';
import type { StorageBackend } from '../control-plane/storage/storage.ts';
import type { Job } from '../contract/jobs.ts';
import { formatTable } from './format.ts';

/** One document per tenant, run through extract_text → interpretations → graph → syntheses. */
export const PIPELINE_DOCUMENTS = [
  // acme also asks for its text as stored results (artifacts), which the demo then lists.
  {
    tenant: 'acme',
    documentId: 'd0c00000-0000-4000-8000-00000000a001',
    file: 'acme-memo.md',
    debug: { include_texts: true },
  },
  {
    tenant: 'globex',
    documentId: 'd0c00000-0000-4000-8000-00000000b001',
    file: 'globex-memo.md',
    debug: {},
  },
] as const;

export const PIPELINE_STAGES = ['extract_interpretations', 'text2kg', 'synthesize_node'] as const;

/**
 * Uploads the document as the web app would (storage object + hd_document_files row)
 * and queues extract_text with the later stages named, so each completion queues the next.
 */
export async function enqueuePipeline(
  db: ControlPlaneDb,
  sql: pg.Pool,
  storage: StorageBackend,
  config: Config,
  accountId: string,
  doc: (typeof PIPELINE_DOCUMENTS)[number],
): Promise<Job> {
  const local = join(PACKAGE_ROOT, 'examples', doc.file);
  const key = `accounts/${accountId}/documents/${doc.documentId}/${doc.file}`;
  await storage.upload(config.HD_BUCKET, key, local, 'text/markdown');
  await sql.query(
    `insert into public.hd_document_files (account_id, document_id, bucket, storage_path, mime_type, size_bytes)
     values ($1, $2, $3, $4, 'text/markdown', $5)
     on conflict (account_id, bucket, storage_path) do update set size_bytes = excluded.size_bytes`,
    [accountId, doc.documentId, config.HD_BUCKET, key, (await stat(local)).size],
  );
  return db.enqueueJob({
    accountId,
    jobType: 'extract_text',
    documentId: doc.documentId,
    debug: { next_stages: [...PIPELINE_STAGES], ...doc.debug },
  });
}

/** The jobs the roots started: themselves and every stage their completions queued. */
export async function pipelineJobs(sql: pg.Pool, rootIds: string[]): Promise<Job[]> {
  const { rows } = await sql.query<Job>(
    `select * from public.hd_ingestion_jobs
      where id = any($1::uuid[]) or debug #>> '{pipeline,root_job_id}' = any($1::text[])
      order by created_at, id`,
    [rootIds],
  );
  return rows;
}

/** Each tenant's graph: node count and a few syntheses (canonical descriptions). */
export async function tenantGraphs(sql: pg.Pool, tenants: Record<string, string>): Promise<string> {
  const names = Object.fromEntries(Object.entries(tenants).map(([name, id]) => [id, name]));
  const { rows } = await sql.query<{
    account_id: string;
    label: string;
    description: string | null;
  }>(
    `select n.account_id, n.label, n.canonical_description as description
       from public.hd_kg_nodes n
      where n.account_id = any($1::uuid[]) and n.canonical_description is not null
      order by n.account_id, n.label`,
    [Object.values(tenants)],
  );
  return formatTable(
    rows.map((r) => ({
      tenant: names[r.account_id],
      node: r.label,
      synthesis: (r.description ?? '').replace(/\s+/g, ' ').slice(0, 80),
    })),
  );
}
