import { createRequire } from 'node:module';
import type * as SupabaseJs from '@supabase/supabase-js';
import type { SupabaseClient } from '@supabase/supabase-js';

// supabase-js is loaded with the first client (require is synchronous): a worker on the
// postgres transport and fs storage never loads it.
const require = createRequire(import.meta.url);

export interface ServiceClientOptions {
  url: string;
  /**
   * The key sent as `apikey`: the service-role key (a JWT, or an `sb_secret_…` key), or,
   * with `accessToken`, the project's public anon key. Never logged.
   */
  serviceRoleKey: string;
  /** A runner's job-scoped JWT, sent as the bearer token instead of the key. */
  accessToken?: string | undefined;
  /**
   * Longest a whole request may take, in ms; undefined for none (storage transfers of
   * large files). A request cut short fails as DATABASE_UNAVAILABLE and is retried by
   * its caller's rules; the queue's lease fencing makes a late duplicate harmless.
   */
  timeoutMs?: number | undefined;
}

/**
 * A supabase-js client acting as the service role: no session, no token refresh, no
 * storage of anything on disk. One per transport or storage backend.
 */
export function createServiceClient(options: ServiceClientOptions): SupabaseClient {
  const { timeoutMs } = options;
  const timedFetch: typeof fetch | undefined =
    timeoutMs === undefined
      ? undefined
      : (input, init) => {
          const timeout = AbortSignal.timeout(timeoutMs);
          const signal = init?.signal ? AbortSignal.any([init.signal, timeout]) : timeout;
          return fetch(input, { ...init, signal });
        };
  const { createClient } = require('@supabase/supabase-js') as typeof SupabaseJs;
  return createClient(options.url, options.serviceRoleKey, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    global: {
      headers: {
        'x-client-info': 'hd-runner',
        ...(options.accessToken ? { authorization: `Bearer ${options.accessToken}` } : {}),
      },
      ...(timedFetch ? { fetch: timedFetch } : {}),
    },
  });
}
