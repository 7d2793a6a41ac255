import { randomBytes, randomUUID } from 'node:crypto';
import { chmod } from 'node:fs/promises';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createScheduler } from '../cli/commands/scheduler.ts';
import type { Job } from '../contract/jobs.ts';
import { configToEnv, type Config } from '../control-plane/config.ts';
import { createLogger } from '../control-plane/logger.ts';
import { startLlmGateway } from '../scheduler/llm-gateway/start.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import {
  containersOf,
  gatewayAddressOf,
  removeContainersOf,
  requireDocker,
  runNodeScript,
  skipNote,
  testImage,
} from './helpers/docker.ts';
import { insertChunks } from './helpers/llm-stages.ts';
import { startOpenAiStandIn, waitUntil, type OpenAiStandIn } from './helpers/openai-server.ts';
import { startDbRelay, type OutageRelay } from './helpers/outage-relay.ts';
import { ACCOUNT_A, tempDir, testConfig } from './helpers/runtime.ts';

// The LLM gateway for runner containers on Docker's default bridge network, the
// launcher's default (HD_DOCKER_NETWORK unset), and on a user-defined network: the
// gateway listens on the network's gateway address (docker0's for the default bridge,
// from `docker network inspect`), which is where the containers reach this host. Real runner containers, real PostgreSQL (reached from the
// bridge through a TCP relay on that address: the suite's PostgreSQL listens on 127.0.0.1
// only; in production the database is elsewhere), and the stand-in OpenAI server
// (test/helpers/openai-server.ts), which STANDS IN FOR THE PROVIDER (OpenAI cannot be
// reached here) and listens on loopback: only the gateway reaches it.

const d = await requireDocker();
const docker = d.docker!;
const PROVIDER_KEY = `sk-provider-${randomBytes(12).toString('hex')}`;
const IN_PROCESS_ID = `hd-gwb-${randomBytes(4).toString('hex')}`;
const CLI_ID = `hd-gwb-cli-${randomBytes(4).toString('hex')}`;
const silent = createLogger({ level: 'silent' });

let t: TestDatabase;
let server: OpenAiStandIn;
let relay: OutageRelay & { url: string };
let bridgeAddress: string;
/** A user-defined bridge network of this test's own (HD_DOCKER_NETWORK=<name>). */
const NAMED_NETWORK = `hd-gwb-net-${randomBytes(4).toString('hex')}`;
let namedNetwork: { id: string; address: string } | undefined;
let config: Config;

beforeAll(async () => {
  if (!d.available) return;
  let image: string;
  let root: string;
  [image, t, server, root] = await Promise.all([
    testImage(docker),
    createTestDatabase(),
    startOpenAiStandIn(),
    tempDir(),
  ]);
  await chmod(root, 0o755);
  bridgeAddress = gatewayAddressOf(await docker.getNetwork('bridge').inspect());
  relay = await startDbRelay(t.runnerUrl, bridgeAddress);
  const named = await docker.createNetwork({ Name: NAMED_NETWORK });
  namedNetwork = { id: named.id, address: gatewayAddressOf(await named.inspect()) };
  config = testConfig(t.url, root, {
    HD_LAUNCHER: 'docker',
    HD_DOCKER_IMAGE: image,
    HD_RUNNER_DATABASE_URL: relay.url,
    HD_SLOTS: '1',
    HD_POLL_INTERVAL_MS: '200',
    HD_JOB_TYPES: 'extract_interpretations',
    HD_LLM_BASE_URL: server.url,
    HD_LLM_API_KEY: PROVIDER_KEY,
    HD_LLM_MODEL: 'stand-in',
    HD_LLM_MAX_OUTPUT_TOKENS: '200',
    HD_LLM_CONCURRENCY: '1',
  });
}, 900_000);

afterAll(async () => {
  if (!d.available) return;
  const left = await containersOf(docker, [IN_PROCESS_ID, CLI_ID]);
  await removeContainersOf(docker, [IN_PROCESS_ID, CLI_ID]);
  if (namedNetwork) await docker.getNetwork(namedNetwork.id).remove();
  await relay?.close();
  await server?.close();
  await t?.drop();
  expect(left.map((c) => c.Names[0])).toEqual([]);
});

