import { randomBytes, randomUUID } from 'node:crypto';
import { chmod, readFile } from 'node:fs/promises';
import type Docker from 'dockerode';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LeasedJob } from '../contract/jobs.ts';
import { loadConfig } from '../control-plane/config.ts';
import { createLogger } from '../control-plane/logger.ts';
import { supabaseUrlSigner } from '../control-plane/storage/signed-urls.ts';
import { handlerResources } from '../runner/handlers/index.ts';
import type { Launcher, LaunchRequest, RunnerExit } from '../scheduler/launcher.ts';
import { CONTAINER_STORAGE_ROOT, DockerLauncher } from '../scheduler/launchers/docker.ts';
import { RunnerAccess } from '../scheduler/runner-access.ts';
import { Scheduler } from '../scheduler/scheduler.ts';
import { uploadGrantsFor, type UploadGrants } from '../scheduler/upload-grants.ts';
import { startLlmGateway } from '../scheduler/llm-gateway/start.ts';
import type { LlmGateway } from '../scheduler/llm-gateway/server.ts';
import {
  A_OBJECT,
  B_OBJECT,
  BUCKET,
  contractObjects,
  keyOf,
  LEASE_FUNCTIONS,
  type AttackPlan,
  type AttemptLine,
} from './helpers/attack-plan.ts';
import { expectations, judge } from './helpers/attack-verdicts.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { removeContainersOf, requireDocker, skipNote, testImage } from './helpers/docker.ts';
import {
  ACCOUNT_A,
  ACCOUNT_B,
  memoryLogger,
  putObject,
  tempDir,
  testConfig,
} from './helpers/runtime.ts';
import { startOpenAiStandIn, type OpenAiStandIn } from './helpers/openai-server.ts';
import { startLocalSupabase, type LocalSupabase } from './helpers/supabase-proxy.ts';

// Issue 11's attack suite. Tenant B's job runs in a real runner container, launched by the
// real DockerLauncher with what RunnerAccess gives it (baseEnv + envFor + its lease token,
// host network, B's storage mount), exactly as the scheduler does; only its command is
// replaced by test/helpers/attack-script.ts, playing a handler taken over by an exploit. It
// tries to reach tenant A every way we know of; each attempt must be refused FOR ITS OWN
// REASON (a grant added by mistake turns a refusal into a success: see the last tests).
// Both transports: PostgreSQL as role hd_runner with fs storage, and the real PostgREST
// with a job JWT and signed URLs of the Storage stand-in (Supabase Storage cannot run here).

const d = await requireDocker();
// A test that starts containers of its own: generous, for a loaded 2-core machine.
const CONTAINERS_TIMEOUT = 300_000;
const docker = d.docker!;
const SCHEDULER_ID = `hd-attack-${randomBytes(4).toString('hex')}`;
let t: TestDatabase;
let image: string;
let script: string;
let victim: AttackPlan['victim'];
/** Another running job of A (its own document, no graph yet), for the graph-lock probe. */
let graphJobOfA: LeasedJob;

beforeAll(async () => {
  if (!d.available) return;
  [t, image, script] = await Promise.all([
    createTestDatabase(),
    testImage(docker),
    readFile(new URL('./helpers/attack-script.ts', import.meta.url), 'utf8'),
  ]);
  victim = await seedTenantA();
}, 900_000);
afterAll(async () => {
  if (!d.available) return;
  await removeContainersOf(docker, [SCHEDULER_ID]);
  await t?.drop();
});

