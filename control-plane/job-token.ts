import { createHmac, createPrivateKey, sign, type KeyObject } from 'node:crypto';

/** The claims of a runner's job-scoped token; 00010's hd__assert_runner_job reads job_id. */
export interface JobTokenClaims {
  role: 'hd_runner';
  job_id: string;
  account_id: string;
  /** Seconds since the epoch. */
  iat: number;
  exp: number;
}

/**
 * How the scheduler signs runner tokens so that the project's PostgREST accepts them:
 * Supabase's legacy shared JWT secret (HS256), or a private key the operator imported as
 * one of the project's JWT signing keys (ES256 for P-256, RS256 for RSA), named by its kid.
 */
export type JobTokenKey =
  { kind: 'secret'; secret: string } | { kind: 'private_key'; key: KeyObject; kid: string };

/** A signing key from config: a PEM or a private JWK (JSON), as Supabase imports it. */
export function privateSigningKey(text: string, kid: string): JobTokenKey {
  const trimmed = text.trim();
  const key = trimmed.startsWith('{')
    ? createPrivateKey({ key: JSON.parse(trimmed) as never, format: 'jwk' })
    : createPrivateKey(trimmed);
  if (key.asymmetricKeyType !== 'ec' && key.asymmetricKeyType !== 'rsa')
    throw new Error(`an ${key.asymmetricKeyType ?? 'unknown'} key; use an EC P-256 or RSA key`);
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve !== 'prime256v1')
    throw new Error(`curve ${key.asymmetricKeyDetails?.namedCurve ?? '?'}; ES256 needs P-256`);
  return { kind: 'private_key', key, kid };
}

const base64url = (data: Buffer | string) => Buffer.from(data).toString('base64url');

/** A compact JWS of the claims (no library: three algorithms, one function). */
export function signJobToken(claims: JobTokenClaims, key: JobTokenKey): string {
  const alg =
    key.kind === 'secret' ? 'HS256' : key.key.asymmetricKeyType === 'ec' ? 'ES256' : 'RS256';
  const header = { alg, typ: 'JWT', ...(key.kind === 'private_key' ? { kid: key.kid } : {}) };
  const input = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`;
  const signature =
    key.kind === 'secret'
      ? createHmac('sha256', key.secret).update(input).digest()
      : sign('sha256', Buffer.from(input), { key: key.key, dsaEncoding: 'ieee-p1363' });
  return `${input}.${base64url(signature)}`;
}
