import { spawn, type ChildProcess } from 'node:child_process';
import { chmod } from 'node:fs/promises';
import { openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type Docker from 'dockerode';
import { expect } from 'vitest';
import type { Job, LeasedJob } from '../../contract/jobs.ts';
import { configToEnv, type Config } from '../../control-plane/config.ts';
import { DockerLauncher, LABELS } from '../../scheduler/launchers/docker.ts';
import { RunnerAccess } from '../../scheduler/runner-access.ts';
import { handlerResources } from '../../scheduler/scheduler.ts';
import type { TestDatabase } from './database.ts';
import { startDbRelay, startDockerRelay, type OutageRelay } from './outage-relay.ts';
import { ACCOUNT_A, ACCOUNT_B, jsonl, putObject, tempDir, testConfig } from './runtime.ts';

/**
 * A bounded chaos run on real parts: `hd-runner scheduler` (process or docker launcher)
 * and its runners against a real PostgreSQL reached through a relay the test takes down
 * (a PostgreSQL restart as the scheduler and runners see it), and for docker the engine
 * reached through a relay on its socket (the machine's engine serves other people's
 * containers: it is cut in front, never stopped). Faults, picked by a seeded generator:
 * a runner killed; the scheduler SIGKILLed with live runners, with a claim it never
 * launched, with a container it created but never started (docker), or restarted while
 * the database is down; the database down mid-run; the engine unreachable (docker). Then
 * the invariants, from SQL, /proc and `docker ps -a`: every job completed exactly once
 * with all its rows and its "job completed" line, no attempt spent for the platform's
 * fault, no runner left, and every job a fault hit handled within 30 s (back in the queue,
 * or its runner re-adopted or started) of time with the database and the engine up.
 */
export interface ChaosOptions {
  launcher: 'process' | 'docker';
  t: TestDatabase;
  jobs: number;
  faults: number;
  seed: number;
  rows: number;
  /** Seconds a database (or engine) outage lasts: [min, max]. */
  downSeconds: [number, number];
  /** The docker launcher's engine and runner image. */
  docker?: Docker;
  image?: string;
}

type FaultKind =
  | 'runner killed'
  | 'scheduler killed'
  | 'claim not launched'
  | 'created not started'
  | 'database down at start'
  | 'database down'
  | 'engine unreachable';

interface Fault {
  kind: FaultKind;
  at: number;
  /** Leases the fault left without a live, watched runner: each must be handled. */
  leases: Map<string, string>;
  backMs: number[];
  /** 'runner killed': the lease of the runner it killed. */
  victimLease?: string;
}

const ACCOUNT_C = 'cccccccc-cccc-4ccc-8ccc-cccccccccccc';
const BACK_WITHIN_MS = 30_000;

/**
 * The size of a run: HD_CHAOS_JOBS, HD_CHAOS_FAULTS, HD_CHAOS_SEED, HD_CHAOS_ROWS and
 * HD_CHAOS_DOWN_MAX (seconds) when set, else the small form's `defaults`.
 */
export function chaosSize(defaults: { jobs: number; faults: number; rows: number }) {
  const env = process.env;
  return {
    jobs: Number(env.HD_CHAOS_JOBS ?? defaults.jobs),
    faults: Number(env.HD_CHAOS_FAULTS ?? defaults.faults),
    seed: Number(env.HD_CHAOS_SEED ?? 1),
    rows: Number(env.HD_CHAOS_ROWS ?? defaults.rows),
    downSeconds: [2, Number(env.HD_CHAOS_DOWN_MAX ?? 6)] as [number, number],
  };
}

/** mulberry32: the same faults for the same seed. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

const runs = (pid: number) => {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};
const pidOf = (job: Job) => Number(/^process:(\d+):/.exec(job.container_id ?? '')?.[1] ?? 0);
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function runChaos(o: ChaosOptions): Promise<void> {
  const { t } = o;
  const worker = `chaos-${o.launcher}-${process.pid}`;
  const relay = await startDbRelay(t.url);
  const root = await tempDir('hd-chaos-');
  await chmod(root, 0o755); // runner containers read it as uid 1000
  let engine: OutageRelay | undefined;
  const engineSocket = join(root, 'docker.sock');
  if (o.launcher === 'docker') engine = await startDockerRelay(engineSocket);
  const rand = random(o.seed);
  const jobIds: string[] = [];
  const accounts = [ACCOUNT_A, ACCOUNT_B, ACCOUNT_C];
  for (let i = 0; i < o.jobs; i++) {
    const account = accounts[i % 3]!;
    const path = `accounts/${account}/assets-jsonl/chaos-${i}.jsonl`;
    const rows = Array.from({ length: o.rows }, (_, r) => ({
      title: `t${r}`,
      source_type: 'chaos',
      source_ref: `${i}-${r}`,
    }));
    await putObject(root, 'hd_uploads_raw', path, jsonl(rows));
    const job = await t.db.enqueueJob({
      accountId: account,
      jobType: 'import_assets_jsonl',
      debug: { path },
      maxAttempts: 10,
    });
    jobIds.push(job.id);
  }
  const config: Config = testConfig(relay.url, root, {
    HD_WORKER_ID: worker,
    HD_SLOTS: '3',
    HD_POLL_INTERVAL_MS: '500',
    HD_RECONCILE_INTERVAL_MS: '5000',
    HD_REAP_INTERVAL_MS: '5000',
    HD_GPUS: 'none',
    HD_LOG_LEVEL: 'info', // runners print "job completed", which hd_job_logs must hold
    ...(o.launcher === 'docker' && {
      HD_DOCKER_IMAGE: o.image!,
      HD_DOCKER_NETWORK: 'host', // the relay listens on the host's loopback
      HD_DOCKER_KILL_GRACE_MS: '2000',
    }),
  });
  const env = {
    PATH: process.env.PATH ?? '',
    ...configToEnv(config),
    ...(engine && { DOCKER_HOST: `unix://${engineSocket}` }),
  };
  // Its log (and its runners' output) goes to a file, for a failure's post-mortem.
  const logPath = join(root, 'scheduler.log');
  const logFile = openSync(logPath, 'a');
  const startScheduler = () =>
    spawn(process.execPath, ['cli/main.ts', 'scheduler', '--launcher', o.launcher], {
      env,
      stdio: ['ignore', logFile, logFile],
    });
  let scheduler: ChildProcess = startScheduler();
  const killScheduler = async () => {
    if (scheduler.exitCode !== null || scheduler.signalCode !== null) return;
    const exited = new Promise((r) => scheduler.once('exit', r));
    scheduler.kill('SIGKILL');
    await exited;
  };
  const jobs = async () =>
    (await t.db.listJobs({ limit: 10_000 })).filter((j) => jobIds.includes(j.id));
  const docker = o.docker;
  const ourContainers = async () =>
    docker
      ? docker.listContainers({
          all: true,
          filters: { label: [`${LABELS.schedulerId}=${worker}`] },
        })
      : [];
  /** Jobs whose runner the scheduler (re-)adopted or started after `since`, from its log. */
  const adoptedSince = (since: number) => {
    const ids = new Set<string>();
    for (const line of readFileSync(logPath, 'utf8').split('\n')) {
      if (!/re-adopted a running runner|started a runner container left created/.test(line))
        continue;
      try {
        const entry = JSON.parse(line) as { time: string; job_id: string };
        if (Date.parse(entry.time) >= since) ids.add(entry.job_id);
      } catch {
        // a runner's partial line
      }
    }
    return ids;
  };
  const runnerPids = new Set<number>();
  const faults: Fault[] = [];
  // When the database or the engine was down: nothing can be handled meanwhile, so a
  // fault's time to be handled leaves out the outages (its own or a later one's).
  const outages: { from: number; to: number | undefined }[] = [];
  const downDuring = (from: number, to: number) =>
    outages.reduce(
      (sum, o) => sum + Math.max(0, Math.min(to, o.to ?? to) - Math.max(from, o.from)),
      0,
    );
  const outage = async (relayDown: OutageRelay, ms: number, during?: () => void) => {
    const o = { from: Date.now(), to: undefined as number | undefined };
    outages.push(o);
    await relayDown.down();
    during?.();
    await pause(ms);
    await relayDown.up();
    o.to = Date.now();
  };
  const watch = setInterval(() => {
    void jobs().then((rows) => {
      const now = Date.now();
      for (const job of rows) if (pidOf(job)) runnerPids.add(pidOf(job));
      for (const fault of faults) {
        if (fault.leases.size === 0) continue;
        const adopted = adoptedSince(fault.at);
        for (const [id, lease] of fault.leases) {
          const row = rows.find((j) => j.id === id);
          if (row?.lease_token === lease && !adopted.has(id)) continue;
          fault.leases.delete(id);
          fault.backMs.push(Math.max(0, now - fault.at - downDuring(fault.at, now)));
        }
      }
    });
  }, 100);
  const held = async () =>
    new Map((await jobs()).filter((j) => j.status === 'running').map((j) => [j, j.lease_token!]));
  const queuedJob = async () => (await jobs()).find((j) => j.status === 'queued');
  const fault = (kind: FaultKind, leases = new Map<string, string>()): Fault => {
    const f = { kind, at: Date.now(), leases, backMs: [] };
    faults.push(f);
    return f;
  };
  const downFor = () => 1000 * (o.downSeconds[0] + rand() * (o.downSeconds[1] - o.downSeconds[0]));
  /** A claim (and for created-not-started a container) made as the scheduler would. */
  const claimAsScheduler = async () => {
    const job = await queuedJob();
    if (!job) return undefined;
    const [claimed] = await t.db.claimJobs({
      workerId: worker,
      jobId: job.id,
      leaseSeconds: config.HD_LEASE_SECONDS,
    });
    return claimed as LeasedJob | undefined;
  };
  const kinds: FaultKind[] =
    o.launcher === 'docker'
      ? [
          'runner killed',
          'scheduler killed',
          'claim not launched',
          'created not started',
          'database down at start',
          'database down',
          'engine unreachable',
        ]
      : [
          'runner killed',
          'scheduler killed',
          'claim not launched',
          'database down at start',
          'database down',
        ];
  try {
    for (let n = 0; n < o.faults; n++) {
      await pause(1000 + rand() * 3000);
      const kind = kinds[Math.floor(rand() * kinds.length)]!;
      if (kind === 'runner killed') {
        const running = [...(await held()).keys()].filter((j) =>
          o.launcher === 'process' ? runs(pidOf(j)) : !!j.container_id,
        );
        const victim = running[Math.floor(rand() * running.length)];
        if (!victim) continue;
        const f = fault(kind, new Map([[victim.id, victim.lease_token!]]));
        f.victimLease = victim.lease_token!;
        if (o.launcher === 'process') process.kill(pidOf(victim), 'SIGKILL');
        else
          await docker!
            .getContainer(victim.container_id!)
            .kill()
            .catch(() => faults.splice(faults.indexOf(f), 1)); // it had just ended
      } else if (kind === 'scheduler killed' || kind === 'database down at start') {
        const at = Date.now();
        await killScheduler();
        const f = fault(kind, new Map([...(await held())].map(([j, lease]) => [j.id, lease])));
        f.at = at;
        if (kind === 'database down at start')
          await outage(relay, downFor(), () => (scheduler = startScheduler()));
        else scheduler = startScheduler();
      } else if (kind === 'claim not launched' || kind === 'created not started') {
        const at = Date.now();
        await killScheduler();
        const leased = await claimAsScheduler();
        if (leased && kind === 'created not started') {
          const resources = handlerResources(leased.job_type);
          const access = new RunnerAccess(config, t.db);
          const launcher = new DockerLauncher({
            db: t.db,
            docker,
            schedulerId: worker,
            image: o.image!,
            env: access.baseEnv,
            networkMode: 'host',
            storageRoot: root,
          });
          const request = {
            job: leased,
            resources,
            env: await access.envFor(leased, resources),
            logSeqBase: 0,
          };
          const container = await docker!.createContainer(launcher.createOptions(request));
          await t.db.setContainerId(leased.id, leased.lease_token, container.id);
        }
        const f = fault(kind, leased ? new Map([[leased.id, leased.lease_token]]) : new Map());
        f.at = at;
        scheduler = startScheduler();
      } else if (kind === 'database down') {
        fault(kind);
        await outage(relay, downFor());
      } else {
        fault(kind);
        await outage(engine!, downFor());
      }
    }
    const settled = (j: Job) => j.status === 'completed' || j.status === 'failed';
    await expect
      .poll(async () => (await jobs()).filter((j) => !settled(j)).length, {
        timeout: 600_000,
        interval: 500,
      })
      .toBe(0);
  } finally {
    await relay.up();
    await engine?.up();
    if (scheduler.exitCode === null && scheduler.signalCode === null) {
      const exited = new Promise((r) => scheduler.once('exit', r));
      scheduler.kill('SIGTERM');
      await exited;
    }
    clearInterval(watch);
  }

  const rows = await jobs();
  const left = await ourContainers();
  await engine?.close();
  await relay.close();
  const { rows: imported } = await t.sql.query<{ job: string; n: number }>(
    `select import_job_id as job, count(*)::int as n from hd_assets
      where source_type = 'chaos' and import_job_id = any ($1) group by import_job_id`,
    [jobIds],
  );
  // A runner killed just after its completion committed (the job's last lease is the
  // victim's) had no time to say so: its line may be missing, never doubled.
  const victims = faults.filter((f) => f.kind === 'runner killed').map((f) => f.victimLease);
  const { rows: killedDone } = await t.sql.query<{ id: string }>(
    `select id from hd_ingestion_jobs
      where id = any ($1) and status = 'completed' and ended_lease_token = any ($2::uuid[])`,
    [jobIds, victims],
  );
  const killedAfterCompletion = new Set(killedDone.map((r) => r.id));
  const { rows: completedLines } = await t.sql.query<{ job: string; n: number }>(
    `select job_id as job, count(*)::int as n from hd_job_logs
      where message = 'job completed' and job_id = any ($1) group by job_id`,
    [jobIds],
  );
  const table = kinds.map((kind) => {
    const of = faults.filter((f) => f.kind === kind);
    const back = of.flatMap((f) => f.backMs).sort((a, b) => a - b);
    return {
      fault: kind,
      count: of.length,
      'jobs hit': back.length,
      'handled p50 ms': back[Math.floor(back.length / 2)] ?? '-',
      'handled max ms': back.at(-1) ?? '-',
    };
  });
  console.table(table);
  const lengths = outages.map((x) => ((x.to ?? x.from) - x.from) / 1000).sort((a, b) => a - b);
  console.log(
    `outages (database or engine): ${lengths.length}, ${lengths.map((l) => `${l.toFixed(0)} s`).join(', ')}; scheduler log: ${logPath}`,
  );
  const count = (status: string) => rows.filter((j) => j.status === status).length;
  const lines = Object.fromEntries(completedLines.map((r) => [r.job, r.n]));
  console.log(
    `chaos ${o.launcher} seed ${o.seed}: ${o.jobs} jobs, ${faults.length} faults; completed ${count('completed')}, failed ${count('failed')}; runners seen ${o.launcher === 'process' ? runnerPids.size : '-'}; attempts beyond one per job: ${rows.reduce((n, j) => n + j.attempts - 1, 0)}; "job completed" lines: ${completedLines.length} of ${o.jobs} jobs (${killedAfterCompletion.size} runner(s) killed after completing); containers left: ${left.length}`,
  );

  expect(rows.map((j) => j.status)).toEqual(jobIds.map(() => 'completed'));
  // The rows of a job are all there, each once (a newer attempt's upsert leaves them alone).
  expect(Object.fromEntries(imported.map((r) => [r.job, r.n]))).toEqual(
    Object.fromEntries(jobIds.map((id) => [id, o.rows])),
  );
  // Completed once, and no line lost: exactly one "job completed" line per job, also where
  // the completing runner ran unwatched (its scheduler killed) or cut off from the database.
  expect(
    Object.fromEntries(
      jobIds.map((id) => [
        id,
        killedAfterCompletion.has(id) ? Math.max(lines[id] ?? 0, 1) : lines[id],
      ]),
    ),
  ).toEqual(Object.fromEntries(jobIds.map((id) => [id, 1])));
  // No attempt was spent for the platform's fault: no expired lease, no failed launch.
  const { rows: spent } = await t.sql.query(
    `select distinct error_code from hd_ingestion_jobs
      where id = any ($1) and error_code in ('LEASE_EXPIRED', 'LAUNCH_FAILED')`,
    [jobIds],
  );
  expect(spent).toEqual([]);
  // Nothing left running: no runner process, no container (`docker ps -a`).
  expect([...runnerPids].filter(runs)).toEqual([]);
  expect(left.map((c) => `${c.Names[0]} ${c.State}`)).toEqual([]);
  for (const f of faults) expect(f.leases.size, `${f.kind}: never handled`).toBe(0);
  const slowest = Math.max(0, ...faults.flatMap((f) => f.backMs));
  expect(slowest).toBeLessThanOrEqual(BACK_WITHIN_MS);
}
