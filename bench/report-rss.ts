// Preload for benches (node --import ./bench/report-rss.ts …): prints the process's peak
// RSS when it exits, so a bench can measure a runner in its own process.
process.on('exit', () => {
  process.stderr.write(`BENCH_MAX_RSS_KB=${process.resourceUsage().maxRSS}\n`);
});
