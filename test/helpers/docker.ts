import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { Writable } from 'node:stream';
import Docker from 'dockerode';
import { execa } from 'execa';
import { PACKAGE_ROOT } from '../../control-plane/package-root.ts';
import { LABELS } from '../../scheduler/launchers/docker.ts';
import {
  networkGatewayAddress,
  type NetworkAddressInfo,
} from '../../scheduler/launchers/docker-engine.ts';

export type DockerForTests =
  | { available: true; docker: Docker; reason: undefined }
  | { available: false; docker: undefined; reason: string };

/**
 * The Docker engine for tests that need one. Without an engine the caller skips with
 * the returned reason (put it in the describe name so it shows); with HD_REQUIRE_DOCKER=1
 * (CI) a missing engine fails instead.
 */
export async function requireDocker(): Promise<DockerForTests> {
  const docker = new Docker();
  try {
    await Promise.race([
      docker.ping(),
      new Promise((_, reject) => setTimeout(() => reject(new Error('no answer in 5 s')), 5000)),
    ]);
    return { available: true, docker, reason: undefined };
  } catch (error) {
    const where = process.env.DOCKER_HOST ?? 'unix:///var/run/docker.sock';
    const reason = `no Docker engine at ${where} (${(error as Error).message})`;
    if (process.env.HD_REQUIRE_DOCKER === '1')
      throw new Error(`HD_REQUIRE_DOCKER=1 but there is ${reason}`, { cause: error });
    console.warn(`SKIPPING Docker tests: ${reason}; set HD_REQUIRE_DOCKER=1 to fail instead`);
    return { available: false, docker: undefined, reason };
  }
}

/** `skipped (reason)` for a describe name, or '' when Docker is there. */
export function skipNote(d: DockerForTests): string {
  return d.available ? '' : ` [skipped: ${d.reason}]`;
}

// What the image is built from (the .dockerignore allow-list, plus the build files).
const CONTEXT = ['contract', 'control-plane', 'runner', 'scheduler', 'cli', 'supabase', 'examples'];
const BUILD_FILES = [
  'Dockerfile',
  '.dockerignore',
  'package.json',
  'package-lock.json',
  'tsconfig.json',
  'tsconfig.build.json',
  'scripts/bundle-runner.ts',
];
const TEST_REPOSITORY = 'hd-runner-test';
const LOCAL_BASE = 'hd-base/node:24-bookworm-slim';

/**
 * The runner image built from this checkout, tagged by a hash of its build context:
 * built once, then reused by every test file and run until a source file changes.
 * Base image: HD_TEST_BASE_IMAGE, else the local hd-base image when present (no
 * registry here), else the Dockerfile's default.
 */
export async function testImage(docker: Docker): Promise<string> {
  const base =
    process.env.HD_TEST_BASE_IMAGE ?? ((await imageExists(docker, LOCAL_BASE)) ? LOCAL_BASE : '');
  const tag = `${TEST_REPOSITORY}:${await contextHash(base)}`;
  if (await imageExists(docker, tag)) return tag;
  const lock = join(tmpdir(), `${tag.replace(/[:/]/g, '_')}.lock`);
  const release = await acquireLock(lock, () => imageExists(docker, tag));
  if (!release) return tag; // another test file built it meanwhile
  try {
    if (await imageExists(docker, tag)) return tag;
    const cli = existsSync('/usr/bin/docker') ? '/usr/bin/docker' : 'docker';
    const args = ['build', '-q', '-t', tag, ...(base ? ['--build-arg', `BASE_IMAGE=${base}`] : [])];
    await execa(cli, [...args, PACKAGE_ROOT], {
      env: { DOCKER_BUILDKIT: '0' }, // the classic builder: a newer client fails with BuildKit here
      timeout: 15 * 60_000,
    });
    await removeOtherTestImages(docker, tag);
    return tag;
  } finally {
    await release();
  }
}

async function imageExists(docker: Docker, name: string): Promise<boolean> {
  return docker
    .getImage(name)
    .inspect()
    .then(
      () => true,
      () => false,
    );
}

async function contextHash(base: string): Promise<string> {
  const hash = createHash('sha256').update(`base=${base}\n`);
  const files = [...BUILD_FILES];
  for (const dir of CONTEXT) files.push(...(await listFiles(join(PACKAGE_ROOT, dir))));
  for (const file of files.sort()) {
    const path = file.startsWith('/') ? file : join(PACKAGE_ROOT, file);
    hash.update(`${relative(PACKAGE_ROOT, path)}\n`).update(await readFile(path));
  }
  return hash.digest('hex').slice(0, 16);
}

async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
}

/** An exclusive lock file; resolves to undefined when `done()` became true while waiting. */
async function acquireLock(path: string, done: () => Promise<boolean>) {
  const deadline = Date.now() + 20 * 60_000;
  for (;;) {
    try {
      const handle = await open(path, 'wx');
      await handle.close();
      return () => rm(path, { force: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    if (await done()) return undefined;
    const age = Date.now() - ((await stat(path).catch(() => undefined))?.mtimeMs ?? Date.now());
    if (age > 20 * 60_000) await rm(path, { force: true }); // left by a killed run
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for the image build lock ${path}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function removeOtherTestImages(docker: Docker, keep: string) {
  const images = await docker.listImages({ filters: { reference: [TEST_REPOSITORY] } });
  for (const image of images) {
    if (image.RepoTags?.includes(keep)) continue;
    await docker
      .getImage(image.Id)
      .remove({ force: false })
      .catch(() => {}); // still used by a container: keep
  }
}

/** Containers (any state) labelled with one of these scheduler ids. */
export async function containersOf(docker: Docker, schedulerIds: readonly string[]) {
  const all = await docker.listContainers({ all: true, filters: { label: [LABELS.jobId] } });
  return all.filter((c) => schedulerIds.includes(c.Labels[LABELS.schedulerId] ?? ''));
}

/**
 * Runs `script` with node (uid 1000, as a runner) in a container of `image` on `network`,
 * labelled as a runner of `schedulerId` (so a failed test's cleanup finds it); its
 * stdout. The script must exit 0.
 */
export async function runNodeScript(
  docker: Docker,
  o: { image: string; script: string; network: string; schedulerId: string },
): Promise<string> {
  let out = '';
  const sink = new Writable({
    write(chunk, _enc, next) {
      out += String(chunk);
      next();
    },
  });
  const [result, container] = (await docker.run(o.image, ['-e', o.script], sink, {
    Entrypoint: ['node'],
    User: '1000:1000',
    Labels: { [LABELS.jobId]: 'attacker', [LABELS.schedulerId]: o.schedulerId },
    HostConfig: { NetworkMode: o.network },
  })) as [{ StatusCode: number }, { remove(): Promise<void> }];
  await container.remove();
  if (result.StatusCode !== 0) throw new Error(`the script exited ${result.StatusCode}: ${out}`);
  return out;
}

/** A Docker network's IPv4 gateway address (`docker network inspect`): this host, as its containers reach it. */
export function gatewayAddressOf(network: NetworkAddressInfo): string {
  const address = networkGatewayAddress(network);
  if (!address) throw new Error('the Docker network shows no IPv4 gateway address');
  return address;
}

/** Force-removes what a failed test left behind; returns how many there were. */
export async function removeContainersOf(docker: Docker, schedulerIds: readonly string[]) {
  const left = await containersOf(docker, schedulerIds);
  await Promise.all(
    left.map((c) =>
      docker
        .getContainer(c.Id)
        .remove({ force: true })
        .catch(() => {}),
    ),
  );
  return left.length;
}
