import { randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import {
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  writeFile,
  type FileHandle,
} from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { z } from 'zod';
import { jsonOrUndefined } from '../../contract/json.ts';
import type { ClaimedJob } from '../../contract/jobs.ts';
import { sleep } from '../retry.ts';
import { LogLineSplitter } from './docker-logs.ts';

// How often a followed file is read for new lines while its runner runs.
const POLL_MS = 100;

/** What a restarted scheduler needs to store a runner's output: `{base}.json`. */
const OutputMeta = z.object({
  job_id: z.string().uuid(),
  attempt: z.number().int(),
  lease_token: z.string().uuid(),
  seq_base: z.number().int().min(0),
  /** `process:PID:START` once the runner was spawned. */
  runner: z.string().optional(),
});
export type OutputMeta = z.infer<typeof OutputMeta>;

export interface OutputFile {
  /** Path without extension: `{base}.log` holds the output, `{base}.json` the meta. */
  base: string;
  meta: OutputMeta;
}

/**
 * The output files of one scheduler's process runners, in a folder of its own (0700: a
 * file holds its job's lease token). A runner writes its stdout and stderr straight into
 * its file, so its output outlives the scheduler: a restarted scheduler stores what it
 * finds there (process-reconcile.ts); the file goes once its lines are stored.
 */
export class OutputFiles {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  /** A new output file for a job's runner: its meta written, the log open for appending. */
  async create(job: ClaimedJob, seqBase: number): Promise<OutputFile & { log: FileHandle }> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const base = join(this.dir, `${job.id}-${randomUUID().slice(0, 8)}`);
    const meta: OutputMeta = {
      job_id: job.id,
      attempt: job.attempts,
      lease_token: job.lease_token,
      seq_base: seqBase,
    };
    await writeMeta(base, meta);
    // Handed to the runner as its stdout and stderr (both append to it): its own file
    // descriptor, not a pipe through this process, so it outlives this process.
    const log = await open(`${base}.log`, 'a', 0o600);
    return { base, meta, log };
  }

  /**
   * An output file for a warm runner, before its job: the log only. A file without meta
   * is not listed; it gets its meta (assign) once the runner is handed a job.
   */
  async createUnassigned(): Promise<OutputFile & { log: FileHandle }> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const base = join(this.dir, `warm-${randomUUID()}`);
    const log = await open(`${base}.log`, 'a', 0o600);
    return { base, meta: { job_id: '', attempt: 0, lease_token: '', seq_base: 0 }, log };
  }

  /** Writes the meta of a warm runner's file once it is handed `job`. */
  async assign(file: OutputFile, job: ClaimedJob, seqBase: number): Promise<void> {
    file.meta = {
      job_id: job.id,
      attempt: job.attempts,
      lease_token: job.lease_token,
      seq_base: seqBase,
    };
    await writeMeta(file.base, file.meta);
  }

  /** Records the runner's process, so that a restarted scheduler can wait for its end. */
  async setRunner(file: OutputFile, runner: string): Promise<void> {
    file.meta = { ...file.meta, runner };
    await writeMeta(file.base, file.meta);
  }

  async remove(file: Pick<OutputFile, 'base'>): Promise<void> {
    await rm(`${file.base}.log`, { force: true });
    await rm(`${file.base}.json`, { force: true });
  }

  /**
   * Removes the files of warm runners that never got a job and that no runner of this
   * launcher writes (`watching`): left by a killed scheduler (its warm runners exited).
   */
  async removeUnassigned(watching: ReadonlySet<string>): Promise<void> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    for (const name of names.filter((n) => n.startsWith('warm-') && n.endsWith('.log'))) {
      const base = join(this.dir, name.slice(0, -'.log'.length));
      if (!watching.has(base) && !names.includes(`${name.slice(0, -'.log'.length)}.json`))
        await rm(`${base}.log`, { force: true });
    }
  }

  /** Every output file in the folder (a file whose meta cannot be read is skipped). */
  async list(): Promise<OutputFile[]> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const files: OutputFile[] = [];
    for (const name of names.filter((n) => n.endsWith('.json'))) {
      const base = join(this.dir, name.slice(0, -'.json'.length));
      const text = await readFile(`${base}.json`, 'utf8').catch(() => '');
      const meta = OutputMeta.safeParse(jsonOrUndefined(text));
      if (meta.success) files.push({ base, meta: meta.data });
    }
    return files;
  }
}

/** Every line of an output file, split as followOutput splits them. */
export async function readOutputLines(file: Pick<OutputFile, 'base'>): Promise<string[]> {
  const lines: string[] = [];
  await pipeline(
    createReadStream(`${file.base}.log`),
    new LogLineSplitter((line) => lines.push(line)),
  ).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'ENOENT') throw error;
  });
  return lines;
}

/**
 * Follows a file a runner writes: each line to `onLine` as it arrives, until `ended`
 * resolves (the runner exited); then the rest to the end of the file.
 */
export async function followOutput(
  path: string,
  ended: Promise<unknown>,
  onLine: (line: string) => void,
): Promise<void> {
  const handle = await open(path, 'r');
  const splitter = new LogLineSplitter(onLine);
  const buffer = Buffer.alloc(64 * 1024);
  let position = 0;
  let over = false;
  void ended.finally(() => (over = true));
  try {
    for (;;) {
      const last = over; // read once more after the end: everything written before it
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, position);
      if (bytesRead > 0) {
        position += bytesRead;
        await new Promise<void>((resolve, reject) =>
          splitter.write(Buffer.from(buffer.subarray(0, bytesRead)), (e) =>
            e ? reject(e) : resolve(),
          ),
        );
        continue;
      }
      if (last) break;
      await Promise.race([sleep(POLL_MS), ended]);
    }
  } finally {
    await new Promise<void>((resolve) => splitter.end(resolve));
    await handle.close();
  }
}

async function writeMeta(base: string, meta: OutputMeta): Promise<void> {
  // Written whole or not at all: a scheduler killed meanwhile leaves the previous meta.
  const temp = `${base}.json.${process.pid}.tmp`;
  await writeFile(temp, JSON.stringify(meta), { mode: 0o600 });
  await rename(temp, `${base}.json`);
}
