import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../control-plane/logger.ts';
import { artifactsOf } from '../control-plane/db/artifacts.ts';
import type { GatewayIntake, LlmGateway } from '../scheduler/llm-gateway/server.ts';
import {
  MAX_CONNECTIONS_PER_ADDRESS,
  type PeerConnectionStats,
} from '../scheduler/peer-connections.ts';
import { serveUploadGrants, type UploadGrants } from '../scheduler/upload-grants.ts';
import { startLlmGateway } from '../scheduler/llm-gateway/start.ts';
import { floodScript } from './helpers/attack-gateway-flood-script.ts';
import { createTestDatabase, leasedJob, type TestDatabase } from './helpers/database.ts';
import {
  gatewayAddressOf,
  removeContainersOf,
  requireDocker,
  runNodeScript,
  skipNote,
  testImage,
} from './helpers/docker.ts';
import { startOpenAiStandIn, waitUntil, type OpenAiStandIn } from './helpers/openai-server.ts';
import { ACCOUNT_A, ACCOUNT_B, tempDir, testConfig } from './helpers/runtime.ts';

// Red team of the LLM gateway (issue 19's admission) and the upload grants: code that took
// over tenant B's runner runs in a runner-image container on Docker's default bridge,
// where both listen, with its job's credential (test/helpers/attack-gateway-flood-script.ts).
// It puts its prompt where the budget's estimate did not look (a tool's description), and
// opens more half-sent connections to each than they hold per address. Verdicts on what the
// database reserved and what reached the provider, and on the connections each held.
// The stand-in OpenAI server STANDS IN FOR THE PROVIDER (OpenAI cannot be reached here);
// it holds what reaches it, so the verdicts are the admissions made before any answer.

const d = await requireDocker();
const docker = d.docker!;
const SCHEDULER_ID = `hd-gwred-${randomBytes(4).toString('hex')}`;
const TOOL_BYTES = 20_000; // ~5,000 prompt tokens each
const BUDGET = 8_000; // room for one such request, not two
const FLOOD = MAX_CONNECTIONS_PER_ADDRESS + 400;
const MiB = 1 << 20;
const BUFFER = 128 * MiB; // the account's share: 64 MiB (accountShare's least)

let t: TestDatabase;
let provider: OpenAiStandIn;
let gateway: LlmGateway;
let grants: UploadGrants;
let grantsWhileFlooded: PeerConnectionStats;
/** The upload grants' answer to another address (this host's) while the flood held. */
let grantsOtherStatus = 0;
let budgetAnswers: string[] = [];
let atProviderAtOnce = 0;
let reserved: { reserved: number; refused: number };
let whileFlooded: GatewayIntake;
let whileHogged: GatewayIntake;
/** Tenant A's request while B's runner held its bodies: its status, or 'waiting'. */
let otherAccountWhileHogged = '';
let hogAnswers: string[] = [];
/** A request of another address (this host's) while the flood held. */
let otherAddressStatus = 0;

