import { afterAll, beforeAll, describe, it } from 'vitest';
import { chaosSize, runChaos } from './helpers/chaos.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { requireDocker, skipNote, testImage } from './helpers/docker.ts';

/**
 * The chaos run (test/helpers/chaos.ts) with the docker launcher: real runner containers,
 * the engine cut through a relay on its socket (never stopped: it serves others too).
 * Small here; full size for bench/RESULTS.md: HD_CHAOS_JOBS=100 HD_CHAOS_FAULTS=25
 * HD_CHAOS_ROWS=2000 HD_CHAOS_DOWN_MAX=120 HD_CHAOS_SEED=2 npx vitest run test/chaos-docker.test.ts
 */
const size = chaosSize({ jobs: 6, faults: 6, rows: 2000 });
const d = await requireDocker();
let t: TestDatabase;
let image: string;
beforeAll(async () => {
  if (!d.available) return;
  let built: string;
  [built, t] = await Promise.all([testImage(d.docker), createTestDatabase()]);
  // A tag of its own while it runs: a suite built from other code removes the other
  // hd-runner-test tags (which would remove the image under a long run).
  const tag = built.split(':')[1]!;
  await d.docker.getImage(built).tag({ repo: 'hd-runner-chaos', tag });
  image = `hd-runner-chaos:${tag}`;
}, 900_000);
afterAll(async () => {
  if (image)
    await d
      .docker!.getImage(image)
      .remove()
      .catch(() => {});
  await t?.drop();
});

describe.skipIf(!d.available)(`chaos${skipNote(d)}`, () => {
  const name = `docker launcher: ${size.jobs} jobs under ${size.faults} faults (seed ${size.seed})`;
  it(
    name,
    async () => {
      await runChaos({ launcher: 'docker', t, ...size, docker: d.docker!, image });
    },
    3_600_000,
  );
});
