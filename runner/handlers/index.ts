import { isJobType, type JobType } from '../../contract/jobs.ts';
import type { Handler, Resources } from '../handler.ts';
import { extractInterpretations } from './extract_interpretations.ts';
import { extractText } from './extract_text.ts';
import { importAssetsJsonl } from './import_assets_jsonl.ts';
import { synthesizeNode } from './synthesize_node.ts';
import { text2kg } from './text2kg.ts';

/**
 * One handler per job type; a job type without a handler is a compile error. The
 * scheduler reads their resources here; a runner imports only its own (load.ts).
 */
export const HANDLERS = {
  import_assets_jsonl: importAssetsJsonl,
  extract_text: extractText,
  extract_interpretations: extractInterpretations,
  text2kg,
  synthesize_node: synthesizeNode,
} satisfies { [K in JobType]: Handler<K> };

/** Resources assumed for a job type without a handler: its runner fails it at once. */
const UNKNOWN_TYPE_RESOURCES: Resources = { gpu: false, memoryMb: 256, cpus: 1, timeoutMs: 60_000 };

/** What a job type declares it needs (its handler's resources). */
export function handlerResources(jobType: string): Resources {
  return isJobType(jobType) ? HANDLERS[jobType].resources : UNKNOWN_TYPE_RESOURCES;
}