/** Tenant A's data in every hd_ table: a finished document, a running job, a queued one. */
async function seedTenantA(): Promise<AttackPlan['victim']> {
  const one = async (sql: string, params: unknown[]) =>
    (await t.sql.query<{ id: string }>(`${sql} returning id`, params)).rows[0]!.id;
  const documentId = randomUUID();
  const fileId = await one(
    `insert into hd_document_files (account_id, document_id, bucket, storage_path, mime_type, size_bytes)
     values ($1, $2, $3, $4, 'text/plain', 20)`,
    [ACCOUNT_A, documentId, BUCKET, keyOf(ACCOUNT_A)],
  );
  const completed = await claimed(ACCOUNT_A, documentId, 'victim-scheduler');
  await t.db.completeJob(completed.id, completed.lease_token, {});
  const assetId = await one(
    `insert into hd_assets (account_id, source_type, source_ref, title) values ($1, 'upload', 'a-1', 'A: secret title')`,
    [ACCOUNT_A],
  );
  const chunkId = await one(
    `insert into hd_asset_chunks (account_id, document_id, file_id, chunk_index, content)
     values ($1, $2, $3, 0, 'A: secret text')`,
    [ACCOUNT_A, documentId, fileId],
  );
  const interpretationId = await one(
    `insert into hd_interpretations (account_id, document_id, chunk_id, prompt_version) values ($1, $2, $3, 'v1')`,
    [ACCOUNT_A, documentId, chunkId],
  );
  const node = (label: string) =>
    one(
      `insert into hd_kg_nodes (account_id, node_type, label, normalized_label) values ($1, 'person', $2, lower($2))`,
      [ACCOUNT_A, label],
    );
  const [nodeId, other] = [await node('Ada'), await node('Bob')];
  await one(
    `insert into hd_kg_edges (account_id, source_node_id, relation, target_node_id, evidence)
     values ($1, $2, 'knows', $3, $4)`,
    [
      ACCOUNT_A,
      nodeId,
      other,
      JSON.stringify([
        {
          document_id: documentId,
          chunk_id: chunkId,
          interpretation_id: interpretationId,
          quote: 'A',
        },
      ]),
    ],
  );
  const synthesis = await one(
    `insert into hd_syntheses (account_id, node_id, version, content) values ($1, $2, 1, 'A: synthesis')`,
    [ACCOUNT_A, nodeId],
  );
  await one(
    `insert into hd_dynamics (account_id, node_id, synthesis_id, change_kind) values ($1, $2, $3, 'created')`,
    [ACCOUNT_A, nodeId, synthesis],
  );
  await one(
    `insert into hd_job_logs (account_id, job_id, attempt, seq, level, message) values ($1, $2, 1, 1, 'info', 'A: log line')`,
    [ACCOUNT_A, completed.id],
  );
  await one(
    `insert into hd_artifacts (account_id, job_id, kind, name, bucket, storage_path, content_type, size_bytes, sha256, attempt)
     values ($1, $2, 'page_text', 'p1.md', $3, $4, 'text/markdown', 1, repeat('0', 64), 1)`,
    [ACCOUNT_A, completed.id, BUCKET, keyOf(ACCOUNT_A)],
  );
  const running = await claimed(ACCOUNT_A, documentId, 'victim-scheduler');
  graphJobOfA = await claimed(ACCOUNT_A, randomUUID(), 'victim-scheduler');
  const queued = await t.db.enqueueJob({
    accountId: ACCOUNT_A,
    jobType: 'import_assets_jsonl',
    debug: { bucket: BUCKET, path: keyOf(ACCOUNT_A) },
  });
  // Column statistics exist (pg_stats), so that hd_runner's empty view of them means something.
  await t.sql.query('analyze');
  return {
    account: ACCOUNT_A,
    runningJobId: running.id,
    queuedJobId: queued.id,
    completedJobId: completed.id,
    documentId,
    fileId,
    chunkId,
    interpretationId,
    nodeId,
    assetId,
    assetSourceType: 'upload',
    assetSourceRef: 'a-1',
    bucket: BUCKET,
    key: keyOf(ACCOUNT_A),
  };
}

/** An extract_text job of `account`'s document, claimed (held for an hour). */
async function claimed(account: string, documentId: string, workerId = SCHEDULER_ID) {
  const job = await t.db.enqueueJob({
    accountId: account,
    jobType: 'extract_text',
    documentId,
    debug: {},
  });
  const [leased] = await t.db.claimJobs({ workerId, jobId: job.id, leaseSeconds: 3600 });
  return leased as LeasedJob;
}