beforeAll(async () => {
  if (!d.available) return;
  let image: string;
  [t, image, provider] = await Promise.all([
    createTestDatabase(),
    testImage(docker),
    startOpenAiStandIn(),
  ]);
  const host = gatewayAddressOf(await docker.getNetwork('bridge').inspect());
  const config = testConfig(t.url, await tempDir(), {
    HD_WORKER_ID: SCHEDULER_ID,
    HD_LLM_BASE_URL: provider.url,
    HD_LLM_API_KEY: 'sk-provider-red-team',
    HD_LLM_MODEL: 'stand-in',
    HD_LLM_GATEWAY_ADDRESS: `${host}:0`,
    HD_LLM_GATEWAY_RUNNER_REQUESTS: '8',
    HD_LLM_GATEWAY_BUFFER_BYTES: String(BUFFER),
  });
  const silent = createLogger({ level: 'silent' });
  gateway = (await startLlmGateway(config, t.db, silent))!;
  // No grant is asked for here: signing and removing are never reached.
  grants = await serveUploadGrants({
    address: `${host}:0`,
    db: t.db,
    artifacts: artifactsOf(t.db),
    signUpload: () => Promise.reject(new Error('not in this test')),
    removeObjects: () => Promise.reject(new Error('not in this test')),
    log: silent,
  });
  await t.sql.query('insert into hd_llm_budgets (account_id, daily_tokens) values ($1, $2)', [
    ACCOUNT_B,
    BUDGET,
  ]);
  const credentialOf = async (account: string) =>
    gateway.issue(await leasedJob(t, account, SCHEDULER_ID), new Date(Date.now() + 600_000));
  const credential = await credentialOf(ACCOUNT_B);
  provider.respond(() => ({ kind: 'hang' }));
  // Tenant A's job, whose runner asks for a completion while B's hogs the buffer.
  const credentialA = await credentialOf(ACCOUNT_A);
  // "go": the attacker holds its hog, then its flood, until these connections close.
  const goSockets: net.Socket[] = [];
  const goServer = net.createServer((s) => goSockets.push(s));
  await new Promise<void>((resolve) => goServer.listen(0, host, resolve));
  const script = floodScript({
    gatewayUrl: gateway.url,
    credential,
    grantsUrl: grants.url,
    go: `${host}:${(goServer.address() as net.AddressInfo).port}`,
    flood: FLOOD,
    toolBytes: TOOL_BYTES,
  });
  const attack = runNodeScript(docker, {
    image,
    script,
    network: 'bridge',
    schedulerId: SCHEDULER_ID,
  });
  let failed: unknown;
  attack.catch((error: unknown) => (failed = error));
  const refused = async () =>
    Number(
      (
        await t.sql.query<{ n: string }>(
          'select coalesce(sum(refused), 0) as n from hd_llm_usage where account_id = $1',
          [ACCOUNT_B],
        )
      ).rows[0]!.n,
    );
  await waitUntil(
    'each budget request at the provider or refused',
    async () => {
      if (failed) throw failed as Error;
      return provider.requests.length + (await refused()) === 4;
    },
    240_000,
  );
  atProviderAtOnce = provider.requests.length;
  const { rows } = await t.sql.query<{ reserved: string; refused: string }>(
    `select coalesce(sum(reserved_tokens), 0) as reserved, coalesce(sum(refused), 0) as refused
       from hd_llm_usage where account_id = $1`,
    [ACCOUNT_B],
  );
  reserved = { reserved: Number(rows[0]!.reserved), refused: Number(rows[0]!.refused) };
  provider.respond(undefined);
  provider.releaseHanging();
  await waitUntil(
    "each of the attacker's 8 held bodies in the gateway or refused",
    () => {
      if (failed) throw failed as Error;
      const i = gateway.intake;
      return goSockets.length === 1 && i.requests + i.sharesRefused >= 8;
    },
    240_000,
  );
  whileHogged = gateway.intake;
  let settled = '';
  const askedA = fetch(`${gateway.url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${credentialA}` },
    body: JSON.stringify({
      model: 'stand-in',
      max_tokens: 5,
      messages: [{ role: 'user', content: 'a'.repeat(MiB) }],
    }),
  }).then(async (res) => {
    await res.arrayBuffer();
    settled = String(res.status);
  });
  await waitUntil(
    'A answered, or waiting for room',
    () => settled !== '' || gateway.intake.waiting > 0,
  );
  otherAccountWhileHogged = settled || 'waiting';
  goSockets[0]!.destroy();
  await askedA;
  const seenAll = (c: PeerConnectionStats) => c.connections + c.refusedConnections >= FLOOD;
  await waitUntil(
    'every flood connection seen by the gateway and the upload grants',
    () => {
      if (failed) throw failed as Error;
      return goSockets.length === 2 && seenAll(gateway.intake) && seenAll(grants.connections());
    },
    240_000,
  );
  whileFlooded = gateway.intake;
  grantsWhileFlooded = grants.connections();
  const asked = await fetch(grants.url, { method: 'POST', body: '{}' });
  grantsOtherStatus = asked.status;
  await asked.arrayBuffer();
  const res = await fetch(`${gateway.url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${credential}` },
    body: JSON.stringify({
      model: 'stand-in',
      max_tokens: 5,
      messages: [{ role: 'user', content: 'ok' }],
    }),
  });
  otherAddressStatus = res.status;
  await res.arrayBuffer();
  goSockets[1]!.destroy();
  const out = await attack;
  hogAnswers = out
    .split('\n')
    .filter((l) => l.includes('"hog"'))
    .flatMap((l) => (JSON.parse(l) as { answers: string[] }).answers);
  budgetAnswers = out
    .split('\n')
    .filter((l) => l.includes('"budget"'))
    .map((l) => String((JSON.parse(l) as { status: number }).status))
    .sort();
  goServer.close();
}, 600_000);

afterAll(async () => {
  if (!d.available) return;
  await removeContainersOf(docker, [SCHEDULER_ID]);
  await gateway?.close();
  await grants?.close();
  await provider?.close();
  await t?.drop();
});

describe.skipIf(!d.available)(
  `the LLM gateway, red team from a runner container${skipNote(d)}`,
  () => {
    it("reserves a request's whole body against the budget, not only its messages", () => {
      // Four at once, each ~5,000 prompt tokens in a tool: the budget (8,000) covers one.
      expect(atProviderAtOnce).toBe(1);
      expect(reserved.refused).toBe(3);
      expect(reserved.reserved).toBeGreaterThanOrEqual(TOOL_BYTES / 4);
      expect(budgetAnswers).toEqual(['200', '402', '402', '402']);
    });

    it("holds one account's bodies to its share of the buffer; another account's request is answered meanwhile", () => {
      // 8 bodies declared at 16 MiB: 4 fit B's 64 MiB share, 4 refused unread (429).
      expect(whileHogged.reservedBytes).toBeLessThanOrEqual(64 * MiB);
      expect(whileHogged.sharesRefused).toBe(4);
      expect(otherAccountWhileHogged).toBe('200');
      expect(hogAnswers).toEqual(Array(4).fill('HTTP/1.1 429')); // the held ones: no answer
    });

    it('holds at most MAX_CONNECTIONS_PER_ADDRESS connections of one address, and serves others', () => {
      expect(whileFlooded.peakConnections).toBeLessThanOrEqual(MAX_CONNECTIONS_PER_ADDRESS + 1);
      expect(whileFlooded.refusedConnections).toBeGreaterThanOrEqual(
        FLOOD - MAX_CONNECTIONS_PER_ADDRESS,
      );
      expect(otherAddressStatus).toBe(200);
    });

    it('the upload grants too: at most MAX_CONNECTIONS_PER_ADDRESS of one address, others answered', () => {
      expect(grantsWhileFlooded.peakConnections).toBeLessThanOrEqual(MAX_CONNECTIONS_PER_ADDRESS);
      expect(grantsWhileFlooded.refusedConnections).toBeGreaterThanOrEqual(
        FLOOD - MAX_CONNECTIONS_PER_ADDRESS,
      );
      expect(grantsOtherStatus).toBe(400); // read and answered: `{}` names no job
    });
  },
);
