import { randomBytes } from 'node:crypto';
import { toHdError } from '../contract/errors.ts';
import {
  JOB_INPUTS,
  PAYLOAD_SCHEMAS,
  isJobType,
  payloadObject,
  type ClaimedJob,
} from '../contract/jobs.ts';
import { assertBucketName, assertTenantPath } from '../contract/storage-paths.ts';
import { ConfigError, configToEnv, type Config } from '../control-plane/config.ts';
import type { ControlPlaneDb } from '../control-plane/db/transport.ts';
import { privateSigningKey, signJobToken, type JobTokenKey } from '../control-plane/job-token.ts';
import { signedUrlKey } from '../control-plane/storage/signed-urls.ts';
import type { Resources } from '../runner/handler.ts';
import { llmSettings } from '../runner/llm/client.ts';
import { providerHint } from '../runner/llm/families.ts';
import type { WarmLogin } from './launcher.ts';
import type { LlmGateway } from './llm-gateway/server.ts';

/** Makes signed download URLs (Supabase Storage `createSignedUrls`); absent objects are left out. */
export type UrlSigner = (
  bucket: string,
  keys: readonly string[],
  expiresInSeconds: number,
) => Promise<Map<string, string>>;

// Settings only the scheduler reads: they stay out of runners.
const SCHEDULER_ONLY =
  /^HD_(DOCKER_|GPU|LAUNCHER$|SLOTS$|JOB_TYPES$|POLL_INTERVAL_MS$|REAP_INTERVAL_MS$|RECONCILE_INTERVAL_MS$|SHUTDOWN_GRACE_MS$|RUNNER_|LLM_GATEWAY|LLM_LIMITS$|LLM_PRICES$|LLM_DAILY_TOKEN_BUDGET$|URL_INPUT_|UPLOAD_GRANT_(ADDRESS|RATE|BURST)$|WARM_)/;
// The provider keys the LLM gateway holds for runners (scheduler/llm-gateway/).
const GATEWAY_KEYS = ['HD_LLM_API_KEY', 'HD_TRANSCRIBE_API_KEY'];
// The scheduler's own credentials: a runner with a scoped credential never sees them.
const SCHEDULER_SECRETS = new Set([
  'HD_DATABASE_URL',
  'HD_LISTEN_DATABASE_URL',
  'SUPABASE_SERVICE_ROLE_KEY',
]);
// A token outlives the job's time limit by this much (the launcher's kill backstop, clocks).
const TOKEN_GRACE_SECONDS = 120;
// Past this the job's signed URLs would not fit in one environment variable (128 KiB).
const MAX_SIGNED_URLS_BYTES = 100_000;

/**
 * What each runner is given: the configuration it needs, and a credential that reaches
 * its own job and nothing else (docs/containers.md, "Trust boundary"):
 * - postgres transport: a login role made for the job (hd_create_job_role: member of
 *   hd_runner, lease-checked functions of this job only), or a shared HD_RUNNER_DATABASE_URL;
 * - supabase transport: a JWT signed here per job (role hd_runner, claims job_id and
 *   account_id, expiring with the job's time limit), which PostgREST verifies;
 * - supabase storage: a signed URL per input object of the job, and HD_UPLOAD_GRANT_URL
 *   where the scheduler signs upload URLs for the job's own output prefix (upload-grants.ts);
 * - fs storage: the launcher mounts only the job's account folder, read-only, and its own
 *   output folder writable.
 * With HD_RUNNER_CREDENTIALS=operator runners get the scheduler's own settings instead.
 * With the LLM gateway, runners reach the model endpoints through it with a credential of
 * their job's lease, never the provider's key (in either mode).
 */
type GatewayAccess = Pick<LlmGateway, 'url' | 'issue' | 'dropEnded'>;
type AccessDb = Pick<
  ControlPlaneDb,
  | 'listDocumentFiles'
  | 'createJobRole'
  | 'dropJobRoles'
  | 'createWarmRole'
  | 'bindWarmRole'
  | 'dropWarmRole'
>;

/**
 * A warm runner's login that is a role of its own (postgres transport, a role per job):
 * it reaches no job until `envFor` binds it to the one its runner is handed (migration
 * 00032); dropped by `release` if never bound.
 */
class WarmRole implements WarmLogin {
  readonly role: string;
  readonly env: Record<string, string>;
  /** Handed to a job (being bound, or bound): its job's end drops it, not `release`. */
  taken = false;
  readonly #db: Pick<AccessDb, 'dropWarmRole'>;

  constructor(url: URL, db: Pick<AccessDb, 'dropWarmRole'>) {
    this.role = url.username;
    this.env = { HD_DATABASE_URL: url.toString() };
    this.#db = db;
  }

  async release(): Promise<void> {
    if (!this.taken) await this.#db.dropWarmRole(this.role);
  }
}

