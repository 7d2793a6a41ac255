import { randomBytes } from 'node:crypto';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type Docker from 'dockerode';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ClaimedJob } from '../contract/jobs.ts';
import { createLogger } from '../control-plane/logger.ts';
import {
  GpuDiscoveryError,
  GpuSlots,
  listGpus,
  parseNvidiaSmiList,
  planClaims,
  resolveGpuIds,
} from '../scheduler/gpu.ts';
import { DockerLauncher, LABELS } from '../scheduler/launchers/docker.ts';
import { ProcessLauncher } from '../scheduler/launchers/process.ts';
import { Scheduler } from '../scheduler/scheduler.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { heldLauncher } from './helpers/held-launcher.ts';
import { containersOf, requireDocker, skipNote, testImage } from './helpers/docker.ts';
import { ACCOUNT_A, tempDir, testConfig } from './helpers/runtime.ts';

const NVIDIA_SMI_L = `GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-11111111-2222-3333-4444-555555555555)
GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-66666666-7777-8888-9999-000000000000)
  MIG 3g.40gb     Device  0: (UUID: MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)
GPU 2: NVIDIA A100-SXM4-80GB (UUID: GPU-abcdefab-cdef-abcd-efab-cdefabcdefab)
`;

/** A folder with a fake `nvidia-smi` that prints `output` and exits with `code`. */
async function fakeNvidiaSmi(output: string, code = 0): Promise<Record<string, string>> {
  const dir = join(await tempDir('hd-fake-smi-'), 'bin');
  await mkdir(dir);
  const script = join(dir, 'nvidia-smi');
  await writeFile(script, `#!/bin/sh\ncat <<'EOF'\n${output}EOF\nexit ${code}\n`);
  await chmod(script, 0o755);
  return { PATH: `${dir}:/usr/bin:/bin` };
}
const noNvidiaSmi = async () => ({ PATH: await tempDir('hd-empty-path-') });

describe('GPU discovery', () => {
  it('parses `nvidia-smi -L`, whole GPUs only', () => {
    expect(parseNvidiaSmiList(NVIDIA_SMI_L)).toEqual([
      {
        index: '0',
        name: 'NVIDIA A100-SXM4-80GB',
        uuid: 'GPU-11111111-2222-3333-4444-555555555555',
      },
      {
        index: '1',
        name: 'NVIDIA A100-SXM4-80GB',
        uuid: 'GPU-66666666-7777-8888-9999-000000000000',
      },
      {
        index: '2',
        name: 'NVIDIA A100-SXM4-80GB',
        uuid: 'GPU-abcdefab-cdef-abcd-efab-cdefabcdefab',
      },
    ]);
  });

  it('resolves HD_GPUS from a fake nvidia-smi on PATH', async () => {
    const env = await fakeNvidiaSmi(NVIDIA_SMI_L);
    expect(await resolveGpuIds(undefined, env)).toEqual({
      ids: ['0', '1', '2'],
      source: 'nvidia-smi -L',
    });
    expect((await resolveGpuIds('all', env)).ids).toEqual(['0', '1', '2']);
    expect((await resolveGpuIds('2', env)).ids).toEqual(['0', '1']);
    expect((await resolveGpuIds(' 3, 1,3 ', env)).ids).toEqual(['3', '1']);
    expect((await resolveGpuIds('GPU-66666666-7777-8888-9999-000000000000', env)).ids).toEqual([
      'GPU-66666666-7777-8888-9999-000000000000',
    ]);
    expect((await resolveGpuIds('none', env)).ids).toEqual([]);
    expect((await resolveGpuIds('0', env)).ids).toEqual([]);
    await expect(resolveGpuIds('0,gpu zero', env)).rejects.toThrow(/not a GPU index or UUID/);
  });

  it('has no GPUs without nvidia-smi, unless HD_GPUS=all demands them', async () => {
    const env = await noNvidiaSmi();
    expect(await listGpus(env)).toBeUndefined();
    expect(await resolveGpuIds(undefined, env)).toEqual({
      ids: [],
      source: 'no nvidia-smi on this host',
    });
    await expect(resolveGpuIds('all', env)).rejects.toThrow(/nvidia-smi is not installed/);
  });

  it('reports an nvidia-smi that fails (driver not loaded)', async () => {
    const env = await fakeNvidiaSmi(
      "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
      9,
    );
    const error = await resolveGpuIds(undefined, env).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GpuDiscoveryError);
    expect((error as Error).message).toMatch(/couldn't communicate with the NVIDIA driver/);
  });
});

