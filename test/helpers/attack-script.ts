// The attacker: code that took over tenant B's runner (an exploit in a parser, say). It runs
// INSIDE B's runner container (`node --input-type=module-typescript -e <this file>`), with
// what that container holds and nothing else: its environment, its mounts, its network, the
// image's node_modules. Each attempt prints one JSON line {attempt, ok, reason | result};
// test/attack-container.test.ts judges them. Only `import type` from the checkout (erased).
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import type { AttackPlan, AttemptLine, FunctionCall } from './attack-plan.ts';

const plan = JSON.parse(process.argv[1]!) as AttackPlan;
const myJobId = process.argv[process.argv.indexOf('--job-id') + 1]!;
const myToken = process.env.HD_LEASE_TOKEN!;
const env = process.env;
const v = plan.victim;
const ZERO = '00000000-0000-0000-0000-000000000000';
/** SHA-256 of the 7 bytes 'planted', what the upload attempts store. */
const plantedSha256 = '372eb3774802a8d97badd0f3afdabbf7a17ef8a1f900b394db99a460b893406c';

function report(line: AttemptLine) {
  const result = line.result === undefined ? {} : { result: cut(line.result) };
  console.log(JSON.stringify({ ...line, ...result }));
}
function cut(value: unknown): unknown {
  const text = JSON.stringify(value) ?? 'null';
  return text.length > 20_000 ? `${text.slice(0, 20_000)}…` : value;
}
async function attempt(name: string, run: () => Promise<unknown>) {
  try {
    report({ attempt: name, ok: true, result: await run() });
  } catch (error) {
    const e = error as { code?: string; message?: string };
    report({ attempt: name, ok: false, reason: e.message || e.code || String(error) });
  }
}
/** fs attempts: the errno code is the reason (ENOENT, EROFS …). */
async function fsAttempt(name: string, run: () => Promise<unknown>) {
  try {
    report({ attempt: name, ok: true, result: await run() });
  } catch (error) {
    report({
      attempt: name,
      ok: false,
      reason: (error as { code?: string }).code ?? String(error),
    });
  }
}

/** Argument values an attacker would pass: the victim's ids, a token it does not know. */
function argumentsFor(fn: FunctionCall, jobId: string, token: string | null) {
  const values: Record<string, unknown> = {};
  for (const { name, type } of fn.args.filter((a) => a.required)) {
    if (name === 'p_job_id') values[name] = jobId;
    else if (name === 'p_job_ids') values[name] = [jobId];
    else if (name === 'p_lease_token') values[name] = token;
    else if (name === 'p_lease_tokens') values[name] = [token];
    else if (name === 'p_node_id') values[name] = v.nodeId;
    else if (name === 'p_account_id') values[name] = v.account;
    else if (type === 'uuid') values[name] = v.documentId;
    else if (type === 'uuid[]') values[name] = [v.documentId];
    else if (type === 'text') values[name] = 'attack';
    else if (type === 'text[]') values[name] = ['attack'];
    else if (['integer', 'bigint', 'numeric', 'smallint'].includes(type)) values[name] = 1;
    else if (type === 'boolean') values[name] = false;
    else if (type === 'jsonb' || type === 'json')
      values[name] = ['p_stats', 'p_debug', 'p_details', 'p_synthesis'].includes(name) ? {} : [];
    else if (type.startsWith('timestamp')) values[name] = new Date().toISOString();
    else values[name] = null;
  }
  return values;
}

/** How this runner reaches the database: a pg connection or PostgREST with its job token. */
interface Db {
  table(name: string): Promise<unknown>;
  call(fn: string, args: Record<string, unknown>, types?: Record<string, string>): Promise<unknown>;
}

async function postgresDb(): Promise<
  Db & { sql(text: string, params?: unknown[]): Promise<unknown[]> }
