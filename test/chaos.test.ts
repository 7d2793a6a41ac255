import { afterAll, beforeAll, it } from 'vitest';
import { chaosSize, runChaos } from './helpers/chaos.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';

/**
 * The chaos run (test/helpers/chaos.ts) with the process launcher. Small here; full size
 * for bench/RESULTS.md: HD_CHAOS_JOBS=200 HD_CHAOS_FAULTS=40 HD_CHAOS_ROWS=2000
 * HD_CHAOS_DOWN_MAX=120 HD_CHAOS_SEED=2 npx vitest run test/chaos.test.ts
 */
const size = chaosSize({ jobs: 12, faults: 6, rows: 3000 });
let t: TestDatabase;
beforeAll(async () => {
  t = await createTestDatabase();
});
afterAll(async () => {
  await t?.drop();
});

it(`process launcher: ${size.jobs} jobs under ${size.faults} faults (seed ${size.seed})`, async () => {
  await runChaos({ launcher: 'process', t, ...size });
}, 3_600_000);