/** Tenant B's job: its document has one file (its input); claimed as the scheduler would. */
let documentOfB: string | undefined;
async function tenantBJob(): Promise<LeasedJob> {
  if (!documentOfB) {
    documentOfB = randomUUID();
    await t.sql.query(
      `insert into hd_document_files (account_id, document_id, bucket, storage_path, mime_type, size_bytes)
       values ($1, $2, $3, $4, 'text/plain', 12)`,
      [ACCOUNT_B, documentOfB, BUCKET, keyOf(ACCOUNT_B)],
    );
  }
  return claimed(ACCOUNT_B, documentOfB);
}

interface Attack {
  plan: AttackPlan;
  job: LeasedJob;
  lines: AttemptLine[];
  /** `docker inspect` of the attack container while it was running. */
  info: Docker.ContainerInspectInfo;
  exit: RunnerExit;
}

/**
 * Launches tenant B's job as the scheduler does (scheduler.ts #run, cli createScheduler),
 * with the attack script as its command; resolves once the script printed every attempt.
 */
async function attack(
  access: RunnerAccess,
  options: {
    storageRoot?: string;
    Launcher?: typeof DockerLauncher;
    /** Other ids of A to aim at (default: the seeded ones). */
    victim?: Partial<AttackPlan['victim']>;
    /** Runs once the script is done, while its container (and its sessions) still live. */
    whileRunning?: () => Promise<void>;
    /** Receives the script's other lines (e.g. `{"learned": n}`). */
    onNotice?: (notice: Record<string, unknown>) => void;
  } = {},
): Promise<Attack> {
  const job = await tenantBJob();
  const { tables, functions } = await contractObjects(t.sql);
  const plan: AttackPlan = {
    victim: { ...victim, ...options.victim },
    tables,
    functions,
    leaseFunctions: LEASE_FUNCTIONS,
  };
  const { storageRoot, Launcher = DockerLauncher } = options;
  const launcher = new Launcher({
    db: t.db,
    docker,
    schedulerId: SCHEDULER_ID,
    image,
    env: access.baseEnv,
    // Embedded PostgreSQL and the local Supabase listen on 127.0.0.1 only.
    networkMode: 'host',
    storageRoot,
    killGraceMs: 2000,
    command: ['node', '--input-type=module-typescript', '-e', script, '--', JSON.stringify(plan)],
  });
  const lines: AttemptLine[] = [];
  let finished!: () => void;
  const done = new Promise<void>((resolve) => (finished = resolve));
  const resources = handlerResources(job.job_type);
  const request: LaunchRequest = {
    job,
    resources,
    env: await access.envFor(job, resources),
    onOutput(line) {
      if (!line.startsWith('{')) return;
      const parsed = JSON.parse(line) as AttemptLine | { done: true } | Record<string, unknown>;
      if ('done' in parsed) finished();
      else if ('attempt' in parsed) lines.push(parsed as AttemptLine);
      else options.onNotice?.(parsed);
    },
  };
  const runner = await launcher.launch(request);
  const exited = runner.wait();
  try {
    const early = await Promise.race([done.then(() => undefined), exited]);
    if (early)
      throw new Error(
        `the attack container exited (${early.exitCode}) before its last attempt:\n${early.outputTail.join('\n')}`,
      );
    const info = await docker.getContainer(runner.id).inspect();
    await options.whileRunning?.();
    runner.stop('shutdown'); // the script waits for SIGTERM once done
    return { plan, job, lines, info, exit: await exited };
  } finally {
    runner.stop('shutdown');
    await exited;
    await runner.outputStored?.(); // a followed container stays until then (as for a scheduler)
    // Undo what the "set a default for every runner's sessions" attempt may have done.
    await t.sql.query(`alter role hd_runner in database ${t.name} reset all`);
  }
}

/**
 * A's own graph write, done while B's attack container still holds its sessions. It waits
 * at most 10 s for a lock: that is 10 s only where it is stalled, at once otherwise.
 */