/** An extract_interpretations job over `chunks` chunks of `account`. */
async function enqueueDocument(account: string, chunks: number): Promise<Job> {
  const doc = randomUUID();
  const texts = Array.from(
    { length: chunks },
    (_, i) => `part ${i}: Acme Corp audits Müller GmbH. Ana Lopez reports to Ben.`,
  );
  await insertChunks(t, account, doc, texts);
  return t.db.enqueueJob({
    accountId: account,
    jobType: 'extract_interpretations',
    documentId: doc,
    debug: {},
  });
}

/** Runs `script` with node in a runner-image container on `network`; its stdout. */
const runOn = (network: string, script: string) =>
  runNodeScript(docker, {
    image: config.HD_DOCKER_IMAGE,
    script,
    network,
    schedulerId: IN_PROCESS_ID,
  });

/**
 * From inside a container: the gateway without a credential and with a forged one, and
 * whether its port answers at `gatewayUrl`'s address and at `otherAddress` (another
 * address of the same host: answered only if the gateway listened on every address).
 */
const probeScript = (gatewayUrl: string, otherAddress: string) => `
  const net = await import('node:net');
  const url = new URL(${JSON.stringify(gatewayUrl)});
  const post = async (headers) => {
    const res = await fetch(url + '/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ model: 'stand-in', messages: [{ role: 'user', content: 'attacker' }], max_tokens: 10 }),
    });
    return { status: res.status, body: await res.text() };
  };
  const connect = (host) => new Promise((resolve) => {
    const socket = net.connect(Number(url.port), host);
    socket.setTimeout(5000, () => { socket.destroy(); resolve('no answer'); });
    socket.on('connect', () => { socket.destroy(); resolve('open'); });
    socket.on('error', (e) => resolve(e.code));
  });
  console.log(JSON.stringify({
    noCredential: await post({}),
    forged: await post({ authorization: 'Bearer hdgw_' + 'A'.repeat(43) }),
    atGateway: await connect(url.hostname),
    elsewhere: await connect(${JSON.stringify(otherAddress)}),
  }));
`;

const usedBy = async (jobId: string) =>
  (
    await t.sql.query<{ requests: number; reserved: string }>(
      `select sum(requests)::int as requests, sum(reserved_tokens) as reserved
         from hd_llm_usage where job_id = $1`,
      [jobId],
    )
  ).rows[0]!;