> {
  const { default: pg } = await import('pg');
  const client = new pg.Client({
    connectionString: env.HD_DATABASE_URL,
    statement_timeout: 30_000,
  });
  await client.connect();
  const sql = async (text: string, params: unknown[] = []) =>
    (await client.query(text, params)).rows;
  return {
    sql,
    table: (name) => sql(`select * from public.${name} limit 5`),
    call(fn, args, types = {}) {
      const names = Object.keys(args);
      const list = names.map((n, i) => `${n} => $${i + 1}::${types[n] ?? 'text'}`).join(', ');
      const params = names.map((n) =>
        args[n] !== null && typeof args[n] === 'object' && !(types[n] ?? '').endsWith('[]')
          ? JSON.stringify(args[n])
          : args[n],
      );
      // A trigger function in FROM fails before its EXECUTE right is checked.
      const trigger = plan.functions.find((f) => f.name === fn)?.trigger;
      return sql(`select ${trigger ? '' : '* from '}public.${fn}(${list})`, params);
    },
  };
}

/** A row written straight into a table through PostgREST, with the job token. */
async function restInsert(table: string, row: object) {
  const response = await fetch(`${env.SUPABASE_URL}/rest/v1/${table}`, {
    method: 'POST',
    headers: { ...restHeaders(env.HD_JOB_TOKEN!), prefer: 'return=representation' },
    body: JSON.stringify(row),
  });
  return restAnswer(response);
}

const restHeaders = (token: string) => ({
  authorization: `Bearer ${token}`,
  ...(env.SUPABASE_ANON_KEY ? { apikey: env.SUPABASE_ANON_KEY } : {}),
  'content-type': 'application/json',
});

async function restAnswer(response: Response) {
  const body = (await response.json().catch(() => null)) as { message?: string } | null;
  if (!response.ok) throw new Error(`${body?.message ?? ''} (HTTP ${response.status})`);
  return body;
}

function restDb(token: string): Db {
  const headers = restHeaders(token);
  const answer = restAnswer;
  return {
    table: async (name) =>
      answer(await fetch(`${env.SUPABASE_URL}/rest/v1/${name}?select=*&limit=5`, { headers })),
    call: async (fn, args) =>
      answer(
        await fetch(`${env.SUPABASE_URL}/rest/v1/rpc/${fn}`, {
          method: 'POST',
          headers,
          body: JSON.stringify(args),
        }),
      ),
  };
}

const pgDb = env.HD_TRANSPORT === 'supabase' ? undefined : await postgresDb();
const db: Db = pgDb ?? restDb(env.HD_JOB_TOKEN!);
const typesOf = (fn: FunctionCall) => Object.fromEntries(fn.args.map((a) => [a.name, a.type]));
const callAs = (
  name: string,
  jobId: string,
  token: string | null,
  extra: Record<string, unknown> = {},
) => {
  const fn = plan.functions.find((f) => f.name === name)!;
  return db.call(name, { ...argumentsFor(fn, jobId, token), ...extra }, typesOf(fn));
};

// --- Positive control: the credential works for this runner's own job (and names its account).
let myAccount = '';
await attempt('adopt my own lease', async () => {
  const job = [await callAs('hd_adopt_lease', myJobId, myToken)].flat()[0] as {
    account_id: string;
  };
  myAccount = job.account_id;
  return job;
});

// --- Every table, every function, with A's ids.
for (const table of plan.tables) await attempt(`read table ${table}`, () => db.table(table));
for (const fn of plan.functions) {
  const args = argumentsFor(fn, v.runningJobId, ZERO);
  await attempt(`call ${fn.name} on A's running job, zero token`, () =>
    db.call(fn.name, args, typesOf(fn)),
  );
  if (plan.leaseFunctions.includes(fn.name)) {
    await attempt(`call ${fn.name} on A's running job, my own lease token`, () =>
      callAs(fn.name, v.runningJobId, myToken),
    );
    await attempt(`call ${fn.name} on A's queued job, null token`, () =>
      callAs(fn.name, v.queuedJobId, null),
    );
    await attempt(`call ${fn.name} on A's completed job, zero token`, () =>
      callAs(fn.name, v.completedJobId, ZERO),
    );
  }
}

// --- Queue: claim a queued job (A's, by id, or any).
await attempt("claim A's queued job", () =>
  callAs('hd_claim_jobs', v.queuedJobId, null, {
    p_worker_id: 'attacker',
    p_job_id: v.queuedJobId,
  }),
);

