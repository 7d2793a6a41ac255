import type { JobType } from '../../contract/jobs.ts';
import type { Handler } from '../handler.ts';
import { importAssetsJsonl } from './import_assets_jsonl.ts';

/** One handler per job type; a job type without a handler is a compile error. */
export const HANDLERS = {
  import_assets_jsonl: importAssetsJsonl,
} satisfies { [K in JobType]: Handler<K> };