describe('GPU slots', () => {
  it('spreads jobs over GPUs before sharing one, up to the per-GPU limit', () => {
    const slots = new GpuSlots(['0', '1'], 2);
    expect(slots.total).toBe(4);
    expect([slots.allocate(), slots.allocate(), slots.allocate()]).toEqual(['0', '1', '0']);
    expect(slots.free).toBe(1);
    expect(slots.allocate()).toBe('1');
    expect(slots.allocate()).toBeUndefined();
    slots.release('1');
    expect(slots.allocate()).toBe('1');
    expect(slots.usage()).toEqual({ '0': 2, '1': 2 });
  });

  it('counts a re-adopted container on its GPU, even past the limit', () => {
    const slots = new GpuSlots(['0'], 1);
    slots.claim('0');
    slots.claim('0');
    slots.claim('7'); // a GPU no longer configured
    expect(slots.free).toBe(0);
    slots.release('0');
    expect(slots.allocate()).toBeUndefined();
    slots.release('0');
    slots.release('7');
    expect(slots.usage()).toEqual({ '0': 0 });
    expect(slots.allocate()).toBe('0');
  });

  it('never claims more GPU jobs than free GPU slots', () => {
    const isGpuType = (t: string) => t.startsWith('gpu_');
    const known = ['cpu_a', 'gpu_b'];
    expect(planClaims({ free: 4, gpuFree: 0, allowed: undefined, known, isGpuType })).toEqual([
      { jobTypes: ['cpu_a'], limit: 4 },
    ]);
    expect(planClaims({ free: 4, gpuFree: 1, allowed: undefined, known, isGpuType })).toEqual([
      { jobTypes: ['gpu_b'], limit: 1 },
      { jobTypes: ['cpu_a'], limit: 4 },
    ]);
    expect(planClaims({ free: 2, gpuFree: 2, allowed: undefined, known, isGpuType })).toEqual([
      { jobTypes: undefined, limit: 2 },
    ]);
    expect(planClaims({ free: 3, gpuFree: 0, allowed: ['gpu_b'], known, isGpuType })).toEqual([]);
    expect(planClaims({ free: 0, gpuFree: 2, allowed: undefined, known, isGpuType })).toEqual([]);
    expect(
      planClaims({ free: 2, gpuFree: 0, allowed: undefined, known: ['cpu_a'], isGpuType }),
    ).toEqual([{ jobTypes: undefined, limit: 2 }]);
  });
});

describe('scheduler with GPU slots', () => {
  let t: TestDatabase;
  const schedulers: Scheduler[] = [];
  beforeAll(async () => {
    t = await createTestDatabase();
  });
  afterEach(() => Promise.all(schedulers.splice(0).map((s) => s.stop(0))));
  afterAll(() => t.drop());

  it('pins each GPU job to a free GPU, CPU jobs to none, and frees the GPU at the end', async () => {
    const { launcher, launched } = heldLauncher(t.db);
    const config = testConfig(t.url, await tempDir(), {
      HD_SLOTS: '4',
      HD_POLL_INTERVAL_MS: '100',
      HD_JOB_TYPES: 'gpu_probe,cpu_probe',
    });
    const resources = { memoryMb: 256, cpus: 1, timeoutMs: 60_000 };
    const scheduler = new Scheduler({
      db: t.db,
      launcher,
      config,
      log: createLogger({ level: 'silent' }),
      gpus: new GpuSlots(['0', '1'], 1),
      resourcesFor: (type) => ({ ...resources, gpu: type === 'gpu_probe' }),
    });
    schedulers.push(scheduler);
    for (const jobType of ['gpu_probe', 'gpu_probe', 'gpu_probe', 'cpu_probe', 'cpu_probe'])
      await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType, debug: {} });
    await scheduler.start();
    await expect.poll(() => launched.length).toBe(4);
    const view = () => launched.map((l) => `${l.job.job_type}:${l.gpuIds.join(',')}`).sort();
    expect(view()).toEqual(['cpu_probe:', 'cpu_probe:', 'gpu_probe:0', 'gpu_probe:1']);
    // The third GPU job waits for a GPU, not for a slot: finishing a CPU job frees a slot only.
    // A CPU job queued after it takes the freed slot: proof that a claim pass ran since.
    launched.find((l) => l.job.job_type === 'cpu_probe')!.finish();
    await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'cpu_probe', debug: {} });
    await expect.poll(() => launched.length).toBe(5);
    expect(launched[4]).toMatchObject({ gpuIds: [], job: { job_type: 'cpu_probe' } });
    launched.find((l) => l.gpuIds[0] === '1')!.finish();
    await expect.poll(() => launched.length).toBe(6);
    expect(launched[5]).toMatchObject({ gpuIds: ['1'], job: { job_type: 'gpu_probe' } });
    for (const l of launched) l.finish();
  });
});

