import { SupabaseDb } from '../control-plane/db/supabase.ts';
import { createTestDatabase } from './helpers/database.ts';
import { describeQueueSuite } from './helpers/queue-suite.ts';
import { startLocalSupabase } from './helpers/supabase-proxy.ts';

// The same queue scenarios as queue.test.ts, through supabase-js → a real PostgREST →
// the same SQL functions. Wake-ups: polling (Realtime cannot run here).
describeQueueSuite('supabase', async () => {
  const t = await createTestDatabase();
  const supabase = await startLocalSupabase(t.url);
  const db = new SupabaseDb({ url: supabase.url, serviceRoleKey: supabase.serviceRoleKey });
  return {
    db,
    sql: t.sql,
    wakeups: 'poll',
    async close() {
      await db.close();
      await supabase.stop();
      await t.drop();
    },
  };
});