async function graphWriteOfA(): Promise<string> {
  const client = await t.sql.connect();
  try {
    await client.query(`set lock_timeout = '10s'`);
    await client.query(`select * from hd_write_document_graph($1, $2, '[]', '[]')`, [
      graphJobOfA.id,
      graphJobOfA.lease_token,
    ]);
    return 'written';
  } catch (error) {
    return (error as Error).message;
  } finally {
    await client.query('reset lock_timeout');
    client.release();
  }
}

/** Session defaults a role gets in the test database (ALTER ROLE … IN DATABASE … SET). */
async function roleDefaults(role: string): Promise<string[]> {
  const { rows } = await t.sql.query<{ setconfig: string[] }>(
    `select s.setconfig from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase
      where d.datname = current_database() and s.setrole = $1::regrole`,
    [role],
  );
  return rows.flatMap((r) => r.setconfig);
}

// FOUND BY THIS SUITE, reported (the fixes are SQL). On the postgres transport every runner
// is the same role, hd_runner, with PostgreSQL's PUBLIC rights:
// Closed since (each was an it.fails test here first): advisory locks (an account's graph
// writes take turns on a row lock in hd_private, which no client role reaches, since
// 00010), pg_terminate_backend and ALTER ROLE on the shared role (each job's runner logs in
// with a role of its own, hd_create_job_role). The shared HD_RUNNER_DATABASE_URL fallback
// keeps the last two: test/runner-role-sharing.test.ts.
const withoutKnownHoles = (wrong: string[]) => wrong;

/** What a job's credential is made to outlive (its time limit): any will do here. */
const RUNNER_LIMITS = { gpu: false, memoryMb: 512, cpus: 1, timeoutMs: 10 * 60_000 };

/** Every row of tenant A in every hd_ table with an account_id. */
async function rowsOfA(): Promise<Record<string, unknown[]>> {
  const { rows: tables } = await t.sql.query<{ table_name: string }>(
    `select table_name from information_schema.columns
      where table_schema = 'public' and table_name like 'hd\\_%' and column_name = 'account_id'
      order by 1`,
  );
  const out: Record<string, unknown[]> = {};
  for (const { table_name } of tables)
    out[table_name] = (
      await t.sql.query(`select * from public.${table_name} where account_id = $1 order by 1`, [
        ACCOUNT_A,
      ])
    ).rows;
  return out;
}

/** `docker inspect`'s Env as a map. */
const envOf = (info: Docker.ContainerInspectInfo) =>
  new Map(info.Config.Env.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));

