import type { LeasedJob } from '../../contract/jobs.ts';
import {
  B_OBJECT,
  BUCKET,
  keyOf,
  LEASE_FUNCTIONS,
  type AttackPlan,
  type AttemptLine,
} from './attack-plan.ts';
import { ACCOUNT_B } from './runtime.ts';

/** What an attempt must meet: refused with this reason, or a success that passes a check. */
export type Expected = { refused: RegExp } | { ok: (result: unknown) => string | undefined };

/**
 * Every attempt the script made, held against what must happen; returns what did not (one
 * line each). Pure, so that the planted-mistake tests of test/attack-container.test.ts can
 * show that it catches them.
 */
export function judge(lines: AttemptLine[], expected: Map<string, Expected>): string[] {
  const wrong: string[] = [];
  const seen = new Set<string>();
  for (const line of lines) {
    seen.add(line.attempt);
    const want = expected.get(line.attempt);
    if (!want) wrong.push(`${line.attempt}: not expected (add it to the expectations)`);
    else if ('refused' in want) {
      if (line.ok)
        wrong.push(`${line.attempt}: succeeded: ${JSON.stringify(line.result)?.slice(0, 300)}`);
      else if (!want.refused.test(line.reason ?? ''))
        wrong.push(`${line.attempt}: refused for another reason: ${line.reason}`);
    } else if (!line.ok) wrong.push(`${line.attempt}: refused: ${line.reason}`);
    else {
      const problem = want.ok(line.result);
      if (problem) wrong.push(`${line.attempt}: ${problem}`);
    }
  }
  for (const name of expected.keys()) if (!seen.has(name)) wrong.push(`${name}: not attempted`);
  return wrong;
}

const quote = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const exactly = (text: string) => new RegExp(`^${quote(text)}`);