// --- Outputs "under A" with this runner's own, valid lease: they land in B or are refused.
const own = (name: string, extra: Record<string, unknown>) => callAs(name, myJobId, myToken, extra);
await attempt('upsert assets naming account A', () =>
  own('hd_upsert_assets', {
    p_rows: [
      { account_id: v.account, title: 'planted', source_type: 'upload', source_ref: 'attack-1' },
      // A's own asset, by its id and its key: an upsert that trusted either would overwrite it.
      {
        account_id: v.account,
        id: v.assetId,
        title: 'planted',
        source_type: v.assetSourceType,
        source_ref: v.assetSourceRef,
      },
    ],
  }),
);
await attempt("replace chunks pointing at A's file", () =>
  own('hd_replace_document_chunks', {
    p_chunks: [{ chunk_index: 0, file_id: v.fileId, content: 'planted' }],
  }),
);
await attempt("interpret A's chunk", () =>
  own('hd_upsert_interpretations', {
    p_rows: [{ chunk_id: v.chunkId, prompt_version: 'attack', model: 'x', payload: {} }],
  }),
);
await attempt("synthesize A's node", () =>
  own('hd_record_synthesis', { p_node_id: v.nodeId, p_synthesis: { summary: 'planted' } }),
);
await attempt("read A's node context", () => own('hd_get_node_context', { p_node_id: v.nodeId }));
await attempt("graph edge with A's evidence", () =>
  own('hd_write_document_graph', {
    p_nodes: [
      { node_type: 'person', label: 'Ada', normalized_label: 'ada' },
      { node_type: 'person', label: 'Bob', normalized_label: 'bob' },
    ],
    p_edges: [
      {
        source_type: 'person',
        source_key: 'ada',
        relation: 'knows',
        target_type: 'person',
        target_key: 'bob',
        evidence: [{ interpretation_id: v.interpretationId, quote: 'planted' }],
      },
    ],
  }),
);
await attempt('list my document files', () => own('hd_list_document_files', {}));
// The key is built from the job's ids in SQL; a name cannot climb out of the job's prefix.
await attempt('begin an artifact of mine named ../../..', () =>
  own('hd_begin_artifact', { p_kind: 'page_text', p_name: '../../../x', p_size_bytes: 1 }),
);

// Lease functions take the caller's clock (p_now, for tests): a lease stretched to 2100
// would never be reaped (00023).
await attempt('heartbeat my own lease with a clock of 2100', () =>
  own('hd_heartbeat', { p_now: '2100-01-01T00:00:00Z' }),
);

await attempt('insert a row for A into hd_assets', () =>
  pgDb
    ? pgDb.sql(
        `insert into public.hd_assets (account_id, source_type, source_ref, title) values ($1, 'upload', 'attack-3', 'planted')`,
        [v.account],
      )
    : restInsert('hd_assets', {
        account_id: v.account,
        source_type: 'upload',
        source_ref: 'attack-3',
        title: 'planted',
      }),
);

