// Preload for benches (node --import ./bench/report-rss.mjs …): prints the process's peak
// RSS when it exits, so a bench can measure a runner in its own process. Plain JavaScript:
// a .ts preload made Node load its TypeScript stripper into every measured runner (~20 ms
// of CPU, the runner's bundle has none).
import process from 'node:process';

process.on('exit', () => {
  process.stderr.write(`BENCH_MAX_RSS_KB=${process.resourceUsage().maxRSS}\n`);
});
