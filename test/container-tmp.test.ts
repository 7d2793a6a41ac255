import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LeasedJob } from '../contract/jobs.ts';
import { DockerLauncher } from '../scheduler/launchers/docker.ts';
import { createTestDatabase, type TestDatabase } from './helpers/database.ts';
import { removeContainersOf, requireDocker, skipNote, testImage } from './helpers/docker.ts';
import { ACCOUNT_A } from './helpers/runtime.ts';

// A runner's /tmp is its only writable place: a parser tricked into writing a program
// there must not be able to run it, and the mount must ignore setuid bits and devices.
const d = await requireDocker();

describe.skipIf(!d.available)(`a runner container's /tmp${skipNote(d)}`, () => {
  const schedulerId = `hd-test-tmp-${randomBytes(4).toString('hex')}`;
  let t: TestDatabase;
  let image: string;
  beforeAll(async () => {
    [image, t] = await Promise.all([testImage(d.docker!), createTestDatabase()]);
  }, 900_000);
  afterAll(async () => {
    await removeContainersOf(d.docker!, [schedulerId]);
    await t?.drop();
  });

  it('takes a file but runs no program from it, mounted nosuid and nodev', async () => {
    const queued = await t.db.enqueueJob({ accountId: ACCOUNT_A, jobType: 'tmp_probe', debug: {} });
    const [job] = await t.db.claimJobs({
      workerId: schedulerId,
      jobId: queued.id,
      leaseSeconds: 60,
    });
    const script = [
      'printf "#!/bin/sh\\necho the program ran\\n" > /tmp/prog && chmod +x /tmp/prog && echo written',
      '/tmp/prog || echo "exec refused"',
      'grep " /tmp " /proc/mounts',
    ].join('; ');
    const launcher = new DockerLauncher({
      db: t.db,
      docker: d.docker!,
      schedulerId,
      image,
      env: {},
      command: ['sh', '-c', script, 'tmp-probe'],
    });
    const resources = { gpu: false, memoryMb: 256, cpus: 1, timeoutMs: 60_000 };
    const exit = await (await launcher.launch({ job: job as LeasedJob, resources })).wait();
    const out = exit.outputTail;
    expect(out).toContain('written');
    expect(out).toContain('exec refused');
    expect(out).not.toContain('the program ran');
    const options = out
      .find((line) => line.includes(' /tmp '))
      ?.split(' ')[3]
      ?.split(',');
    expect(options).toEqual(expect.arrayContaining(['rw', 'noexec', 'nosuid', 'nodev']));
  });
});
