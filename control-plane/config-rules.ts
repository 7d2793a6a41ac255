import type { Config } from './config.ts';

/**
 * Settings that are each valid but wrong together, as one line naming the variable to
 * fix; undefined when the combination is fine. Called by loadConfig.
 */
export function combinationError(config: Config): string | undefined {
  const supabase = config.HD_TRANSPORT === 'supabase' || config.HD_STORAGE === 'supabase';
  const uses = [
    config.HD_TRANSPORT === 'supabase' ? 'HD_TRANSPORT=supabase' : '',
    config.HD_STORAGE === 'supabase' ? 'HD_STORAGE=supabase' : '',
  ]
    .filter(Boolean)
    .join(' and ');
  if (supabase && !config.SUPABASE_URL) {
    return `SUPABASE_URL is required for ${uses} (it is not set)`;
  }
  // A runner under a scheduler holds a job token and signed URLs instead of the key.
  const keyless =
    (config.HD_TRANSPORT !== 'supabase' || config.HD_JOB_TOKEN) &&
    (config.HD_STORAGE !== 'supabase' || config.HD_JOB_STORAGE_URLS);
  if (supabase && !config.SUPABASE_SERVICE_ROLE_KEY && !keyless) {
    return `SUPABASE_SERVICE_ROLE_KEY is required for ${uses} (it is not set)`;
  }
  if (config.HD_REALTIME && config.HD_TRANSPORT !== 'supabase') {
    return 'HD_REALTIME applies to HD_TRANSPORT=supabase only (the postgres transport wakes up by LISTEN/NOTIFY); unset it or set HD_TRANSPORT=supabase';
  }
  return undefined;
}