// --- The database beyond the hd_ functions (a direct connection only).
if (pgDb) {
  const sql = pgDb.sql;
  await attempt('set role hd_scheduler', () => sql('set role hd_scheduler'));
  await attempt('set role postgres', () => sql('set role postgres'));
  await attempt('read a server file', () => sql(`select pg_read_file('/etc/passwd')`));
  await attempt('create a table in public', () => sql('create table public.hd_attack (x int)'));
  await attempt('column statistics of hd_ tables', () =>
    sql(
      `select tablename, attname, most_common_vals::text from pg_stats where tablename like 'hd\\_%'`,
    ),
  );
  await attempt("other sessions' queries", () =>
    sql(`select usename, query from pg_stat_activity where usename is distinct from current_user`),
  );
  // Whatever an advisory lock's key is derived from, pg_locks shows it to every session: take
  // those other sessions hold (A's graph write holds one now), as session locks, kept until
  // this container's connection ends. The `learned` line tells the test to let A go on.
  await attempt('take the advisory locks other sessions hold', async () => {
    const held = (await sql(
      `select distinct classid::bigint as hi, objid::bigint as lo from pg_locks
        where locktype = 'advisory' and granted and objsubid = 1 and pid <> pg_backend_pid()
          and database = (select oid from pg_database where datname = current_database())`,
    )) as { hi: string; lo: string }[];
    console.log(JSON.stringify({ learned: held.length }));
    for (const { hi, lo } of held)
      await sql('select pg_advisory_lock(($1::bigint << 32) | $2::bigint)', [hi, lo]);
    return held.length;
  });
  // Other runners' sessions: a job's own role, or the shared hd_runner (this database only).
  await attempt("terminate another runner's session", async () => {
    const others = (await sql(
      `select pid from pg_stat_activity
        where (usename like 'hd\\_job\\_%' or usename = 'hd_runner')
          and datname = current_database() and pid <> pg_backend_pid()`,
    )) as { pid: number }[];
    if (others.length === 0) throw new Error('no other runner session to terminate');
    for (const { pid } of others) await sql('select pg_terminate_backend($1)', [pid]);
    return others.length;
  });
  // Defaults of the group role would apply to every later session of every tenant's runner.
  // Only in this test's database and harmless here; the test undoes it.
  await attempt("set a default for every runner's sessions", () =>
    sql(
      `do $$ begin execute format('alter role hd_runner in database %I set application_name = %L',
         current_database(), 'planted by B'); end $$`,
    ),
  );
  // NOTIFY needs no right at all: what counts is that no scheduler takes it for a cancel.
  await attempt("forge a cancel notice for A's running job", () =>
    sql(`select pg_notify('hd_jobs_cancelled', $1)`, [v.runningJobId]),
  );
  await attempt('log in as the superuser with a guessed password', async () => {
    const { default: pg } = await import('pg');
    const url = new URL(env.HD_DATABASE_URL!);
    url.username = 'postgres';
    url.password = 'postgres';
    const c = new pg.Client({ connectionString: url.toString() });
    await c.connect();
    await c.end();
    return 'connected';
  });
}

// --- The Supabase API beyond the job token.
if (!pgDb) {
  const [header, payload, signature] = env.HD_JOB_TOKEN!.split('.');
  const claims = JSON.parse(Buffer.from(payload!, 'base64url').toString('utf8')) as object;
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const serviceClaims = part({ ...claims, role: 'service_role' });
  await attempt('read hd_assets with an unsigned service_role token', () =>
    restDb(`${part({ alg: 'none', typ: 'JWT' })}.${serviceClaims}.`).table('hd_assets'),
  );
  await attempt('read hd_assets with my token, role edited to service_role', () =>
    restDb(`${header}.${serviceClaims}.${signature}`).table('hd_assets'),
  );
  await attempt("heartbeat A's job with my token, job_id edited", () =>
    restDb(`${header}.${part({ ...claims, job_id: v.runningJobId })}.${signature}`).call(
      'hd_heartbeat',
      { p_job_id: v.runningJobId, p_lease_token: ZERO },
    ),
  );
}