describe.skipIf(!d.available)(`llm gateway on a bridge network${skipNote(d)}`, () => {
  // The launcher's default, and a user-defined network as docs/containers.md describes
  // (its containers reach the relay at the default bridge's address, another of the host's).
  it.each([
    { label: 'the default bridge', network: 'bridge', given: undefined },
    { label: 'a user-defined network', network: NAMED_NETWORK, given: NAMED_NETWORK },
  ])(
    "serves the runner containers of $label at its gateway address, and no one without a job's credential",
    async ({ network, given }) => {
      const own = { ...config, HD_WORKER_ID: IN_PROCESS_ID, HD_DOCKER_NETWORK: given ?? 'bridge' };
      const [address, elsewhere] = given
        ? [namedNetwork!.address, bridgeAddress]
        : [bridgeAddress, namedNetwork!.address];
      const gateway = (await startLlmGateway(own, t.db, silent))!;
      const scheduler = createScheduler(own, t.db, silent, {}, undefined, undefined, gateway);
      try {
        // Bound to the network's gateway address itself (server.address()), not to 0.0.0.0.
        expect(new URL(gateway.url).hostname).toBe(address);
        await scheduler.start();
        server.reset();
        const job = await enqueueDocument(ACCOUNT_A, 2);
        const finished = new Promise<Job>((resolve) => {
          const on = (j: Job) => {
            if (j.id !== job.id) return;
            scheduler.off('job:finished', on);
            resolve(j);
          };
          scheduler.on('job:finished', on);
        });
        const done = await finished;
        expect(`${done.status} ${done.error_code ?? ''}`).toBe('completed ');
        // Its two model requests went through the gateway: the provider saw the scheduler's
        // key, and they are counted for the job.
        expect(server.requests).toHaveLength(2);
        expect(new Set(server.requests.map((r) => r.authorization))).toEqual(
          new Set([`Bearer ${PROVIDER_KEY}`]),
        );
        await expect.poll(async () => (await usedBy(job.id)).requests).toBe(2);

        // Another container on the same network: refused without a job's credential, and the
        // gateway's port is closed on the host's other addresses.
        const seen = JSON.parse(await runOn(network, probeScript(gateway.url, elsewhere)));
        expect(seen).toMatchObject({
          noCredential: { status: 401 },
          forged: { status: 401 },
          atGateway: 'open',
          elsewhere: 'ECONNREFUSED',
        });
        expect(seen.forged.body).toMatch(/credential is not valid/);
        expect(server.requests).toHaveLength(2); // nothing of the probe reached the provider
      } finally {
        await scheduler.stop(0);
        await gateway.close();
      }
    },
    600_000,
  );

  it('a restarted scheduler listens where its re-adopted runner was told: the job completes, its reservation released', async () => {
    const account = randomUUID();
    await t.sql.query('select public.hd_set_llm_budget($1, 1000000)', [account]);
    const env = {
      PATH: process.env.PATH ?? '',
      ...configToEnv({
        ...config,
        HD_WORKER_ID: CLI_ID,
        HD_LOG_LEVEL: 'info',
        // The runner retries a dropped connection while its scheduler is away.
        HD_LLM_MAX_RETRIES: 20,
        HD_LLM_RETRY_BASE_MS: 200,
        HD_LLM_RETRY_MAX_MS: 2000,
      }),
    };
    server.reset();
    server.respond(() => ({ kind: 'hang' })); // the runner's first request stays at the provider
    const first = await startScheduler(env);
    let second: Awaited<ReturnType<typeof startScheduler>> | undefined;
    try {
      const job = await enqueueDocument(account, 2);
      await waitUntil('the runner mid-request', () => server.inFlight() === 1, 300_000);
      const [container] = await containersOf(docker, [CLI_ID]);
      expect((await usedBy(job.id)).reserved).not.toBe('0');

      first.child.kill('SIGKILL');
      await first.child;
      server.respond(undefined);
      second = await startScheduler(env);
      expect(second.gatewayUrl).toBe(first.gatewayUrl);

      await waitUntil(
        'the job to end',
        async () => (await t.db.getJob(job.id))?.status !== 'running',
        300_000,
      );
      const done = (await t.db.getJob(job.id))!;
      // Completed by the runner that was started before the kill (re-adopted, not relaunched).
      expect(done).toMatchObject({ status: 'completed', attempts: 1, container_id: container!.Id });
      expect(server.abortedCount()).toBe(1); // the request the first scheduler died under
      expect(server.requests.filter((r) => r.answered)).toHaveLength(2);
      // The dead scheduler's reservation went with the lease (00027).
      expect(await usedBy(job.id)).toEqual({ requests: 2, reserved: '0' });
    } finally {
      first.child.kill('SIGKILL'); // where an assertion failed before the kill
      second?.child.kill('SIGTERM');
      await second?.child;
    }
  }, 600_000);
});

/** `hd-runner scheduler` in a process of its own; resolves once it started, with its gateway's URL. */
async function startScheduler(env: Record<string, string>) {
  const child: ResultPromise<{ reject: false }> = execa(
    process.execPath,
    ['cli/main.ts', 'scheduler'],
    { env, extendEnv: false, reject: false },
  );
  const gatewayUrl = await new Promise<string>((resolve, reject) => {
    let seen = '';
    child.stderr.on('data', (chunk: Buffer) => {
      seen += String(chunk);
      const url = /"url":"([^"]+)"[^\n]*"llm gateway listening"/.exec(seen)?.[1];
      if (url && seen.includes('"scheduler started"')) resolve(url);
    });
    void child.then((r) => reject(new Error(`the scheduler exited: ${r.stderr}`)));
  });
  return { child, gatewayUrl };
}
