import { execa } from 'execa';

/** One NVIDIA GPU as `nvidia-smi -L` lists it. */
export interface GpuDevice {
  /** Index as the driver numbers it (what `--gpus device=N` takes). */
  index: string;
  uuid: string | undefined;
  name: string;
}

// "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-5f3c…)". MIG instances are listed indented
// under their GPU ("  MIG 1g.10gb Device 0: (UUID: MIG-…)"); whole GPUs are pinned here.
const GPU_LINE = /^GPU (\d+): (.*?)(?: \(UUID: ([^)]+)\))?\s*$/;

export function parseNvidiaSmiList(output: string): GpuDevice[] {
  const gpus: GpuDevice[] = [];
  for (const line of output.split('\n')) {
    const match = GPU_LINE.exec(line.trimEnd());
    if (match) gpus.push({ index: match[1]!, name: match[2]!, uuid: match[3] });
  }
  return gpus;
}

export class GpuDiscoveryError extends Error {
  override readonly name = 'GpuDiscoveryError';
}

/**
 * Runs `nvidia-smi -L` (found on PATH of `env`). Resolves to undefined when nvidia-smi
 * is not installed; throws when it is installed but fails (driver not loaded, …).
 */
export async function listGpus(
  env: Record<string, string | undefined> = process.env,
): Promise<GpuDevice[] | undefined> {
  const result = await execa('nvidia-smi', ['-L'], {
    env,
    extendEnv: false,
    reject: false,
    timeout: 15_000,
    stdin: 'ignore',
  });
  if ((result as { code?: string }).code === 'ENOENT') return undefined;
  if (result.exitCode !== 0 || result.failed) {
    const why = String(result.stderr || result.stdout || result.shortMessage).trim();
    throw new GpuDiscoveryError(`nvidia-smi -L failed: ${why.split('\n')[0]}`);
  }
  return parseNvidiaSmiList(String(result.stdout));
}

/**
 * The GPU ids this scheduler may pin jobs to, from HD_GPUS:
 * unset → what `nvidia-smi -L` lists (none without nvidia-smi); `none` or `0` → none;
 * `all` → every GPU nvidia-smi lists (an error without it); `N` → ids 0…N-1;
 * `0,2` or `GPU-uuid,…` → exactly those.
 */
export async function resolveGpuIds(
  spec: string | undefined,
  env: Record<string, string | undefined> = process.env,
): Promise<{ ids: string[]; source: string }> {
  const value = spec?.trim() ?? '';
  if (value === 'none' || value === '0') return { ids: [], source: 'HD_GPUS=none' };
  if (/^\d+$/.test(value)) {
    const ids = Array.from({ length: Number(value) }, (_, i) => String(i));
    return { ids, source: `HD_GPUS=${value}` };
  }
  if (value === '' || value === 'all') {
    const gpus = await listGpus(env);
    if (gpus === undefined) {
      if (value === 'all')
        throw new GpuDiscoveryError('HD_GPUS=all but nvidia-smi is not installed on this host');
      return { ids: [], source: 'no nvidia-smi on this host' };
    }
    return { ids: gpus.map((g) => g.index), source: 'nvidia-smi -L' };
  }
  const ids = [
    ...new Set(
      value
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
    ),
  ];
  for (const id of ids) {
    if (!/^(\d+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+)$/.test(id))
      throw new GpuDiscoveryError(
        `HD_GPUS: ${JSON.stringify(id)} is not a GPU index or UUID (expected all, a count, or a list like 0,1)`,
      );
  }
  return { ids, source: 'HD_GPUS list' };
}

/**
 * GPU slots: each GPU id takes up to `perGpu` jobs at once. A job gets the least
 * loaded GPU (first listed on a tie), so jobs spread before they share.
 */
export class GpuSlots {
  readonly ids: readonly string[];
  readonly perGpu: number;
  readonly #inUse = new Map<string, number>();

  constructor(ids: readonly string[], perGpu = 1) {
    if (!Number.isInteger(perGpu) || perGpu < 1) throw new RangeError('perGpu must be ≥ 1');
    this.ids = [...ids];
    this.perGpu = perGpu;
    for (const id of this.ids) this.#inUse.set(id, 0);
  }

  get total(): number {
    return this.ids.length * this.perGpu;
  }

  get free(): number {
    let free = 0;
    for (const used of this.#inUse.values()) free += Math.max(0, this.perGpu - used);
    return free;
  }

  /** Takes a slot on the least loaded GPU; undefined when every GPU is full. */
  allocate(): string | undefined {
    let best: string | undefined;
    let bestUsed = this.perGpu;
    for (const id of this.ids) {
      const used = this.#inUse.get(id)!;
      if (used < bestUsed) {
        best = id;
        bestUsed = used;
      }
    }
    if (best !== undefined) this.#inUse.set(best, bestUsed + 1);
    return best;
  }

  /**
   * Counts a slot on a given GPU, even past its limit: a re-adopted container keeps the
   * GPU it was started on.
   */
  claim(id: string): void {
    this.#inUse.set(id, (this.#inUse.get(id) ?? 0) + 1);
  }

  release(id: string): void {
    const used = this.#inUse.get(id);
    if (used === undefined || used === 0) return;
    if (used === 1 && !this.ids.includes(id)) this.#inUse.delete(id);
    else this.#inUse.set(id, used - 1);
  }

  /** Jobs per GPU id, for logs and tests. */
  usage(): Record<string, number> {
    return Object.fromEntries(this.#inUse);
  }
}

/** One claim call: these job types (undefined: any), at most `limit` jobs (and never more than the slots still free). */
export interface ClaimPlan {
  jobTypes: readonly string[] | undefined;
  limit: number;
}

/**
 * Splits `free` slots into claims so that no more GPU jobs are claimed than there are
 * free GPU slots. `allowed` is HD_JOB_TYPES (undefined: every type); `known` the job
 * types with a handler. While GPUs are full only known CPU types are claimed, so a job
 * of an unknown type waits until a GPU slot frees up (it fails at once when claimed).
 */
export function planClaims(options: {
  free: number;
  gpuFree: number;
  allowed: readonly string[] | undefined;
  known: readonly string[];
  isGpuType: (jobType: string) => boolean;
}): ClaimPlan[] {
  const { free, allowed } = options;
  if (free <= 0) return [];
  const universe = allowed ?? options.known;
  const gpuTypes = universe.filter(options.isGpuType);
  const gpuFree = Math.max(0, options.gpuFree);
  if (gpuTypes.length === 0 || gpuFree >= free) return [{ jobTypes: allowed, limit: free }];
  const cpuTypes = universe.filter((t) => !options.isGpuType(t));
  const plans: ClaimPlan[] = [];
  if (gpuFree > 0) plans.push({ jobTypes: gpuTypes, limit: gpuFree });
  // Capped by the caller at the slots the GPU claim left free.
  if (cpuTypes.length > 0) plans.push({ jobTypes: cpuTypes, limit: free });
  return plans;
}
