import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The hd-runner package folder, whether running from source or from dist/. */
export const PACKAGE_ROOT = findPackageRoot(dirname(fileURLToPath(import.meta.url)));

function findPackageRoot(start: string): string {
  for (let dir = start; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'supabase'))) return dir;
    if (dirname(dir) === dir) throw new Error(`hd-runner package root not found above ${start}`);
  }
}

export const MIGRATIONS_DIR = join(PACKAGE_ROOT, 'supabase', 'migrations');
