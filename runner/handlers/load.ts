import type { JobType } from '../../contract/jobs.ts';
import type { Handler } from '../handler.ts';

/**
 * Imports the handler of one job type, when a runner runs a job of that type: a runner
 * loads only its own handler's modules (the import runner no pdf.js, no OpenAI client),
 * which keeps its start quick and its resident memory low. `index.ts` holds the same
 * handlers for the scheduler, which needs every type's resources.
 */
const LOADERS = {
  import_assets_jsonl: async () => (await import('./import_assets_jsonl.ts')).importAssetsJsonl,
  extract_text: async () => (await import('./extract_text.ts')).extractText,
  extract_interpretations: async () =>
    (await import('./extract_interpretations.ts')).extractInterpretations,
  text2kg: async () => (await import('./text2kg.ts')).text2kg,
  synthesize_node: async () => (await import('./synthesize_node.ts')).synthesizeNode,
} satisfies { [K in JobType]: () => Promise<Handler<K>> };

export function loadHandler(jobType: JobType): Promise<Handler<JobType>> {
  return LOADERS[jobType]() as Promise<Handler<JobType>>;
}

/**
 * Every handler's modules, loaded before a job exists (a warm runner, cli/warm-start.ts):
 * its job then starts without loading any. Libraries a handler loads on its first call
 * (the OpenAI client, pdf.js in its own process) stay unloaded.
 */
export async function preloadHandlers(): Promise<void> {
  await Promise.all(Object.values(LOADERS).map((load) => load()));
}
