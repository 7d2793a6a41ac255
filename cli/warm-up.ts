import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PAYLOAD_SCHEMAS } from '../contract/jobs.ts';
import { WarmAssignment } from '../contract/warm-assignment.ts';
import { warmTextPath } from '../runner/extract/warm-up.ts';

/**
 * Code a job runs on its first use, run by a warm runner before its job on made-up input
 * (issue 13: in CPU profiles of a 200-page job after the hand-over, ~10 ms of compiling,
 * first-run regular expressions and zod building its parsers). No job's data is involved.
 */
export async function warmUpCode(): Promise<void> {
  await warmBuiltins();
  // zod compiles an object schema's parser on its first parse, whatever the input; one
  // that passes runs its fields' checks too (UUIDs, variable names: ~1 ms at the hand-over).
  WarmAssignment.safeParse({
    job_id: randomUUID(),
    lease_token: randomUUID(),
    env: { HD_WARM_UP: 'made up' },
  });
  for (const schema of Object.values(PAYLOAD_SCHEMAS)) schema.safeParse({});
  warmTextPath();
}

/**
 * Node's built-in modules that a job loads on first use (~3 ms compiling them):
 * `performance` (perf_hooks, the job's clock), Web Crypto (pg's SCRAM log-in: random
 * nonce, HMAC, PBKDF2, SHA-256; here on made-up bytes, one iteration), what
 * fs/promises' `mkdtemp` and recursive `rm` load (the job's scratch folder), and stderr.
 */
async function warmBuiltins(): Promise<void> {
  performance.now();
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  const hmac = await crypto.subtle.importKey(
    'raw',
    bytes,
    { name: 'HMAC', hash: 'SHA-256' },
    false,
    ['sign'],
  );
  await crypto.subtle.sign('HMAC', hmac, bytes);
  const password = await crypto.subtle.importKey('raw', bytes, 'PBKDF2', false, ['deriveBits']);
  await crypto.subtle.deriveBits(
    { name: 'PBKDF2', salt: bytes, iterations: 1, hash: 'SHA-256' },
    password,
    256,
  );
  await crypto.subtle.digest('SHA-256', bytes);
  // The job's scratch folder: made (0.6 ms the first time) and removed.
  try {
    await rm(await mkdtemp(join(tmpdir(), 'hd-warm-')), { recursive: true, force: true });
  } catch {
    // no temporary folder here: the job's own says why
  }
  // stderr's stream, made on first use (0.2-2.5 ms at the hand-over): the CLI guards it.
  void process.stderr;
}
