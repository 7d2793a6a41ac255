// The attacker of test/upload-grant-limit.test.ts: code that took over a runner, run INSIDE
// a runner-image container (`node -e`, plain JavaScript) with the runner's environment (its
// job token, lease token, HD_UPLOAD_GRANT_URL) and the launcher's arguments
// (`run --job-id <id>`). It begins `keys` empty artifacts of its own job through PostgREST,
// as a runner may, then asks for an upload grant `asks` times for each of them, the same key
// in a row, 8 asks at once: every grant the scheduler signs costs a Storage remove and sign.
// Then it runs the honest runner (`hd-runner run`) of the same job, which must still store
// its artifacts. Lines: {phase: 'begun'}, {phase: 'flood', …}, {phase: 'honest', exit}.

/** The script's text, with what it is given written in as constants. */
export function grantFloodScript(o: { keys: number; asks: number }): string {
  return `
const env = process.env;
const args = process.argv.slice(-3); // run --job-id <id>
const jobId = args[2];
const say = (line) => console.log(JSON.stringify(line));
const rpc = async (fn, body) => {
  const res = await fetch(env.SUPABASE_URL + '/rest/v1/rpc/' + fn, {
    method: 'POST',
    headers: {
      authorization: 'Bearer ' + env.HD_JOB_TOKEN,
      apikey: env.SUPABASE_ANON_KEY,
      'content-type': 'application/json',
    },
    body: JSON.stringify(body),
  });
  const answer = await res.json();
  if (!res.ok) throw new Error(fn + ': ' + JSON.stringify(answer));
  return answer;
};
const keys = [];
for (let i = 0; i < ${o.keys}; i++) {
  const [target] = await rpc('hd_begin_artifact', {
    p_job_id: jobId, p_lease_token: env.HD_LEASE_TOKEN,
    p_kind: 'preview', p_name: 'flood-' + i + '.txt', p_size_bytes: 0,
  });
  keys.push(target.storage_path);
}
say({ phase: 'begun', keys: keys.length });

const statuses = {};
const refusals = new Set();
const retryAfter = new Set();
const urls = new Map();
const queue = keys.flatMap((key) => Array(${o.asks}).fill(key));
async function ask(key) {
  const res = await fetch(env.HD_UPLOAD_GRANT_URL, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ job_id: jobId, lease_token: env.HD_LEASE_TOKEN, bucket: 'hd_outputs', key }),
  });
  const body = await res.json();
  statuses[res.status] = (statuses[res.status] ?? 0) + 1;
  if (res.status === 429) retryAfter.add(res.headers.get('retry-after'));
  if (body.url) urls.set(key, [...new Set([...(urls.get(key) ?? []), body.url])]);
  else refusals.add(body.error);
}
await Promise.all(Array.from({ length: 8 }, async () => {
  while (queue.length > 0) await ask(queue.shift());
}));
say({
  phase: 'flood',
  statuses,
  refusals: [...refusals],
  retryAfter: [...retryAfter],
  urlsPerKey: Math.max(0, ...[...urls.values()].map((u) => u.length)),
});

const { spawnSync } = await import('node:child_process');
const honest = spawnSync('node', ['/app/dist/cli/main.js', ...args], { stdio: 'inherit', env });
say({ phase: 'honest', exit: honest.status });
process.exit(honest.status ?? 1);
`;
}