export class RunnerAccess {
  readonly #db: AccessDb;
  /** The database runners reach with a role of their own job (postgres transport). */
  readonly #jobRoleUrl: string | undefined;
  readonly #tokenKey: JobTokenKey | undefined;
  readonly #signUrls: UrlSigner | undefined;
  readonly #gateway: GatewayAccess | undefined;
  /** Which model endpoints go through the gateway: the credential replaces their keys. */
  readonly #gatewayKeys: string[] = [];
  /** Every runner's environment before its job's own part. */
  readonly baseEnv: Record<string, string>;

  constructor(
    config: Config,
    db: AccessDb,
    signUrls?: UrlSigner | undefined,
    gateway?: GatewayAccess | undefined,
  ) {
    this.#db = db;
    const scoped = config.HD_RUNNER_CREDENTIALS === 'scoped';
    this.baseEnv = Object.fromEntries(
      Object.entries(configToEnv(config)).filter(
        ([key]) =>
          !SCHEDULER_ONLY.test(key) &&
          key !== 'SUPABASE_JWT_SECRET' &&
          !(scoped && SCHEDULER_SECRETS.has(key)) &&
          !(gateway && GATEWAY_KEYS.includes(key)),
      ),
    );
    if (gateway) {
      this.#gateway = gateway;
      const provider = llmSettings(config).baseURL;
      if (provider) {
        this.baseEnv.HD_LLM_BASE_URL = gateway.url;
        // The model-family table reads the provider's URL (runner/llm/families.ts).
        const hint = providerHint(provider);
        if (hint) this.baseEnv.HD_LLM_PROVIDER_URL = hint;
        this.#gatewayKeys.push('HD_LLM_API_KEY');
      }
      if (config.HD_TRANSCRIBE_BASE_URL) {
        this.baseEnv.HD_TRANSCRIBE_BASE_URL = gateway.url;
        this.#gatewayKeys.push('HD_TRANSCRIBE_API_KEY');
      }
    }
    if (!scoped) return;
    if (config.HD_TRANSPORT === 'postgres') {
      // A shared hd_runner login where the owner cannot create roles; otherwise a role per job.
      if (config.HD_RUNNER_DATABASE_URL)
        this.baseEnv.HD_DATABASE_URL = config.HD_RUNNER_DATABASE_URL;
      else if (config.HD_DATABASE_URL) this.#jobRoleUrl = config.HD_DATABASE_URL;
      else
        throw new ConfigError(
          'invalid configuration: HD_DATABASE_URL is required for the postgres transport (it is not set)',
        );
    } else {
      this.#tokenKey = tokenKey(config);
    }
    if (config.HD_STORAGE === 'supabase') {
      if (!signUrls) throw new Error('RunnerAccess: supabase storage needs a URL signer');
      this.#signUrls = signUrls;
    }
  }