/** What each attempt must meet; `transport` decides how a stranger's job id is refused. */
export function expectations(
  transport: 'postgres' | 'supabase',
  { plan, job: mine }: { plan: AttackPlan; job: LeasedJob },
  secrets: string[],
): Map<string, Expected> {
  const e = new Map<string, Expected>();
  const { victim } = plan;
  const notHeld = (jobId: string) =>
    transport === 'postgres'
      ? // The login role of B's job is refused on any other job, before the token is read.
        new RegExp(
          `^permission denied: this runner credential \\(hd_job_${mine.id.replaceAll('-', '')}\\) is not for job ${jobId}$`,
        )
      : exactly(
          `permission denied: this runner credential is for job ${mine.id}, not job ${jobId}`,
        );
  const ok = (check: (result: unknown) => boolean, what: string) => ({
    ok: (result: unknown) => (check(result) ? undefined : `${what}, got ${JSON.stringify(result)}`),
  });
  const rows = (result: unknown) =>
    (transport === 'postgres' ? result : [result].flat()) as Record<string, unknown>[];

  e.set(
    'adopt my own lease',
    ok((r) => (r as { id?: string }).id === mine.id, 'my job'),
  );
  for (const table of plan.tables)
    e.set(`read table ${table}`, { refused: exactly(`permission denied for table ${table}`) });
  for (const fn of plan.functions) {
    const zero = `call ${fn.name} on A's running job, zero token`;
    if (fn.trigger && transport === 'supabase') {
      // PostgREST does not offer trigger functions at all.
      e.set(zero, { refused: exactly(`Could not find the function public.${fn.name} without`) });
      continue;
    }
    if (fn.name === 'hd_warm_up_session') {
      // A warm runner's warm-up (00036) takes no job: it calls the job functions with none,
      // and every one of those six calls is refused inside it; nothing is reached.
      e.set(
        zero,
        ok((r) => r === 6 || Object.values(rows(r)[0] ?? {})[0] === 6, 'six refusals'),
      );
      continue;
    }
    if (!LEASE_FUNCTIONS.includes(fn.name)) {
      e.set(zero, { refused: exactly(`permission denied for function ${fn.name}`) });
      continue;
    }
    e.set(zero, { refused: notHeld(victim.runningJobId) });
    e.set(`call ${fn.name} on A's running job, my own lease token`, {
      refused: notHeld(victim.runningJobId),
    });
    e.set(`call ${fn.name} on A's queued job, null token`, {
      refused: notHeld(victim.queuedJobId),
    });
    e.set(`call ${fn.name} on A's completed job, zero token`, {
      refused: notHeld(victim.completedJobId),
    });
  }
  e.set("claim A's queued job", {
    refused: exactly('permission denied for function hd_claim_jobs'),
  });
  e.set(
    'upsert assets naming account A',
    ok((r) => rows(r)[0]?.inserted !== undefined, 'counts'),
  );
  e.set('insert a row for A into hd_assets', {
    refused: exactly('permission denied for table hd_assets'),
  });
  e.set("replace chunks pointing at A's file", {
    refused: exactly(`a chunk refers to a file that is not part of document ${mine.document_id}`),
  });
  e.set("interpret A's chunk", {
    refused: exactly(`1 interpretation(s) name a chunk outside the document of job ${mine.id}`),
  });
  e.set("synthesize A's node", {
    refused: exactly(`node ${victim.nodeId} is not a node of the account of job ${mine.id}`),
  });
  e.set(
    "read A's node context",
    ok((r) => rows(r).every((row) => row === null || row.hd_get_node_context === null), 'null'),
  );
  e.set(
    "graph edge with A's evidence",
    ok((r) => rows(r)[0]?.edges_inserted === 0 && rows(r)[0]?.edges_updated === 0, 'no edge'),
  );
  e.set(
    'list my document files',
    ok(
      (r) => rows(r).length === 1 && rows(r)[0]?.storage_path === keyOf(ACCOUNT_B),
      `only ${keyOf(ACCOUNT_B)}`,
    ),
  );
  e.set('begin an artifact of mine named ../../..', {
    refused: /^artifact name '\.\.\/\.\.\/\.\.\/x' is not valid/,
  });
  e.set('heartbeat my own lease with a clock of 2100', {
    refused: exactly(
      `a lease cannot end more than an hour from now (job ${mine.id}, lease until 2100-`,
    ),
  });
  if (transport === 'postgres') {
    e.set('set role hd_scheduler', {
      refused: exactly('permission denied to set role "hd_scheduler"'),
    });
    e.set('set role postgres', { refused: exactly('permission denied to set role "postgres"') });
    e.set('read a server file', {
      refused: exactly('permission denied for function pg_read_file'),
    });
    e.set('create a table in public', { refused: exactly('permission denied for schema public') });
    e.set(
      'column statistics of hd_ tables',
      ok((r) => rows(r).length === 0, 'no row'),
    );
    e.set(
      "other sessions' queries",
      ok(
        (r) =>
          rows(r).some((s) => s.query === '<insufficient privilege>') &&
          rows(r).every((s) => !s.query || s.query === '<insufficient privilege>'),
        'every query hidden',
      ),
    );
    e.set("terminate another runner's session", {
      // (where no other runner is connected, there is nobody to try it on)
      refused:
        /^(permission denied (to terminate process|for function pg_terminate_backend)|no other runner session to terminate)/,
    });
    e.set("set a default for every runner's sessions", {
      refused: /^permission denied to alter role/,
    });
    e.set(
      'take the advisory locks other sessions hold',
      ok((r) => r === 0, 'none taken'),
    );
    // Cannot be refused (NOTIFY needs no privilege); the scheduler must not believe it:
    // "a forged cancel notice …" below.
    e.set(
      "forge a cancel notice for A's running job",
      ok(() => true, 'sent'),
    );
    e.set('log in as the superuser with a guessed password', {
      refused: exactly('password authentication failed for user "postgres"'),
    });
    e.set(
      'list the storage root',
      ok((r) => JSON.stringify(r) === `["hd_outputs","${BUCKET}"]`, `hd_outputs, ${BUCKET}`),
    );
    e.set(
      'list the accounts of the bucket',
      ok((r) => JSON.stringify(r) === `["${ACCOUNT_B}"]`, 'B alone'),
    );
    e.set(
      'read my own object',
      ok((r) => r === B_OBJECT, B_OBJECT),
    );
    e.set("read A's object", { refused: /^ENOENT$/ });
    e.set("read A's object through my folder and ..", { refused: /^ENOENT$/ });
    e.set('write into my own folder', { refused: /^EROFS$/ });
    e.set(
      "write into my job's output folder",
      ok((r) => r === 'written', 'written'),
    );
    e.set("write into another job's output folder of my account", { refused: /^EROFS$/ });
    e.set("write into A's output folder", { refused: /^EROFS$/ });
    e.set('overwrite my own input', { refused: /^EROFS$/ });
    // The LLM gateway (this transport's run starts one; B's budget: 2,000 tokens a day).
    e.set(
      'gateway: a chat completion with my credential',
      ok((r) => String(r).startsWith('200 '), '200'),
    );
    e.set('gateway: no credential', { refused: exactly('401 no credential') });
    e.set('gateway: a made-up credential', {
      refused: exactly('401 the credential is not valid: its job ended'),
    });
    e.set('gateway: another endpoint of the provider (/v1/files)', {
      refused: exactly('404 no route POST /v1/files'),
    });
    e.set('gateway: a path that climbs out (/v1/chat/completions/../../admin)', {
      refused: exactly('404 no route POST /v1/chat/completions/../../admin'),
    });
    e.set('gateway: a model the scheduler does not offer', {
      refused: exactly("400 model 'o1-pro' is not offered through this gateway"),
    });
    e.set('gateway: a transcription naming a second model after the file', {
      refused: exactly('400 the request names more than one model'),
    });
    e.set('gateway: a transcription naming its model unquoted', {
      refused: exactly("400 model 'o1-pro' is not offered through this gateway"),
    });
    const overBudget = /^402 the account's language-model budget for \S+ \(UTC\) would be exceeded/;
    e.set('gateway: an absurd max_tokens', { refused: overBudget });
    e.set('gateway: many choices (n: 100) of a small max_tokens', { refused: overBudget });
    e.set('gateway: max_completion_tokens 1 beside max_tokens 100000', { refused: overBudget });
    e.set('gateway: max_tokens as the string "100000"', { refused: overBudget });
    for (const how of ['which reports no usage', 'asked for as "true"'])
      e.set(`gateway: a streamed answer, ${how}`, {
        refused: exactly('400 stream is not supported through the gateway'),
      });
    // Refused by its Content-Length before a byte of it is read; the answer comes before
    // the connection is closed (test/llm-gateway-admission.test.ts).
    e.set('gateway: a body over its limit (17 MiB)', {
      refused: exactly(
        '413 request body too large (the most for a chat completion: 16777216 bytes)',
      ),
    });
    e.set("gateway: the prompt in a tool's description (12,000 bytes), 'hi' as messages", {
      refused: overBudget,
    });
    e.set('gateway: two "model" keys, an offered one first', {
      refused: exactly("400 model 'o1-pro' is not offered through this gateway"),
    });
    // The one behind is admitted alone: 401 (no credential), and that refusal closes the
    // connection at once, the first one's answer lost with it (the sender's own connection).
    e.set('gateway: a request smuggled behind a Content-Length of 2', {
      refused: /^(HTTP\/1\.1 400; )?HTTP\/1\.1 401$/,
    });
    // Node's parser refuses the pair (request smuggling) before the gateway sees it.
    e.set('gateway: Transfer-Encoding chunked and a Content-Length both', {
      refused: exactly('HTTP/1.1 400'),
    });
  } else {
    // PostgREST checks the signature before it reads a claim.
    const badSignature = /^JWSError JWSInvalidSignature \(HTTP 401\)$/;
    e.set('read hd_assets with an unsigned service_role token', {
      refused: /^JWSError JWSNoSignatures \(HTTP 401\)$/,
    });
    e.set('read hd_assets with my token, role edited to service_role', { refused: badSignature });
    e.set("heartbeat A's job with my token, job_id edited", { refused: badSignature });
    e.set(
      'download my own input through its signed URL',
      ok((r) => r === B_OBJECT, B_OBJECT),
    );
    e.set("download A's object with the job token", { refused: /not_found: Object not found$/ });
    e.set("upload into A's folder with the job token", {
      refused: /Unauthorized: new row violates row-level security policy$/,
    });
    e.set(
      "list A's folder with the job token",
      ok((r) => r === '[]', 'nothing'),
    );
    e.set(
      "sign a URL for A's object with the job token",
      ok((r) => /"signedURL":null/.test(String(r)), 'no URL'),
    );
    e.set("my signed URL edited to A's key", { refused: /InvalidJWT: The signature is invalid$/ });
    const onlyMine = exactly(
      `403 uploads of job ${mine.id} go to hd_outputs/accounts/${ACCOUNT_B}/jobs/${mine.id}/ only`,
    );
    e.set(
      "upload grant for my job's output folder",
      ok((r) => r === 'granted', 'granted'),
    );
    e.set(
      'upload through my grant',
      ok(
        (r) =>
          String(r).includes(`hd_outputs/accounts/${ACCOUNT_B}/jobs/${mine.id}/page_text/p.md`),
        'stored',
      ),
    );
    // The stored object is checked against the declared size at record time (00030), and a
    // grant creates its object once (no upsert): what was checked cannot be replaced.
    const ownKey = (name: string) => `accounts/${ACCOUNT_B}/jobs/${mine.id}/page_text/${name}`;
    e.set(
      'record my artifact as stored',
      ok((r) => r === 'recorded', 'recorded'),
    );
    e.set('overwrite my recorded artifact with 1 MiB through its grant', {
      refused: /^400 409 Duplicate: The resource already exists$/,
    });
    e.set('store 1 MiB under an artifact begun as 7 bytes, record it as 7', {
      refused: exactly(
        `artifact page_text/more.md of job ${mine.id}: the object stored at hd_outputs/${ownKey('more.md')} is 1048576 bytes, not the 7 bytes declared; nothing recorded`,
      ),
    });
    e.set('store 1 MiB resumably under an artifact begun as 7 bytes, record it as 7', {
      refused: exactly(
        `artifact page_text/more-tus.md of job ${mine.id}: the object stored at hd_outputs/${ownKey('more-tus.md')} is 1048576 bytes, not the 7 bytes declared; nothing recorded`,
      ),
    });
    e.set("resumable upload to A's output folder with my grant's token", {
      refused: /^400 The signature is invalid$/,
    });
    e.set('record an artifact begun as 7 bytes before storing it', {
      refused: exactly(
        `artifact page_text/early.md of job ${mine.id}: nothing is stored at hd_outputs/${ownKey('early.md')} (an upload URL was granted for it); nothing recorded`,
      ),
    });
    // Grants are bound to begun artifacts (00025): a key hd_begin_artifact never gave this
    // lease, so never counted against the job's output limit, gets no upload URL.
    const bigKey = `accounts/${ACCOUNT_B}/jobs/${mine.id}/x/big`;
    e.set('upload 1 MiB under a key no artifact was begun for', {
      refused: exactly(`403 no artifact of job ${mine.id} was begun at ${bigKey} by this lease`),
    });
    e.set("upload grant for A's output folder", {
      refused: new RegExp(`^403 storage path .* refused: it is not inside accounts/${ACCOUNT_B}/$`),
    });
    e.set("upload grant for another job's output folder of my account", { refused: onlyMine });
    e.set('upload grant over my own input', { refused: onlyMine });
    e.set("upload grant climbing from my job's folder with ..", {
      refused: /^403 storage path .* refused: it contains a "\." or "\.\." segment$/,
    });
    e.set("upload grant climbing from my job's folder with %2e%2e", {
      refused: /^403 storage path .* refused: it contains "%" \(percent-escapes are not allowed\)$/,
    });
    e.set("upload grant on A's running job with my lease", {
      refused: exactly(`403 job ${victim.runningJobId} is not held by this lease`),
    });
    e.set("my upload URL edited to A's output folder", {
      refused: /InvalidJWT: The signature is invalid$/,
    });
  }
  e.set(
    'read /proc/*/environ',
    ok((r) => {
      const all = JSON.stringify(r);
      return (
        Object.keys(r as object).join() === '1' &&
        all.includes(`HD_LEASE_TOKEN=${mine.lease_token}`) && // it did read its own
        secrets.every((s) => !all.includes(s))
      );
    }, 'only its own environment, no secret'),
  );
  e.set('open the Docker socket', { refused: /^ENOENT$/ });
  return e;
}
