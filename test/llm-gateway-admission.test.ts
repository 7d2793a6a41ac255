import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../control-plane/logger.ts';
import { handlerResources } from '../runner/handlers/index.ts';
import { DockerLauncher } from '../scheduler/launchers/docker.ts';
import type { GatewayIntake, LlmGateway } from '../scheduler/llm-gateway/server.ts';
import { startLlmGateway } from '../scheduler/llm-gateway/start.ts';
import { RunnerAccess } from '../scheduler/runner-access.ts';
import { createTestDatabase, leasedJob, type TestDatabase } from './helpers/database.ts';
import { removeContainersOf, requireDocker, skipNote, testImage } from './helpers/docker.ts';
import { startOpenAiStandIn, waitUntil, type OpenAiStandIn } from './helpers/openai-server.ts';
import { ACCOUNT_B, tempDir, testConfig } from './helpers/runtime.ts';

// Issue 19: the gateway checks the credential, the declared size and the runner's
// requests in flight BEFORE it reads a body, and holds at most HD_LLM_GATEWAY_BUFFER_BYTES
// of bodies at once. Proved from the attacker's side: tenant B's runner container, launched
// by the real DockerLauncher with what RunnerAccess gives it (the gateway's URL and its
// job's credential), runs test/helpers/attack-gateway-script.ts instead of its handler and
// floods the gateway with large bodies. The test reads what the attacker received and what
// the gateway read off the wire and held (LlmGateway.intake). The stand-in OpenAI server
// (test/helpers/openai-server.ts) STANDS IN FOR THE PROVIDER (OpenAI cannot be reached here).

const d = await requireDocker();
const docker = d.docker!;
const SCHEDULER_ID = `hd-gwadmit-${randomBytes(4).toString('hex')}`;
const MiB = 1 << 20;
const BUFFER = 32 * MiB;
const RUNNER_REQUESTS = 8;
/** What the attacker sent without a usable credential (see the script): 593 MiB. */
const REFUSED_BYTES = (16 + 16 + 8 + 4) * 16 * MiB + 17 * MiB;
/** Its own valid requests the gateway may read: 8 of 7 MiB (the other 4 refused, unread). */
const ADMITTED_BYTES = RUNNER_REQUESTS * 7 * MiB;
/** Read of a refused request before the answer (headers, and the kernel's first read). */
const PER_REFUSAL = 256 * 1024;

let t: TestDatabase;
let provider: OpenAiStandIn;
let gateway: LlmGateway;
/** Each answer as the attacker received it, by phase, in arrival order. */
const answers = new Map<string, string[]>();
let whileHeld: GatewayIntake;
let heldAtProvider: number;
let after: GatewayIntake;

