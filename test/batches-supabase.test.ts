import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { batchesOf } from '../control-plane/db/batches.ts';
import { SupabaseDb } from '../control-plane/db/supabase.ts';
import { webhookOutboxOf } from '../control-plane/db/webhooks.ts';
import { queueReportOf } from '../scheduler/metrics.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { ACCOUNT_A, ACCOUNT_B } from './helpers/runtime.ts';
import { startLocalSupabase, type LocalSupabase } from './helpers/supabase-proxy.ts';

// Batches, the webhook outbox and the queue report on the `supabase` transport: supabase-js
// through a real PostgREST to the same SQL functions (00013) the postgres transport calls.
let t: TestDatabase;
let supabase: LocalSupabase;
let db: SupabaseDb;
beforeAll(async () => {
  t = await createTestDatabase();
  supabase = await startLocalSupabase(t.url);
  db = new SupabaseDb({ url: supabase.url, serviceRoleKey: supabase.serviceRoleKey });
});
afterAll(async () => {
  await db.close();
  await supabase.stop();
  await t.drop();
});

describe('the supabase transport', () => {
  it('enqueues, reads, cancels and requeues a batch', async () => {
    const batches = batchesOf(db);
    const batch = await batches.enqueueBatch({
      accountId: ACCOUNT_A,
      name: 'over rest',
      idempotencyKey: 'rest-1',
      jobs: [
        { jobType: 'sb_probe', debug: { n: 1 } },
        { jobType: 'sb_probe', debug: { n: 2 } },
      ],
    });
    expect(batch).toMatchObject({ name: 'over rest', status: 'active', total: 2, queued: 2 });
    expect(batch.created_at).toBeInstanceOf(Date);
    const again = await batches.enqueueBatch({
      accountId: ACCOUNT_A,
      name: 'over rest',
      idempotencyKey: 'rest-1',
      jobs: [{ jobType: 'sb_probe', debug: {} }],
    });
    expect(again.id).toBe(batch.id);
    expect((await batches.getBatch(batch.id))?.total).toBe(2);
    const jobs = await batches.listBatchJobs(batch.id, 10);
    expect(jobs).toHaveLength(2);
    expect(jobs[0]!.created_at).toBeInstanceOf(Date);
    const [listed] = await batches.listBatches({ accountId: ACCOUNT_A, status: 'active' });
    expect(listed?.id).toBe(batch.id);

    const cancelled = await batches.cancelBatch(batch.id, 'over rest');
    expect(cancelled).toMatchObject({ status: 'cancelled', cancelled: 2 });
    expect(await batches.requeueBatch(batch.id)).toMatchObject({ status: 'active', queued: 2 });
    await expect(batches.cancelBatch(crypto.randomUUID())).rejects.toMatchObject({ code: 'HDN01' });
    await expect(
      batches.enqueueBatch({ accountId: ACCOUNT_A, name: 'x', jobs: [] }),
    ).rejects.toThrow('jobs must be a non-empty JSON array');
  });

  it("takes a batch's own webhook URL and hands out the account's signing secret", async () => {
    const batch = await batchesOf(db).enqueueBatch({
      accountId: ACCOUNT_B,
      name: 'hooked over rest',
      webhookUrl: 'https://hooks.example.com/batch?token=t',
      jobs: [{ jobType: 'sb_hook', debug: { webhook_url: 'https://hooks.example.com/job' } }],
    });
    expect(batch.webhook_url).toBe('https://hooks.example.com/batch?token=t');
    const secret = await webhookOutboxOf(db).signingSecret(ACCOUNT_B);
    const { rows } = await t.sql.query('select hd_webhook_signing_secret($1) as s', [ACCOUNT_B]);
    expect(secret).toBe(rows[0].s);
  });

  it('shows a batch through the CLI', async () => {
    const batch = await batchesOf(db).enqueueBatch({
      accountId: ACCOUNT_B,
      name: 'cli over rest',
      jobs: [{ jobType: 'sb_probe', debug: {} }],
    });
    const show = await execa(
      process.execPath,
      ['cli/main.ts', 'batches', 'show', batch.id.slice(0, 8), '--json'],
      {
        env: {
          PATH: process.env.PATH ?? '',
          HD_TRANSPORT: 'supabase',
          SUPABASE_URL: supabase.url,
          SUPABASE_SERVICE_ROLE_KEY: supabase.serviceRoleKey,
          HD_LOG_LEVEL: 'silent',
        },
        extendEnv: false,
        reject: false,
      },
    );
    expect(show.exitCode, show.stderr).toBe(0);
    expect(JSON.parse(show.stdout)).toMatchObject({
      id: batch.id,
      total: 1,
      jobs: [{ batch_id: batch.id }],
    });
  });

  it('claims and records webhook deliveries, and reports the queue', async () => {
    const outbox = webhookOutboxOf(db);
    const endpoint = await outbox.addEndpoint(ACCOUNT_A, 'https://hooks.example.com/rest', [
      'job.completed',
    ]);
    expect(endpoint.secret).toMatch(/^whsec_/);
    const job = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'sb_hook', debug: {} });
    const [c] = await t.db.claimJobs({ workerId: 'w', leaseSeconds: 60, jobId: job.id });
    await t.db.completeJob(c!.id, c!.lease_token!, {});
    const [due] = await outbox.claim(10, 60);
    expect(due).toMatchObject({
      event_type: 'job.completed',
      url: 'https://hooks.example.com/rest',
      secret: endpoint.secret,
      attempts: 1,
    });
    expect(typeof due!.id).toBe('number');
    await outbox.record(due!.id, { statusCode: 200, latencyMs: 12 });
    const [logged] = await outbox.listDeliveries({ accountId: ACCOUNT_A, limit: 5 });
    expect(logged).toMatchObject({ id: due!.id, status: 'delivered', last_status_code: 200 });
    expect(logged!.delivered_at).toBeInstanceOf(Date);
    expect((await outbox.listEndpoints(ACCOUNT_A)).map((e) => e.id)).toEqual([endpoint.id]);

    const report = await queueReportOf(db)();
    expect(report.webhooks).toEqual({ pending: 0, delivered: 1, failed: 0 });
    expect(report.job_types).toContainEqual(
      expect.objectContaining({ job_type: 'sb_probe', queued: 3 }),
    );
  });
});