// --- A's objects.
const tenantKey = (account: string) => v.key.replace(v.account, account);
if (env.HD_STORAGE === 'supabase') {
  const storage = `${env.SUPABASE_URL}/storage/v1`;
  const auth = { authorization: `Bearer ${env.HD_JOB_TOKEN}` };
  const storageAnswer = async (response: Response) => {
    const text = await response.text();
    if (response.ok) return text.slice(0, 200);
    const body = JSON.parse(text) as { error?: string; message?: string; statusCode?: string };
    throw new Error(`${response.status} ${body.statusCode ?? ''} ${body.error}: ${body.message}`);
  };
  const urls = JSON.parse(env.HD_JOB_STORAGE_URLS ?? '{}') as Record<string, string>;
  const mine = Object.values(urls)[0] ?? '';
  await attempt('download my own input through its signed URL', async () =>
    storageAnswer(await fetch(mine)),
  );
  await attempt("download A's object with the job token", async () =>
    storageAnswer(await fetch(`${storage}/object/${v.bucket}/${v.key}`, { headers: auth })),
  );
  await attempt("upload into A's folder with the job token", async () =>
    storageAnswer(
      await fetch(`${storage}/object/${v.bucket}/${v.key}`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'text/plain', 'x-upsert': 'true' },
        body: 'planted',
      }),
    ),
  );
  await attempt("list A's folder with the job token", async () =>
    storageAnswer(
      await fetch(`${storage}/object/list/${v.bucket}`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: JSON.stringify({ prefix: `accounts/${v.account}/` }),
      }),
    ),
  );
  await attempt("sign a URL for A's object with the job token", async () =>
    storageAnswer(
      await fetch(`${storage}/object/sign/${v.bucket}`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: JSON.stringify({ expiresIn: 60, paths: [v.key] }),
      }),
    ),
  );
  await attempt("my signed URL edited to A's key", async () =>
    storageAnswer(await fetch(mine.replace(/\/accounts\/[^/]+\//, `/accounts/${v.account}/`))),
  );
  // Artifacts: the scheduler signs an upload URL per key, for the job's own prefix only.
  const grant = async (jobId: string, bucket: string, key: string) => {
    const response = await fetch(env.HD_UPLOAD_GRANT_URL ?? 'http://127.0.0.1:1/', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ job_id: jobId, lease_token: myToken, bucket, key }),
    });
    const body = (await response.json()) as { url?: string; error?: string };
    if (!response.ok) throw new Error(`${response.status} ${body.error}`);
    return body.url!;
  };
  const aOutput = `accounts/${v.account}/jobs/${v.runningJobId}/page_text/planted.md`;
  let granted = '';
  await attempt("upload grant for my job's output folder", async () => {
    // As the runner does: hd_begin_artifact first (it declares the size the limit counts).
    await callAs('hd_begin_artifact', myJobId, myToken, {
      p_kind: 'page_text',
      p_name: 'p.md',
      p_size_bytes: 7,
    });
    const key = `accounts/${myAccount}/jobs/${myJobId}/page_text/p.md`;
    granted = await grant(myJobId, 'hd_outputs', key);
    return 'granted';
  });
  const put = (url: string) =>
    fetch(url, { method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'planted' });
  await attempt('upload through my grant', async () => storageAnswer(await put(granted)));
  // What is stored must be what is declared (00030): Storage's own row of the object
  // (storage.objects) is read when the artifact is recorded.
  const record = (name: string, sizeBytes: number) =>
    callAs('hd_record_artifact', myJobId, myToken, {
      p_kind: 'page_text',
      p_name: name,
      p_content_type: 'text/markdown',
      p_size_bytes: sizeBytes,
      p_sha256: plantedSha256,
    });
  await attempt('record my artifact as stored', async () => {
    await record('p.md', 7);
    return 'recorded';
  });
  const MiB = Buffer.alloc(1 << 20, 0x61);
  await attempt('overwrite my recorded artifact with 1 MiB through its grant', async () =>
    storageAnswer(await fetch(granted, { method: 'PUT', body: MiB })),
  );
  const begunAs7 = async (name: string) => {
    await callAs('hd_begin_artifact', myJobId, myToken, {
      p_kind: 'page_text',
      p_name: name,
      p_size_bytes: 7,
    });
    return grant(myJobId, 'hd_outputs', `accounts/${myAccount}/jobs/${myJobId}/page_text/${name}`);
  };
  await attempt('store 1 MiB under an artifact begun as 7 bytes, record it as 7', async () => {
    const url = await begunAs7('more.md');
    await storageAnswer(await fetch(url, { method: 'PUT', body: MiB }));
    return record('more.md', 7);
  });
  // The same through Storage's resumable route on the grant's token (x-signature).
  const tusCreate = (url: string, key: string, length: number) =>
    fetch(`${storage}/upload/resumable/sign`, {
      method: 'POST',
      headers: {
        'tus-resumable': '1.0.0',
        'upload-length': String(length),
        'upload-metadata': `bucketName ${btoa('hd_outputs')},objectName ${btoa(key)}`,
        'x-signature': new URL(url).searchParams.get('token') ?? '',
      },
    });
  await attempt(
    'store 1 MiB resumably under an artifact begun as 7 bytes, record it as 7',
    async () => {
      const url = await begunAs7('more-tus.md');
      const key = `accounts/${myAccount}/jobs/${myJobId}/page_text/more-tus.md`;
      const created = await tusCreate(url, key, MiB.length);
      if (created.status !== 201) throw new Error(`${created.status} ${await created.text()}`);
      const patched = await fetch(
        `${storage}/upload/resumable/sign/${created.headers.get('location')!.split('/').pop()}`,
        {
          method: 'PATCH',
          headers: {
            'tus-resumable': '1.0.0',
            'upload-offset': '0',
            'content-type': 'application/offset+octet-stream',
            'x-signature': new URL(url).searchParams.get('token') ?? '',
          },
          body: MiB,
        },
      );
      if (patched.status !== 204) throw new Error(`${patched.status} ${await patched.text()}`);
      return record('more-tus.md', 7);
    },
  );
  await attempt("resumable upload to A's output folder with my grant's token", async () => {
    const created = await tusCreate(granted, aOutput, 7);
    if (created.status !== 201) throw new Error(`${created.status} ${await created.text()}`);
    return 'created';
  });
  await attempt('record an artifact begun as 7 bytes before storing it', async () => {
    await begunAs7('early.md');
    return record('early.md', 7);
  });
  // No hd_begin_artifact for this key: nothing held it against the job's output limit.
  await attempt('upload 1 MiB under a key no artifact was begun for', async () => {
    const url = await grant(myJobId, 'hd_outputs', `accounts/${myAccount}/jobs/${myJobId}/x/big`);
    const body = Buffer.alloc(1 << 20, 0x61);
    return storageAnswer(await fetch(url, { method: 'PUT', body }));
  });
  await attempt("upload grant for A's output folder", () => grant(myJobId, 'hd_outputs', aOutput));
  await attempt("upload grant for another job's output folder of my account", () =>
    grant(myJobId, 'hd_outputs', `accounts/${myAccount}/jobs/${v.completedJobId}/p.md`),
  );
  await attempt('upload grant over my own input', () =>
    grant(myJobId, v.bucket, tenantKey(myAccount)),
  );
  const climb = `accounts/${myAccount}/jobs/${myJobId}/../../../../${v.account}/x.md`;
  await attempt("upload grant climbing from my job's folder with ..", () =>
    grant(myJobId, 'hd_outputs', climb),
  );
  await attempt("upload grant climbing from my job's folder with %2e%2e", () =>
    grant(myJobId, 'hd_outputs', climb.replaceAll('..', '%2e%2e')),
  );
  await attempt("upload grant on A's running job with my lease", () =>
    grant(v.runningJobId, 'hd_outputs', aOutput),
  );
  await attempt("my upload URL edited to A's output folder", async () =>
    storageAnswer(await put(granted.replace(/\/accounts\/.*\?/, `/${aOutput}?`))),
  );
} else {
  const root = env.HD_STORAGE_ROOT!;
  const accounts = `${root}/${v.bucket}/accounts`;
  await fsAttempt('list the storage root', async () => (await readdir(root)).sort());
  await fsAttempt('list the accounts of the bucket', () => readdir(accounts));
  await fsAttempt('read my own object', async () =>
    (await readFile(`${root}/${v.bucket}/${tenantKey(myAccount)}`, 'utf8')).slice(0, 200),
  );
  await fsAttempt("read A's object", () => readFile(`${root}/${v.bucket}/${v.key}`, 'utf8'));
  await fsAttempt("read A's object through my folder and ..", () =>
    readFile(`${accounts}/${myAccount}/../${v.key.slice('accounts/'.length)}`, 'utf8'),
  );
  await fsAttempt('write into my own folder', () =>
    writeFile(`${accounts}/${myAccount}/planted.txt`, 'planted'),
  );
  // Artifacts (hd_outputs): the job's own folder is its one writable place.
  const outputs = `${root}/hd_outputs/accounts`;
  // A folder made (not recursively: the first refusal is the one reported), then a file.
  const plant = async (dir: string, make = true) => {
    if (make)
      await mkdir(dir).catch((error: { code?: string }) => {
        if (error.code !== 'EEXIST') throw error; // there already: try the file
      });
    await writeFile(`${dir}/planted.txt`, 'planted');
    return 'written';
  };
  await fsAttempt("write into my job's output folder", () =>
    plant(`${outputs}/${myAccount}/jobs/${myJobId}`, false),
  );
  await fsAttempt("write into another job's output folder of my account", () =>
    plant(`${outputs}/${myAccount}/jobs/${v.completedJobId}`),
  );
  await fsAttempt("write into A's output folder", () => plant(`${outputs}/${v.account}`));
  await fsAttempt('overwrite my own input', () =>
    writeFile(`${root}/${v.bucket}/${tenantKey(myAccount)}`, 'planted'),
  );
}

