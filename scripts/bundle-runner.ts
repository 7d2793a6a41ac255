/**
 * Bundles the runner (`hd-runner run`, cli/runner-entry.ts) into one ESM file,
 * OUT_DIR/runner.mjs, which cli/main.ts loads for `run` when it lies next to it; and the
 * PDF parser's child (pdf-child.mjs, started by runner/extract/pdf-text.ts from the file
 * next to its own code). Run by `npm run build` (OUT_DIR dist/cli) and the Dockerfiles.
 *
 *   node scripts/bundle-runner.ts [OUT_DIR]
 *
 * Why: a runner is one process per job, and loading ~200 modules cost it more CPU than a
 * 200-page PDF's text (bench/RESULTS.md, issue 13). Rolldown, not a new dependency: the
 * bundler vitest's vite already brings (pinned in devDependencies).
 */
import { isAbsolute, join, resolve } from 'node:path';
import { build } from 'rolldown';

const ROOT = join(import.meta.dirname, '..');

/**
 * Left as imports from node_modules: pdf-parse (pdf.js finds its worker and data files
 * next to itself; the child process loads it), pg-native (pg's optional native binding),
 * openai (loaded only by the LLM handlers, on their first call), pino (its transports
 * start thread-stream workers from files next to themselves).
 */
export const EXTERNAL = ['pdf-parse', 'pg-native', 'openai', 'pino'];

const isExternal = (id: string) =>
  EXTERNAL.some((name) => id === name || id.startsWith(`${name}/`));

export async function bundleRunner(outDir: string): Promise<void> {
  const entries = { runner: 'cli/runner-entry.ts', 'pdf-child': 'runner/extract/pdf-child.ts' };
  // One build per entry: each file stands alone, with no chunk shared between them.
  for (const [name, input] of Object.entries(entries)) {
    await build({
      cwd: ROOT,
      input: join(ROOT, input),
      platform: 'node',
      external: (id) => !id.startsWith('.') && !isAbsolute(id) && isExternal(id),
      logLevel: 'warn',
      output: {
        file: join(outDir, `${name}.mjs`),
        format: 'esm',
        // The lazily loaded modules (handlers, pdf-text) in the same file, still evaluated
        // only when first imported.
        codeSplitting: false,
        sourcemap: true,
      },
    });
  }
}

if (import.meta.main) await bundleRunner(resolve(process.argv[2] ?? join(ROOT, 'dist', 'cli')));
