// Runs every bench, each in its own Node process so that each reports its own peak RSS
// and starts its own PostgreSQL. Usage: npm run bench (or node bench/run-all.ts)
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { machineLine } from './lib.ts';

const BENCHES = [
  'queue.ts',
  'fairness.ts',
  'import.ts',
  'dispatch.ts',
  'extract.ts',
  'llm-gateway.ts',
];

console.log(`# hd-runner benchmarks — ${new Date().toISOString()} — ${machineLine()}`);
let failed = 0;
for (const bench of BENCHES) {
  const file = join(import.meta.dirname, bench);
  console.log(`\n$ node bench/${bench}`);
  const started = performance.now();
  const result = spawnSync(process.execPath, [file], { stdio: 'inherit' });
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  if (result.status !== 0) {
    failed += 1;
    console.error(
      `bench/${bench} failed (exit ${result.status ?? result.signal}) after ${seconds} s`,
    );
  } else {
    console.log(`(bench/${bench} took ${seconds} s)`);
  }
}
process.exitCode = failed > 0 ? 1 : 0;