beforeAll(async () => {
  if (!d.available) return;
  let image: string;
  let script: string;
  [t, image, provider, script] = await Promise.all([
    createTestDatabase(),
    testImage(docker),
    startOpenAiStandIn(),
    readFile(new URL('./helpers/attack-gateway-script.ts', import.meta.url), 'utf8'),
  ]);
  const config = testConfig(t.url, await tempDir(), {
    HD_WORKER_ID: SCHEDULER_ID,
    HD_DOCKER_NETWORK: 'host',
    HD_RUNNER_DATABASE_URL: t.runnerUrl,
    HD_LLM_BASE_URL: provider.url,
    HD_LLM_API_KEY: 'sk-provider-admission',
    HD_LLM_MODEL: 'stand-in',
    HD_LLM_GATEWAY_RUNNER_REQUESTS: String(RUNNER_REQUESTS),
    HD_LLM_GATEWAY_BUFFER_BYTES: String(BUFFER),
  });
  gateway = (await startLlmGateway(config, t.db, createLogger({ level: 'silent' })))!;
  const access = new RunnerAccess(config, t.db, undefined, gateway);
  const job = await leasedJob(t, ACCOUNT_B, SCHEDULER_ID);
  // The first four valid requests are held at the provider: their bodies stay in the
  // gateway while the next four wait for room, unread.
  provider.respond((r) => (r.index < 4 ? { kind: 'hang' } : undefined));
  const launcher = new DockerLauncher({
    db: t.db,
    docker,
    schedulerId: SCHEDULER_ID,
    image,
    env: access.baseEnv,
    networkMode: 'host', // the gateway listens on loopback, as for host networking
    killGraceMs: 2000,
    command: ['node', '--input-type=module-typescript', '-e', script],
  });
  let finished!: () => void;
  const done = new Promise<void>((resolve) => (finished = resolve));
  const resources = handlerResources('extract_interpretations');
  const runner = await launcher.launch({
    job,
    resources,
    env: await access.envFor(job, resources),
    onOutput(line) {
      if (!line.startsWith('{')) return;
      const parsed = JSON.parse(line) as { phase?: string; status?: string; done?: true };
      if (parsed.done) finished();
      else if (parsed.phase)
        answers.set(parsed.phase, [...(answers.get(parsed.phase) ?? []), parsed.status!]);
    },
  });
  const exited = runner.wait();
  try {
    const mine = () => answers.get('mine, many at once') ?? [];
    await waitUntil(
      'four valid bodies at the provider, four waiting for room, four refused',
      async () => {
        const early = await Promise.race([exited, Promise.resolve(undefined)]);
        if (early)
          throw new Error(`the attack container exited early:\n${early.outputTail.join('\n')}`);
        return (
          (provider.requests.length === 4 && gateway.intake.waiting === 4 && mine().length === 4) ||
          provider.requests.length > 4
        );
      },
      240_000,
    );
    whileHeld = gateway.intake;
    heldAtProvider = provider.requests.length;
    provider.releaseHanging();
    await Promise.race([done, exited]);
    after = gateway.intake;
  } finally {
    runner.stop('shutdown');
    await exited;
    await runner.outputStored?.();
  }
}, 600_000);
afterAll(async () => {
  if (!d.available) return;
  await removeContainersOf(docker, [SCHEDULER_ID]);
  await gateway?.close();
  await provider?.close();
  await t?.drop();
});

describe.skipIf(!d.available)(
  `the LLM gateway's admission, attacked from a runner container${skipNote(d)}`,
  () => {
    it('answers every body without a usable credential 401, and reads none of them', () => {
      for (const [phase, n] of [
        ['no credential', 16],
        ['made-up credentials', 16],
        ['not a credential', 8],
        ['no credential, no length', 4],
      ] as const)
        expect(answers.get(phase), phase).toEqual(Array(n).fill('401 invalid_api_key'));
      expect(answers.get('mine, over the limit')).toEqual(['413']);
      // 593 MiB sent; the gateway read its valid bodies and at most a first read of the rest.
      expect(after.receivedBytes).toBeLessThan(ADMITTED_BYTES + 45 * PER_REFUSAL + 4 * PER_REFUSAL);
      expect(REFUSED_BYTES).toBeGreaterThan(10 * after.receivedBytes);
    });

    it("holds a runner to its requests in flight and all bodies to the buffer's room", () => {
      // 12 at once with its own credential: 8 in the gateway, the rest refused unread.
      const mine = answers.get('mine, many at once')!;
      expect(mine.slice(0, 4)).toEqual(Array(4).fill('429 runner_requests_exceeded'));
      expect(mine.slice(4).sort()).toEqual(Array(8).fill('200'));
      // While four 7 MiB bodies were held at the provider, the other four waited unread.
      expect(heldAtProvider).toBe(4);
      expect(whileHeld.waiting).toBe(4);
      expect(whileHeld.reservedBytes).toBe(4 * 7 * MiB);
      expect(whileHeld.receivedBytes).toBeLessThan(
        4 * 7 * MiB + 49 * PER_REFUSAL + 4 * PER_REFUSAL,
      );
      expect(after.peakBytes).toBeLessThanOrEqual(BUFFER);
      expect(after.reservedBytes).toBe(0);
      expect(provider.requests).toHaveLength(8);
    });
  },
);
