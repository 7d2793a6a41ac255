/**
 * A warm runner's database session, warmed or not before its job (issue 13, migration
 * 00036): the server's CPU and the wall time of an extract_text job's calls (lease
 * adoption; progress, file list, progress; the chunk write of N text pages; completion)
 * on a session opened with a warm role before the job, as `hd-runner scheduler` makes
 * them, by mode, alternating, a new session and job each time:
 *   cold       connected only (as before 00036)
 *   functions  hd_warm_up_session(null): the job's functions called with no job, refused
 *   sample:R   the same with a made-up sample of R chunk rows (connectAhead sends
 *              WARM_UP_SAMPLE_ROWS)
 * Backend CPU from /proc/<pid>/schedstat (the server runs on this machine), medians.
 *
 *   node bench/warm-session.ts   # HD_BENCH_PAGES=200,1000 HD_BENCH_ROUNDS=7
 *                                # HD_BENCH_MODES=cold,functions,sample:400,sample:800
 */
import { loadConfig } from '../control-plane/config.ts';
import { PostgresDb, WARM_UP_SAMPLE_ROWS, warmUpSample } from '../control-plane/db/postgres.ts';
import { RunnerAccess } from '../scheduler/runner-access.ts';
import * as b from './lib.ts';

const ACCOUNT = 'cccccccc-0000-4000-8000-00000000c4c4';
const PAGES = (process.env.HD_BENCH_PAGES ?? '200,1000').split(',').map(Number);
const ROUNDS = b.envInt('HD_BENCH_ROUNDS', 7);
const MODES = (
  process.env.HD_BENCH_MODES ?? `cold,functions,sample:${WARM_UP_SAMPLE_ROWS},sample:800`
).split(',');
const RESOURCES = { gpu: false, memoryMb: 2048, cpus: 2, timeoutMs: 600_000 };

const database = await b.startBenchDatabase();
const config = loadConfig({ HD_DATABASE_URL: database.url, HD_WORKER_ID: 'bench-warm-session' });
const db = new PostgresDb({ connectionString: database.url, listenConnectionString: null });
const access = new RunnerAccess(config, db);
try {
  console.log(`# warm session — ${new Date().toISOString()} — ${b.machineLine()}`);
  console.log(`rounds: ${ROUNDS}, modes alternating; medians of backend CPU and wall\n`);
  console.log(
    '| pages | mode | warm-up CPU | adopt CPU / wall | write CPU / wall | job calls CPU / wall |',
  );
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const pageCount of PAGES) {
    const pages = Array.from({ length: pageCount }, (_, i) => b.pageText(i));
    const figures = new Map<string, Record<string, number[]>>();
    for (let round = 0; round < ROUNDS; round += 1) {
      const order = round % 2 === 0 ? MODES : [...MODES].reverse();
      for (const mode of order) {
        const run = await oneJob(mode, pages);
        const seen = figures.get(mode) ?? {};
        for (const [key, value] of Object.entries(run)) (seen[key] ??= []).push(value);
        figures.set(mode, seen);
      }
    }
    for (const mode of MODES) {
      const f = figures.get(mode)!;
      const m = (key: string) => b.fmt(b.median(f[key]!), 1);
      console.log(
        `| ${pageCount} | ${mode} | ${m('warmUpCpu')} ms | ${m('adoptCpu')} / ${m('adoptWall')} ms` +
          ` | ${m('writeCpu')} / ${m('writeWall')} ms | ${m('jobCpu')} / ${m('jobWall')} ms |`,
      );
    }
  }
} finally {
  await db.close();
  await database.stop();
}

/** One warm runner's session, warmed as `mode` says, then one job's calls on it. */
async function oneJob(mode: string, pages: readonly string[]) {
  const login = (await access.warmLogin(600_000))!;
  const session = new PostgresDb({
    connectionString: login.env.HD_DATABASE_URL!,
    poolSize: 1,
    listenConnectionString: null,
    idleTimeoutMs: 0,
  });
  try {
    const client = await session.pool.connect();
    let pid: number;
    let warmUpCpu = 0;
    try {
      pid = (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
      const before = b.backendCpuMs(pid);
      if (mode !== 'cold') {
        const rows = mode.startsWith('sample:') ? Number(mode.slice('sample:'.length)) : 0;
        await client.query('select public.hd_warm_up_session($1::jsonb)', [
          rows > 0 ? warmUpSample(rows) : null,
        ]);
      }
      warmUpCpu = b.backendCpuMs(pid) - before;
    } finally {
      client.release();
    }

    const { job, jobId, lease, fileId } = await b.leasedDocument(db, ACCOUNT, 'bench-warm-session');
    await access.envFor(job, RESOURCES, login);
    const chunks = b.chunkRows(pages, fileId);

    const mark = () => ({ cpu: b.backendCpuMs(pid), wall: performance.now() });
    const t0 = mark();
    await session.adoptLease(jobId, lease, 300);
    const t1 = mark();
    await session.reportProgress(jobId, lease, 0, 'initializing');
    await session.listDocumentFiles(jobId, lease);
    await session.reportProgress(jobId, lease, 10, 'processing');
    const t2 = mark();
    const counts = await session.replaceDocumentChunks(jobId, lease, chunks);
    const t3 = mark();
    await session.completeJob(jobId, lease, { chunks: chunks.length });
    const t4 = mark();
    if (counts.inserted !== chunks.length) throw new Error(`wrote ${JSON.stringify(counts)}`);
    return {
      warmUpCpu,
      adoptCpu: t1.cpu - t0.cpu,
      adoptWall: t1.wall - t0.wall,
      writeCpu: t3.cpu - t2.cpu,
      writeWall: t3.wall - t2.wall,
      jobCpu: t4.cpu - t0.cpu,
      jobWall: t4.wall - t0.wall,
    };
  } finally {
    await session.close();
    await access.release();
  }
}