// --- The scheduler's LLM gateway, with this runner's own credential (HD_LLM_API_KEY): it may
// ask for chat completions for its own job and within its account's budget, nothing else.
if (env.HD_LLM_API_KEY?.startsWith('hdgw_')) {
  const gateway = new URL(env.HD_LLM_BASE_URL!);
  const { request } = await import('node:http');
  // The path sent as written (a URL, for fetch or http.request, would lose a `..`).
  const send = (path: string, body: string | Buffer, headers: Record<string, string> = {}) =>
    new Promise<string>((resolve, reject) => {
      const req = request(
        {
          host: gateway.hostname,
          port: gateway.port,
          path,
          method: 'POST',
          headers: {
            authorization: `Bearer ${env.HD_LLM_API_KEY}`,
            'content-type': 'application/json',
            ...headers,
          },
        },
        (res) => {
          const parts: Buffer[] = [];
          res.on('data', (part: Buffer) => parts.push(part));
          res.on('end', () => {
            const text = Buffer.concat(parts).toString('utf8');
            if (res.statusCode === 200) return resolve(`200 ${text.slice(0, 100)}`);
            let said = text.slice(0, 200);
            try {
              said = (JSON.parse(text) as { error: { message: string } }).error.message;
            } catch {
              // not OpenAI's error shape: the text as it came
            }
            reject(new Error(`${res.statusCode} ${said}`));
          });
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  const chat = (extra: object) =>
    JSON.stringify({ model: 'stand-in', messages: [{ role: 'user', content: 'hi' }], ...extra });
  await attempt('gateway: a chat completion with my credential', () =>
    send('/v1/chat/completions', chat({ max_tokens: 10 })),
  );
  await attempt('gateway: no credential', () =>
    send('/v1/chat/completions', chat({ max_tokens: 10 }), { authorization: '' }),
  );
  await attempt('gateway: a made-up credential', () =>
    send('/v1/chat/completions', chat({ max_tokens: 10 }), {
      authorization: `Bearer hdgw_${'A'.repeat(43)}`,
    }),
  );
  await attempt('gateway: another endpoint of the provider (/v1/files)', () =>
    send('/v1/files', 'x'),
  );
  await attempt('gateway: a path that climbs out (/v1/chat/completions/../../admin)', () =>
    send('/v1/chat/completions/../../admin', chat({})),
  );
  // The platform's key, for a model its operator never offered (a pricier one, unpriced:
  // a cost budget would count it at 0).
  await attempt('gateway: a model the scheduler does not offer', () =>
    send('/v1/chat/completions', chat({ model: 'o1-pro', max_tokens: 10 })),
  );
  // A transcription's model is a form field: the gateway must read it as the provider does.
  const form = (...parts: [string, string][]) => {
    const b = 'hdattack';
    const text = parts
      .map(
        ([disposition, value]) =>
          `--${b}\r\nContent-Disposition: form-data; ${disposition}\r\n\r\n${value}\r\n`,
      )
      .join('');
    return [
      Buffer.from(`${text}--${b}--\r\n`),
      { 'content-type': `multipart/form-data; boundary=${b}` },
    ] as const;
  };
  const file: [string, string] = ['name="file"; filename="a.mp3"', 'ID3 not really audio'];
  await attempt('gateway: a transcription naming a second model after the file', () =>
    send(
      '/v1/audio/transcriptions',
      ...form(['name="model"', 'whisper-1'], file, ['name="model"', 'o1-pro']),
    ),
  );
  await attempt('gateway: a transcription naming its model unquoted', () =>
    send('/v1/audio/transcriptions', ...form(file, ['name=model', 'o1-pro'])),
  );
  await attempt('gateway: an absurd max_tokens', () =>
    send('/v1/chat/completions', chat({ max_tokens: 1e9 })),
  );
  // Two limits: Ollama reads max_tokens only (README, model families), so a ceiling taken
  // from max_completion_tokens alone would reserve 1 token for up to 100,000.
  await attempt('gateway: max_completion_tokens 1 beside max_tokens 100000', () =>
    send('/v1/chat/completions', chat({ max_completion_tokens: 1, max_tokens: 100_000 })),
  );
  // vLLM's request model (pydantic, lax) takes "100000" for 100000.
  await attempt('gateway: max_tokens as the string "100000"', () =>
    send('/v1/chat/completions', chat({ max_tokens: '100000' })),
  );
  // 100 choices of 50 tokens each: 5,000 output tokens, past the budget of 2,000.
  await attempt('gateway: many choices (n: 100) of a small max_tokens', () =>
    send('/v1/chat/completions', chat({ max_tokens: 50, n: 100 })),
  );
  // A streamed answer carries no usage block (unless stream_options asks): nothing to count.
  await attempt('gateway: a streamed answer, which reports no usage', () =>
    send('/v1/chat/completions', chat({ max_tokens: 10, stream: true })),
  );
  // vLLM's request model (pydantic, lax) takes "true" for true.
  await attempt('gateway: a streamed answer, asked for as "true"', () =>
    send('/v1/chat/completions', chat({ max_tokens: 10, stream: 'true' })),
  );
  await attempt('gateway: a body over its limit (17 MiB)', () =>
    send('/v1/chat/completions', Buffer.alloc(17 << 20, 0x20)),
  );
  // A provider bills tools as prompt tokens: a ceiling read from `messages` alone would
  // reserve ~10 tokens for ~3,000 (red team, test/llm-gateway-red-team.test.ts).
  await attempt(
    "gateway: the prompt in a tool's description (12,000 bytes), 'hi' as messages",
    () =>
      send(
        '/v1/chat/completions',
        chat({
          max_tokens: 10,
          tools: [{ type: 'function', function: { name: 'f', description: 'x'.repeat(12_000) } }],
        }),
      ),
  );
  // JSON.parse keeps the last of two keys, as the provider's parser does: the one checked.
  await attempt('gateway: two "model" keys, an offered one first', () =>
    send(
      '/v1/chat/completions',
      '{"model":"stand-in","model":"o1-pro","messages":[{"role":"user","content":"hi"}],"max_tokens":10}',
    ),
  );
  // Raw HTTP: each status line the gateway wrote before it closed; refused unless a 200.
  const { connect } = await import('node:net');
  const raw = (text: string) =>
    new Promise<string>((resolve, reject) => {
      const socket = connect(Number(gateway.port), gateway.hostname);
      let heard = '';
      socket.on('data', (part: Buffer) => (heard += part.toString('latin1')));
      socket.on('error', reject);
      socket.on('close', () => {
        const statuses = heard.match(/^HTTP\/1\.1 \d{3}/gm) ?? [];
        if (statuses.some((line) => line.endsWith('200'))) resolve(statuses.join('; '));
        else reject(new Error(statuses.join('; ') || 'closed without an answer'));
      });
      socket.end(text);
    });
  const head = (headers: string) =>
    `POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n${headers}\r\n`;
  const mine = `Authorization: Bearer ${env.HD_LLM_API_KEY}\r\n`;
  const smuggled = chat({ model: 'o1-pro', max_tokens: 10 });
  // Content-Length says 2; what follows is parsed as a request of its own, admitted alone.
  await attempt('gateway: a request smuggled behind a Content-Length of 2', () =>
    raw(
      `${head(`${mine}Content-Length: 2\r\n`)}{}${head(`Content-Length: ${smuggled.length}\r\n`)}${smuggled}`,
    ),
  );
  await attempt('gateway: Transfer-Encoding chunked and a Content-Length both', () =>
    raw(
      `${head(`${mine}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n`)}2\r\n{}\r\n0\r\n\r\n`,
    ),
  );
}

// --- Secrets in any process's environment this container can see.
await fsAttempt('read /proc/*/environ', async () => {
  const seen: Record<string, string[]> = {};
  for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
    const text = await readFile(`/proc/${pid}/environ`, 'utf8').catch(() => '');
    if (text) seen[pid] = text.split('\0').filter(Boolean);
  }
  return seen;
});
await fsAttempt('open the Docker socket', () => readFile('/var/run/docker.sock'));

// Done; stay alive so that the test can inspect the live container, until it stops us.
console.log(JSON.stringify({ done: true }));
process.on('SIGTERM', () => process.exit(0));
setInterval(() => {}, 60_000);
