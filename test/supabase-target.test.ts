import { describe, expect, it } from 'vitest';
import { loadConfig } from '../control-plane/config.ts';
import { describeTarget, projectMismatch } from '../control-plane/supabase-target.ts';
import { signJwt } from './helpers/postgrest.ts';

const REF = 'abcdefghijklmnopqrst';
const OTHER = 'zyxwvutsrqponmlkjihg';
const key = (ref?: string, role = 'service_role') =>
  signJwt('s'.repeat(40), { role, ...(ref ? { ref } : {}) });
const supabase = (env: Record<string, string>) =>
  loadConfig({ HD_TRANSPORT: 'supabase', SUPABASE_SERVICE_ROLE_KEY: key(REF), ...env });

describe('which control plane a configuration points at', () => {
  it('reads the project ref from the API URL, a direct or pooled database URL, or the key', () => {
    expect(describeTarget(supabase({ SUPABASE_URL: `https://${REF}.supabase.co` }))).toMatchObject({
      transport: 'supabase',
      host: `${REF}.supabase.co`,
      projectRef: REF,
      keyRole: 'service_role',
    });
    const direct = loadConfig({
      HD_DATABASE_URL: `postgres://postgres:pw@db.${REF}.supabase.co:5432/postgres`,
    });
    expect(describeTarget(direct)).toMatchObject({ projectRef: REF, database: 'postgres' });
    const pooled = loadConfig({
      HD_DATABASE_URL: `postgres://postgres.${REF}:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres`,
    });
    expect(describeTarget(pooled).projectRef).toBe(REF);
    const custom = supabase({ SUPABASE_URL: 'https://api.example.com' });
    expect(describeTarget(custom)).toMatchObject({ projectRef: REF, keyProjectRef: REF });
    const local = supabase({
      SUPABASE_URL: 'http://127.0.0.1:54321',
      SUPABASE_SERVICE_ROLE_KEY: key(),
    });
    expect(describeTarget(local).projectRef).toBe('local');
  });

  it('names the mismatch: expected ref, key of another project, files on another project', () => {
    expect(
      projectMismatch(
        supabase({ SUPABASE_URL: 'http://localhost:54321', HD_EXPECTED_PROJECT_REF: REF }),
      ),
    ).toBe(
      `HD_EXPECTED_PROJECT_REF is ${REF} but this worker talks to localhost:54321 (project local): the app and the worker would use different queues`,
    );
    expect(
      projectMismatch(
        supabase({ SUPABASE_URL: `https://${REF}.supabase.co`, HD_EXPECTED_PROJECT_REF: REF }),
      ),
    ).toBeUndefined();
    expect(
      projectMismatch(
        supabase({
          SUPABASE_URL: `https://${REF}.supabase.co`,
          SUPABASE_SERVICE_ROLE_KEY: key(OTHER),
        }),
      ),
    ).toMatch(new RegExp(`^SUPABASE_SERVICE_ROLE_KEY belongs to project ${OTHER}`));
    const split = loadConfig({
      HD_DATABASE_URL: `postgres://postgres:pw@db.${REF}.supabase.co:5432/postgres`,
      HD_STORAGE: 'supabase',
      SUPABASE_URL: `https://${OTHER}.supabase.co`,
      SUPABASE_SERVICE_ROLE_KEY: key(),
    });
    expect(projectMismatch(split)).toMatch(
      /files go to SUPABASE_URL of project zyxwvutsrqponmlkjihg$/,
    );
  });

  it('refuses a malformed expected ref at start', () => {
    expect(() => loadConfig({ HD_EXPECTED_PROJECT_REF: 'prod' })).toThrow(
      /^invalid configuration: HD_EXPECTED_PROJECT_REF: must be a 20-character project ref or local \(got "prod"\)$/,
    );
  });
});
