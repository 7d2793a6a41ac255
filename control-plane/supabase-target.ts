import type { Config } from './config.ts';

/** Which control plane a configuration points at, without any secret. */
export interface ControlPlaneTarget {
  transport: Config['HD_TRANSPORT'];
  /** host[:port] of the database or of the Supabase API. */
  host: string | undefined;
  /** Database name (postgres transport). */
  database: string | undefined;
  /** Supabase project ref, `local` for a Supabase/PostgreSQL on this machine, else undefined. */
  projectRef: string | undefined;
  /** Project ref named inside the service-role key (legacy JWT keys carry one). */
  keyProjectRef: string | undefined;
  /** Role named inside the service-role key (`service_role` expected). */
  keyRole: string | undefined;
}

const LOCAL_HOSTS = new Set(['localhost', '127.0.0.1', '[::1]', '::1', '0.0.0.0']);
const LOCAL_HOST_NAMES = new Set(['host.docker.internal', 'kong', 'supabase_kong', 'db']);
// <ref>.supabase.co (API) and db.<ref>.supabase.co (direct database).
const SUPABASE_HOST = /^(?:db\.)?([a-z0-9]{20})\.supabase\.(?:co|in|net)$/;
// Supavisor pooler: user `postgres.<ref>` at aws-0-<region>.pooler.supabase.com.
const POOLER_USER = /^[a-z_]+\.([a-z0-9]{20})$/;

function refFromUrl(value: string | undefined): { host?: string; ref?: string; db?: string } {
  if (!value) return {};
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return {};
  }
  const hostname = url.hostname.toLowerCase();
  const db = url.pathname.replace(/^\//, '') || undefined;
  const local = LOCAL_HOSTS.has(hostname) || LOCAL_HOST_NAMES.has(hostname);
  const ref = local
    ? 'local'
    : (SUPABASE_HOST.exec(hostname)?.[1] ??
      POOLER_USER.exec(decodeURIComponent(url.username))?.[1]);
  return { host: url.host, ...(ref ? { ref } : {}), ...(db ? { db } : {}) };
}

/** The claims of a JWT, unverified (only to read `ref` and `role`); undefined if not a JWT. */
export function jwtClaims(token: string | undefined): Record<string, unknown> | undefined {
  const part = token?.split('.')[1];
  if (!part) return undefined;
  try {
    const claims: unknown = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
    return claims && typeof claims === 'object' ? (claims as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

export function describeTarget(config: Config): ControlPlaneTarget {
  const claims = jwtClaims(config.SUPABASE_SERVICE_ROLE_KEY);
  const keyProjectRef = typeof claims?.ref === 'string' ? claims.ref : undefined;
  const keyRole = typeof claims?.role === 'string' ? claims.role : undefined;
  if (config.HD_TRANSPORT === 'supabase') {
    const api = refFromUrl(config.SUPABASE_URL);
    return {
      transport: 'supabase',
      host: api.host,
      database: undefined,
      projectRef: api.ref ?? keyProjectRef,
      keyProjectRef,
      keyRole,
    };
  }
  const db = refFromUrl(config.HD_DATABASE_URL);
  return {
    transport: 'postgres',
    host: db.host,
    database: db.db,
    projectRef: db.ref,
    keyProjectRef,
    keyRole,
  };
}

/**
 * Why this configuration points at another control plane than the operator expects
 * (the app writing to one Supabase while the worker polls another), or undefined.
 */
export function projectMismatch(config: Config, target = describeTarget(config)) {
  const expected = config.HD_EXPECTED_PROJECT_REF;
  const where = `${target.host ?? '?'} (project ${target.projectRef ?? 'unknown'})`;
  if (expected && target.projectRef !== expected) {
    return `HD_EXPECTED_PROJECT_REF is ${expected} but this worker talks to ${where}: the app and the worker would use different queues`;
  }
  if (target.keyProjectRef && target.projectRef && target.projectRef !== 'local') {
    if (target.keyProjectRef !== target.projectRef) {
      return `SUPABASE_SERVICE_ROLE_KEY belongs to project ${target.keyProjectRef} but the worker talks to ${where}`;
    }
  }
  if (target.transport === 'postgres' && config.HD_STORAGE === 'supabase') {
    const storage = refFromUrl(config.SUPABASE_URL).ref;
    if (storage && target.projectRef && storage !== target.projectRef) {
      return `the queue is on ${where} but files go to SUPABASE_URL of project ${storage}`;
    }
  }
  return undefined;
}