describe.skipIf(!d.available)(
  `attacks from inside tenant B's runner container${skipNote(d)}`,
  () => {
    describe('postgres transport (role hd_runner), fs storage', () => {
      let root: string;
      let access: RunnerAccess;
      let before: Record<string, unknown[]>;
      let result: Attack;
      let graphWrite: string;
      let runnerSessionOfA: string;
      let runnerRoleDefaults: string[];
      let provider: OpenAiStandIn;
      let gateway: LlmGateway;
      const PROVIDER_KEY = 'sk-provider-attack-suite';
      const superPassword = () => decodeURIComponent(new URL(t.url).password);

      beforeAll(async () => {
        root = await tempDir('hd-attack-');
        await chmod(root, 0o755); // the runner (uid 1000) reads it
        await putObject(root, BUCKET, keyOf(ACCOUNT_A), A_OBJECT);
        await putObject(root, BUCKET, keyOf(ACCOUNT_B), B_OBJECT);
        // The default: each job's runner logs in with a role made for its job.
        // The scheduler's LLM gateway in front of the stand-in OpenAI API (no provider can run
        // here); B's account may use 2,000 tokens a day.
        provider = await startOpenAiStandIn();
        // A streamed answer carries no usage block (OpenAI's chat API, stream without
        // stream_options.include_usage): the stand-in answers such a request without one.
        provider.respond((request) =>
          (request.body as { stream?: boolean }).stream
            ? { kind: 'answer', usage: false }
            : undefined,
        );
        const config = testConfig(t.url, root, {
          HD_WORKER_ID: SCHEDULER_ID,
          HD_DOCKER_NETWORK: 'host',
          HD_LLM_BASE_URL: provider.url,
          HD_LLM_API_KEY: PROVIDER_KEY,
          HD_LLM_MODEL: 'stand-in',
          HD_TRANSCRIBE_BASE_URL: provider.url,
          // What a request naming no output limit reserves: well inside B's budget.
          HD_LLM_MAX_OUTPUT_TOKENS: '200',
        });
        gateway = (await startLlmGateway(config, t.db, createLogger({ level: 'silent' })))!;
        await t.sql.query('select hd_set_llm_budget($1, 2000)', [ACCOUNT_B]);
        access = new RunnerAccess(config, t.db, undefined, gateway);
        before = await rowsOfA();
        // A's runner, connected with the role of its job.
        const urlOfA = (await access.envFor(graphJobOfA, RUNNER_LIMITS)).HD_DATABASE_URL!;
        const sessionOfA = new pg.Client(urlOfA);
        sessionOfA.on('error', () => {}); // a terminated session reports here too
        await sessionOfA.connect();
        // A's graph write in progress (its transaction open): it holds A's graph lock.
        const writing = await t.sql.connect();
        await writing.query('begin');
        await writing.query(`select * from hd_write_document_graph($1, $2, '[]', '[]')`, [
          graphJobOfA.id,
          graphJobOfA.lease_token,
        ]);
        const writeDone = () => writing.query('commit').catch(() => {});
        result = await attack(access, {
          storageRoot: root,
          onNotice: (notice) => void ('learned' in notice && writeDone()),
          whileRunning: async () => {
            graphWrite = await graphWriteOfA();
            runnerRoleDefaults = await roleDefaults('hd_runner');
          },
        });
        await writeDone();
        writing.release();
        runnerSessionOfA = await sessionOfA.query('select 1').then(
          () => 'alive',
          (error: Error) => error.message,
        );
        await sessionOfA.end().catch(() => {});
      }, 600_000);
      afterAll(async () => {
        await gateway?.close();
        await provider?.close();
      });

      it('refuses every attempt, each for its own reason', async () => {
        expect(result.lines.length).toBeGreaterThan(
          result.plan.tables.length + result.plan.functions.length,
        );
        const wrong = judge(result.lines, expectations('postgres', result, [superPassword()]));
        expect(withoutKnownHoles(wrong)).toEqual([]);
        expect(result.exit.exitCode).toBe(0);
      });

      it("cannot take A's graph lock and stall A's graph writes", () => {
        expect(graphWrite).toBe('written');
      });

      it("cannot end A's runner's database session", () => {
        expect(runnerSessionOfA).toBe('alive');
      });

      it("cannot set defaults for other runners' sessions", () => {
        expect(runnerRoleDefaults).toEqual([]);
      });

      it("leaves A's rows as they were; B's outputs naming A land in B", async () => {
        expect(await rowsOfA()).toEqual(before);
        const { rows } = await t.sql.query(
          `select account_id, source_ref from hd_assets where title = 'planted' order by 2`,
        );
        expect(rows).toEqual([
          { account_id: ACCOUNT_B, source_ref: 'a-1' },
          { account_id: ACCOUNT_B, source_ref: 'attack-1' },
        ]);
        // The column statistics hd_runner saw none of exist.
        const { rows: stats } = await t.sql.query(
          `select count(*)::int as n from pg_stats where tablename like 'hd\\_%'`,
        );
        expect(stats[0].n).toBeGreaterThan(0);
      });

      it('holds no credential of the scheduler, as docker inspect of the live container shows', () => {
        const env = envOf(result.info);
        // Role hd_runner's URL (or, should runners get one each, a job's own login role).
        expect(new URL(env.get('HD_DATABASE_URL')!).username).toMatch(
          /^hd_(runner|job_[0-9a-f]{32})$/,
        );
        expect(result.info.Config.Env.join('\n')).not.toContain(superPassword());
        expect(
          [...env.keys()].filter((k) => /SERVICE_ROLE|JWT_SECRET|RUNNER_|JOB_TOKEN/.test(k)),
        ).toEqual([]);
        // The LLM gateway's credential of this job, never the provider's key.
        expect(env.get('HD_LLM_API_KEY')).toMatch(/^hdgw_/);
        expect(result.info.Config.Env.join('\n')).not.toContain(PROVIDER_KEY);
        const outputs = `hd_outputs/accounts/${ACCOUNT_B}`;
        expect(result.info.HostConfig.Binds).toEqual([
          `${root}/${outputs}:${CONTAINER_STORAGE_ROOT}/${outputs}:ro`,
          `${root}/${BUCKET}/accounts/${ACCOUNT_B}:${CONTAINER_STORAGE_ROOT}/${BUCKET}/accounts/${ACCOUNT_B}:ro`,
          `${root}/${outputs}/jobs/${result.job.id}:${CONTAINER_STORAGE_ROOT}/${outputs}/jobs/${result.job.id}:rw`,
        ]);
        expect(result.info.HostConfig.NetworkMode).toBe('host');
      });

      it(
        "a forged cancel notice for A's running job does not stop A's runner",
        async () => {
          // A's jobs run under a real scheduler (docker launcher; their runners only wait), whose
          // stop requests are recorded.
          const schedulerId = `${SCHEDULER_ID}-a`;
          const config = testConfig(t.url, root, {
            HD_WORKER_ID: schedulerId,
            HD_DOCKER_NETWORK: 'host',
            HD_RUNNER_DATABASE_URL: t.runnerUrl,
            HD_JOB_TYPES: 'text2kg',
            HD_SLOTS: '2',
            HD_POLL_INTERVAL_MS: '200',
          });
          const victimAccess = new RunnerAccess(config, t.db);
          const docker_ = new DockerLauncher({
            db: t.db,
            docker,
            schedulerId,
            image,
            env: victimAccess.baseEnv,
            networkMode: 'host',
            storageRoot: root,
            killGraceMs: 2000,
            command: ['node', '-e', 'setInterval(() => {}, 1000)'],
          });
          const stops: string[] = [];
          const launcher: Launcher = {
            async launch(request) {
              const runner = await docker_.launch(request);
              return {
                id: runner.id,
                wait: () => runner.wait(),
                stop(why) {
                  stops.push(`${request.job.id} ${why}`);
                  runner.stop(why);
                },
              };
            },
          };
          const scheduler = new Scheduler({
            db: t.db,
            launcher,
            config,
            log: createLogger({ level: 'silent' }),
            runnerEnv: (job, resources) => victimAccess.envFor(job, resources),
          });
          const enqueue = () =>
            t.db.enqueueJob({
              accountId: ACCOUNT_A,
              jobType: 'text2kg',
              documentId: victim.documentId,
              debug: {},
            });
          const [target, barrier] = [await enqueue(), await enqueue()];
          const barrierEnded = new Promise((resolve) =>
            scheduler.on('job:finished', (job) => {
              if (job.id === barrier.id) resolve(job);
            }),
          );
          await scheduler.start();
          try {
            const running = (id: string) =>
              t.db
                .getJob(id)
                .then((job) =>
                  job?.container_id ? docker.getContainer(job.container_id).inspect() : undefined,
                )
                .then((info) => info?.State.Running === true);
            await expect
              .poll(async () => (await running(target.id)) && (await running(barrier.id)), {
                timeout: 120_000,
              })
              .toBe(true);
            const forged = await attack(access, {
              storageRoot: root,
              victim: { runningJobId: target.id },
            });
            expect(
              withoutKnownHoles(
                judge(forged.lines, expectations('postgres', forged, [superPassword()])),
              ),
            ).toEqual([]);
            // A real cancel of the other job, sent after the forged notice: the scheduler gets
            // notices in commit order, so once it stopped that runner it has seen the forged one.
            await t.db.cancelJob(barrier.id);
            await barrierEnded;
            expect(stops).toEqual([`${barrier.id} cancelled`]);
            expect(await t.db.getJob(target.id)).toMatchObject({ status: 'running' });
          } finally {
            await t.db.cancelJob(target.id).catch(() => {});
            await scheduler.stop(0);
            await removeContainersOf(docker, [schedulerId]);
          }
        },
        CONTAINERS_TIMEOUT,
      );

      // The suite's power: the same attack with one mistake planted must come out red, at the
      // attempt the mistake opens and nowhere else.
      it(
        'a grant added by mistake is caught',
        async () => {
          await t.sql.query('grant select on public.hd_assets to hd_runner');
          let planted: Attack;
          try {
            planted = await attack(access, { storageRoot: root });
          } finally {
            await t.sql.query('revoke select on public.hd_assets from hd_runner');
          }
          const wrong = judge(planted.lines, expectations('postgres', planted, [superPassword()]));
          expect(withoutKnownHoles(wrong)).toEqual([
            expect.stringMatching(/^read table hd_assets: succeeded: /),
          ]);
        },
        CONTAINERS_TIMEOUT,
      );

      it(
        'a mount of the whole storage root is caught',
        async () => {
          // The launcher as it was before issue 11: every tenant's folder in every container.
          class WholeRoot extends DockerLauncher {
            override createOptions(request: LaunchRequest) {
              const options = super.createOptions(request);
              options.HostConfig!.Binds = [`${root}:${CONTAINER_STORAGE_ROOT}:ro`];
              return options;
            }
          }
          const planted = await attack(access, { storageRoot: root, Launcher: WholeRoot });
          const wrong = judge(planted.lines, expectations('postgres', planted, [superPassword()]));
          expect(withoutKnownHoles(wrong)).toEqual([
            expect.stringMatching(/^list the accounts of the bucket: B alone, got \[.*"aaaaaaaa/),
            `read A's object: succeeded: "${A_OBJECT}"`,
            `read A's object through my folder and ..: succeeded: "${A_OBJECT}"`,
            "write into my job's output folder: refused: EROFS",
          ]);
        },
        CONTAINERS_TIMEOUT,
      );
    });

    describe('supabase transport (real PostgREST, job JWT), supabase storage (stand-in)', () => {
      let supabase: LocalSupabase;
      let grants: UploadGrants;
      let access: RunnerAccess;
      let before: Record<string, unknown[]>;
      let result: Attack;
      const secrets = () => [
        supabase.serviceRoleKey,
        supabase.postgrest.jwtSecret,
        decodeURIComponent(new URL(t.url).password),
      ];

      beforeAll(async () => {
        supabase = await startLocalSupabase(t.url);
        await supabase.storage.createBucket(BUCKET);
        await supabase.storage.createBucket('hd_outputs');
        await supabase.storage.putObject(BUCKET, keyOf(ACCOUNT_A), A_OBJECT, 'text/plain');
        await supabase.storage.putObject(BUCKET, keyOf(ACCOUNT_B), B_OBJECT, 'text/plain');
        const config = loadConfig({
          HD_WORKER_ID: SCHEDULER_ID,
          HD_LOG_LEVEL: 'silent',
          HD_TRANSPORT: 'supabase',
          HD_STORAGE: 'supabase',
          HD_DOCKER_NETWORK: 'host',
          SUPABASE_URL: supabase.url,
          SUPABASE_SERVICE_ROLE_KEY: supabase.serviceRoleKey,
          SUPABASE_ANON_KEY: supabase.anonKey,
          SUPABASE_JWT_SECRET: supabase.postgrest.jwtSecret,
        });
        // Where runners ask for artifact upload URLs, as hd-runner scheduler serves it.
        grants = (await uploadGrantsFor(config, t.db, memoryLogger().log))!;
        access = new RunnerAccess(
          { ...config, HD_UPLOAD_GRANT_URL: grants.url },
          t.db,
          supabaseUrlSigner(supabase.url, supabase.serviceRoleKey),
        );
        before = await rowsOfA();
        result = await attack(access);
      }, 600_000);
      afterAll(async () => {
        await grants?.close();
        await supabase?.stop();
      });

      it('refuses every attempt, each for its own reason', async () => {
        expect(result.lines.length).toBeGreaterThan(
          result.plan.tables.length + result.plan.functions.length,
        );
        expect(judge(result.lines, expectations('supabase', result, secrets()))).toEqual([]);
        expect(result.exit.exitCode).toBe(0);
      });

      it("leaves A's rows as they were; B's outputs naming A land in B", async () => {
        expect(await rowsOfA()).toEqual(before);
        const aOutput = `accounts/${ACCOUNT_A}/jobs/${victim.runningJobId}/page_text/planted.md`;
        expect(await supabase.storage.readObject('hd_outputs', aOutput)).toBeUndefined();
        expect(await supabase.storage.readObject(BUCKET, keyOf(ACCOUNT_B))).toEqual(
          Buffer.from(B_OBJECT),
        );
        const { rows } = await t.sql.query(
          `select distinct account_id from hd_assets where title = 'planted'`,
        );
        expect(rows).toEqual([{ account_id: ACCOUNT_B }]);
      });

      it('records only what was stored as declared; the scheduler removes the unchecked rest', async () => {
        const { job } = result;
        const key = (name: string) => `accounts/${ACCOUNT_B}/jobs/${job.id}/page_text/${name}`;
        const { rows } = await t.sql.query(
          `select name, size_bytes::int from hd_artifacts where job_id = $1 order by name`,
          [job.id],
        );
        expect(rows).toEqual([{ name: 'p.md', size_bytes: 7 }]);
        expect(await supabase.storage.readObject('hd_outputs', key('p.md'))).toEqual(
          Buffer.from('planted'),
        );
        // The 1 MiB stays only until the runner's lease ended: the scheduler's sweep on
        // job:finished (cli/commands/scheduler.ts) removes what was granted, never recorded.
        expect((await supabase.storage.readObject('hd_outputs', key('more.md')))?.length).toBe(
          1 << 20,
        );
        await t.db.releaseJob(job.id, job.lease_token);
        await grants.sweep(job.id);
        expect(await supabase.storage.readObject('hd_outputs', key('more.md'))).toBeUndefined();
        const { rows: objects } = await t.sql.query(
          `select name, (metadata->>'size')::int as size from storage.objects
            where bucket_id = 'hd_outputs' and name like $1 order by name`,
          [`accounts/${ACCOUNT_B}/jobs/${job.id}/%`],
        );
        expect(objects).toEqual([{ name: key('p.md'), size: 7 }]);
      });

      it('holds its job token and signed URL only, as docker inspect of the live container shows', () => {
        const env = envOf(result.info);
        const all = result.info.Config.Env.join('\n');
        for (const secret of secrets()) expect(all).not.toContain(secret);
        expect(
          [...env.keys()].filter((k) => /SERVICE_ROLE|JWT_SECRET|RUNNER_|DATABASE_URL/.test(k)),
        ).toEqual([]);
        expect(env.get('HD_JOB_TOKEN')).toMatch(/^ey/);
        expect(Object.keys(JSON.parse(env.get('HD_JOB_STORAGE_URLS')!) as object)).toEqual([
          `${BUCKET}/${keyOf(ACCOUNT_B)}`,
        ]);
        // The LLM provider key is still passed to runners until the LLM gateway issue lands
        // (docs/containers.md); not configured here, so it must not appear.
        expect(env.has('HD_LLM_API_KEY')).toBe(false);
        expect(result.info.HostConfig.Binds ?? []).toEqual([]);
      });

      it(
        'a policy turned into using (true), with the grant it needs, is caught',
        async () => {
          await t.sql.query(
            `grant select on public.hd_job_logs to hd_runner;
           create policy hd_attack_planted on public.hd_job_logs for select to hd_runner using (true)`,
          );
          let planted: Attack;
          try {
            planted = await attack(access);
          } finally {
            await t.sql.query(
              `drop policy hd_attack_planted on public.hd_job_logs;
             revoke select on public.hd_job_logs from hd_runner`,
            );
          }
          expect(judge(planted.lines, expectations('supabase', planted, secrets()))).toEqual([
            expect.stringMatching(/^read table hd_job_logs: succeeded: .*A: log line/),
          ]);
        },
        CONTAINERS_TIMEOUT,
      );
    });
  },
);
