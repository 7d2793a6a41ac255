// Preload for benches (node --import ./bench/report-rss.mjs …): prints the process's peak
// RSS when it exits, so a bench can measure a runner in its own process; and its CPU
// time in clock ticks, its own and its waited-for children's (pdftotext, pdfinfo), from
// /proc/self/stat, for runners started by a launcher rather than under GNU time. Plain
// JavaScript: a .ts preload made Node load its TypeScript stripper into every measured
// runner (~20 ms of CPU, the runner's bundle has none).
import { readFileSync } from 'node:fs';
import process from 'node:process';

process.on('exit', () => {
  let ticks = '';
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8');
    // utime, stime, cutime, cstime: fields 14-17, counted after the parenthesised name.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    ticks = ` BENCH_CPU_TICKS=${fields.slice(11, 15).reduce((sum, f) => sum + Number(f), 0)}`;
  } catch {
    // not Linux
  }
  process.stderr.write(`BENCH_MAX_RSS_KB=${process.resourceUsage().maxRSS}${ticks}\n`);
});
