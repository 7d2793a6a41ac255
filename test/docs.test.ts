import { readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { COMMANDS } from '../cli/commands/index.ts';
import { configSchema } from '../control-plane/config.ts';
import { configReference, REFERENCE_FILE } from '../scripts/config-reference.ts';

it('docs/configuration.md is generated from the current config schema', () => {
  const reference = configReference();
  for (const name of Object.keys(configSchema.shape))
    expect(reference, name).toContain(`| \`${name}\` |`);
  expect(
    readFileSync(REFERENCE_FILE, 'utf8'),
    'run: node scripts/config-reference.ts --write',
  ).toBe(reference);
});

it('README names every command and opens with the two commands that work on a fresh machine', () => {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const commands = COMMANDS.map((c) => c.name);
  expect(commands.length).toBeGreaterThanOrEqual(8);
  for (const name of commands) expect(readme, name).toMatch(new RegExp(`hd-runner ${name}\\b`));
  const firstBlock = readme.slice(
    readme.indexOf('```sh'),
    readme.indexOf('```', readme.indexOf('```sh') + 5),
  );
  expect(firstBlock).toContain('npm ci && npm run demo');
  expect(firstBlock).toContain('npm test');
});
