import { createTestDatabase } from './helpers/database.ts';
import { describeQueueSuite } from './helpers/queue-suite.ts';

describeQueueSuite('postgres', async () => {
  const t = await createTestDatabase();
  return { db: t.db, sql: t.sql, wakeups: 'notify', close: () => t.drop() };
});