  /**
   * A login for a warm runner, valid for `validForMs` (its idle limit: binding extends
   * it to its job's); undefined where runners get no role of their own (the runner then
   * connects with what its launcher sends it, or with its job's credential).
   */
  async warmLogin(validForMs: number): Promise<WarmLogin | undefined> {
    if (!this.#jobRoleUrl) return undefined;
    const validUntil = new Date(Date.now() + validForMs);
    const url = await roleLogin(this.#jobRoleUrl, (password) =>
      this.#db.createWarmRole(password, validUntil),
    );
    return new WarmRole(url, this.#db);
  }

  /**
   * The job's own environment: its credential, and its storage grants. Given a warm
   * runner's login (`warmLogin`), that login is bound to the job instead of a role made.
   */
  async envFor(
    job: ClaimedJob,
    resources: Resources,
    warm?: WarmLogin,
  ): Promise<Record<string, string>> {
    const env: Record<string, string> = {};
    const now = Math.floor(Date.now() / 1000);
    const lifetime = Math.ceil(resources.timeoutMs / 1000) + TOKEN_GRACE_SECONDS;
    if (this.#tokenKey)
      env.HD_JOB_TOKEN = signJobToken(
        {
          role: 'hd_runner',
          job_id: job.id,
          account_id: job.account_id,
          iat: now,
          exp: now + lifetime,
        },
        this.#tokenKey,
      );
    const validUntil = new Date((now + lifetime) * 1000);
    const jobRoleUrl = this.#jobRoleUrl;
    // A warm runner whose role is bound is logged in already; any other gets a role made.
    const loggedIn =
      jobRoleUrl &&
      warm instanceof WarmRole &&
      !warm.taken &&
      (await this.#bind(warm, job, validUntil));
    if (jobRoleUrl && !loggedIn) {
      const url = await roleLogin(jobRoleUrl, (password) =>
        this.#db.createJobRole(job.id, job.lease_token, password, validUntil),
      );
      env.HD_DATABASE_URL = url.toString();
    }
    if (this.#signUrls) env.HD_JOB_STORAGE_URLS = await this.#storageGrants(job, lifetime);
    if (this.#gateway && this.#gatewayKeys.length > 0) {
      const credential = await this.#gateway.issue(job, validUntil);
      for (const key of this.#gatewayKeys) env[key] = credential;
    }
    return env;
  }

  /**
   * Binds a warm runner's role to its job; false when it could not be (its runner ended
   * and the role was dropped meanwhile): the job then gets a role of its own, which a
   * warm runner still alive logs in with instead, so the job is not failed for it.
   */
  async #bind(warm: WarmRole, job: ClaimedJob, validUntil: Date): Promise<boolean> {
    warm.taken = true; // before the call: a runner ending meanwhile must not drop it
    try {
      await this.#db.bindWarmRole(warm.role, job.id, job.lease_token, validUntil);
      return true;
    } catch (error) {
      await this.#db.dropWarmRole(warm.role).catch(() => {});
      const { code } = toHdError(error);
      if (code === 'LEASE_LOST' || code === 'CANCELLED' || code === 'DATABASE_UNAVAILABLE')
        throw error;
      return false;
    }
  }

  /** After the runner ended: its job role and gateway credential, and any left by runners that died, go. */
  async release(job?: ClaimedJob): Promise<void> {
    if (this.#jobRoleUrl) await this.#db.dropJobRoles();
    await this.#gateway?.dropEnded(job);
  }

  /** Signed URLs for the objects the job reads, each checked to lie in the job's account. */
  async #storageGrants(job: ClaimedJob, lifetime: number): Promise<string> {
    const wanted = new Map<string, string[]>();
    for (const { bucket, key } of await this.#inputObjects(job)) {
      let checked: [string, string];
      try {
        checked = [assertBucketName(bucket), assertTenantPath(job.account_id, key)];
      } catch {
        continue; // the runner refuses the same path itself, with the reason
      }
      wanted.set(checked[0], [...(wanted.get(checked[0]) ?? []), checked[1]]);
    }
    const urls: Record<string, string> = {};
    for (const [bucket, keys] of wanted)
      for (const [key, url] of await this.#signUrls!(bucket, keys, lifetime))
        urls[signedUrlKey(bucket, key)] = url;
    const json = JSON.stringify(urls);
    if (json.length > MAX_SIGNED_URLS_BYTES)
      throw new Error(
        `job ${job.id} reads ${Object.keys(urls).length} objects, more signed URLs than one runner environment holds`,
      );
    return json;
  }

  async #inputObjects(job: ClaimedJob): Promise<{ bucket: string; key: string }[]> {
    if (!isJobType(job.job_type)) return [];
    switch (JOB_INPUTS[job.job_type]) {
      case 'payload_object': {
        const payload = PAYLOAD_SCHEMAS.import_assets_jsonl.safeParse(job.debug ?? {});
        const object = payload.success ? payloadObject(payload.data) : undefined;
        return object ? [object] : [];
      }
      case 'document_files':
        return (await this.#db.listDocumentFiles(job.id, job.lease_token)).map((f) => ({
          bucket: f.bucket,
          key: f.storage_path,
        }));
      case 'none':
        return [];
    }
  }
}

/** The database URL of a login role `makeRole` makes with a fresh password. */
async function roleLogin(databaseUrl: string, makeRole: (password: string) => Promise<string>) {
  const password = randomBytes(24).toString('base64url');
  const url = new URL(databaseUrl);
  url.username = await makeRole(password);
  url.password = password;
  return url;
}

function tokenKey(config: Config): JobTokenKey {
  if (config.HD_RUNNER_JWT_PRIVATE_KEY) {
    if (!config.HD_RUNNER_JWT_KID)
      throw new ConfigError(
        'invalid configuration: HD_RUNNER_JWT_KID is required with HD_RUNNER_JWT_PRIVATE_KEY: the key id Supabase shows for the imported key (it is not set)',
      );
    try {
      return privateSigningKey(config.HD_RUNNER_JWT_PRIVATE_KEY, config.HD_RUNNER_JWT_KID);
    } catch (error) {
      throw new ConfigError(
        `invalid configuration: HD_RUNNER_JWT_PRIVATE_KEY: not a usable signing key: ${(error as Error).message}`,
      );
    }
  }
  if (config.SUPABASE_JWT_SECRET) return { kind: 'secret', secret: config.SUPABASE_JWT_SECRET };
  throw new ConfigError(
    'invalid configuration: SUPABASE_JWT_SECRET or HD_RUNNER_JWT_PRIVATE_KEY is required: the scheduler signs each runner a token for its one job, never handing out the service-role key (see docs/containers.md; HD_RUNNER_CREDENTIALS=operator opts out) (neither is set)',
  );
}
