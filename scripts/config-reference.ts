import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../control-plane/package-root.ts';

/**
 * The configuration reference (docs/configuration.md), generated from the one-line
 * comments of control-plane/config.ts so the docs cannot drift from the code. A test
 * fails when the committed file is stale: `node scripts/config-reference.ts --write`.
 */
export function configReference(): string {
  const source = readFileSync(join(PACKAGE_ROOT, 'control-plane', 'config.ts'), 'utf8');
  const schema = source.slice(source.indexOf('export const configSchema'));
  const rows: string[] = [];
  for (const match of schema.matchAll(/^ {2}\/\*\* (.+?) \*\/\n {2}([A-Z][A-Z0-9_]+):/gm)) {
    const [, comment, name] = match;
    const found = /^(.*?)\s*(?:Default:? (.+?)\.?|No default\.?)?$/.exec(comment!)!;
    const cell = (s: string) => s.replace(/\|/g, '\\|').replace(/</g, '&lt;');
    const text = cell(found[1]!.replace(/\.$/, ''));
    const fallback = cell(found[2] ?? '—');
    rows.push(`| \`${name}\` | ${fallback} | ${text} |`);
  }
  return `# Configuration reference

Generated from \`control-plane/config.ts\` by \`node scripts/config-reference.ts --write\`;
do not edit by hand. Every variable is read once at start-up and validated; a wrong value
stops the program with one line naming it.

| variable | default | meaning |
| --- | --- | --- |
${rows.join('\n')}
`;
}

export const REFERENCE_FILE = join(PACKAGE_ROOT, 'docs', 'configuration.md');

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!)) {
  if (process.argv.includes('--write')) writeFileSync(REFERENCE_FILE, configReference());
  else process.stdout.write(configReference());
}