describe('process launcher GPUs', () => {
  it('shows a GPU job only its pinned GPUs (CUDA_VISIBLE_DEVICES), a CPU job none', async () => {
    const launcher = new ProcessLauncher({
      env: { CUDA_VISIBLE_DEVICES: '0,1,2,3' }, // what the host had: never passed on as is
      command: [process.execPath, '-e', 'console.log(`[${process.env.CUDA_VISIBLE_DEVICES}]`)'],
    });
    const job = { id: 'gpu-env-probe', lease_token: 'token' } as ClaimedJob;
    const resources = { gpu: true, memoryMb: 256, cpus: 1, timeoutMs: 60_000 };
    const seen = async (gpuIds?: string[]) => {
      const lines: string[] = [];
      const runner = await launcher.launch({
        job,
        resources,
        gpuIds,
        onOutput: (line) => lines.push(line),
      });
      const exit = await runner.wait();
      expect(exit.outputTail).toEqual(lines);
      return lines;
    };
    expect(await seen(['1', '3'])).toEqual(['[1,3]']);
    expect(await seen([])).toEqual(['[]']);
    expect(await seen()).toEqual(['[]']);
  });
});

const d = await requireDocker();
const hostGpus = (await listGpus().catch(() => undefined)) ?? [];

describe.skipIf(!d.available)(`GPU containers${skipNote(d)}`, () => {
  const schedulerId = `hd-test-gpu-${randomBytes(4).toString('hex')}`;
  let t: TestDatabase;
  let image: string;
  beforeAll(async () => {
    [t, image] = await Promise.all([createTestDatabase(), testImage(d.docker!)]);
  }, 900_000);
  afterAll(() => t?.drop());

  it('requests the pinned GPU; removes the container when the engine has no NVIDIA runtime', async () => {
    const docker = d.docker!;
    const created: Docker.ContainerCreateOptions[] = [];
    // The real engine, with create calls recorded.
    const recording = Object.create(docker) as Docker;
    recording.createContainer = (options: Docker.ContainerCreateOptions) => {
      created.push(options);
      return docker.createContainer(options);
    };
    const launcher = new DockerLauncher({
      db: t.db,
      docker: recording,
      schedulerId,
      image: 'unused-cpu-image',
      gpuImage: image,
      env: {},
    });
    const queued = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'gpu_probe', debug: {} });
    const [job] = await t.db.claimJobs({
      workerId: schedulerId,
      jobId: queued.id,
      leaseSeconds: 60,
    });
    const resources = { gpu: true, memoryMb: 1024, cpus: 2, timeoutMs: 60_000 };
    // A host with GPUs pins its last one (the container starts, and its runner exits at
    // once: it has no configuration); elsewhere GPU 1, which the engine cannot provide.
    const pin = hostGpus.at(-1)?.index ?? '1';
    const launch = launcher.launch({ job: job as ClaimedJob, resources, gpuIds: [pin] });
    if (hostGpus.length) await (await launch).wait();
    else
      await expect(launch).rejects.toThrow(
        /no NVIDIA container runtime.*could not select device driver "nvidia"/s,
      );
    expect(created).toHaveLength(1);
    expect(created[0]!.Env).toContain(`NVIDIA_VISIBLE_DEVICES=${pin}`);
    expect(created[0]).toMatchObject({
      Image: image,
      Labels: { [LABELS.gpus]: pin, [LABELS.jobId]: job!.id },
      HostConfig: {
        DeviceRequests: [{ Driver: 'nvidia', DeviceIDs: [pin], Capabilities: [['gpu']] }],
        Memory: 1024 * 1024 * 1024,
        NanoCpus: 2e9,
      },
    });
    expect(await containersOf(docker, [schedulerId])).toEqual([]);
  });
});
