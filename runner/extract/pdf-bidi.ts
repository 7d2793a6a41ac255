/**
 * Reading order of right-to-left lines in pdf.js's text items. pdf.js puts the letters of
 * each item (a word, a run of a TJ) in logical order, but hands the items over in content
 * stream order, which for Arabic or Hebrew is usually the visual one, left to right: the
 * words of a line came back reversed (issue 13). A line with right-to-left items is put
 * in visual order by position, then in logical order as the Unicode bidi algorithm's
 * last step does: runs of left-to-right items (Latin words, numbers) keep their order,
 * the rest is reversed. poppler (`pdftotext`) orders lines the same way.
 */
export interface BidiItem {
  str: string;
  /** pdf.js's direction of the item's text. */
  dir: string;
  width: number;
  height: number;
  /** [a, b, c, d, x, y]; absent for XFA items, which are left as they are. */
  transform?: number[];
  hasEOL: boolean;
}

// Letters or digits: items without them (spaces, punctuation) take the side of their neighbours.
const STRONG = /[\p{L}\p{N}]/u;

/** The items of a page with every line that holds right-to-left text in reading order. */
export function inLogicalOrder<T extends BidiItem>(items: readonly T[]): T[] {
  const out: T[] = [];
  for (const line of linesOf(items)) out.push(...reorderLine(line));
  return out;
}

/** Consecutive items on one baseline; a line ends after an item with hasEOL. */
function linesOf<T extends BidiItem>(items: readonly T[]): T[][] {
  const lines: T[][] = [];
  let line: T[] = [];
  let baseline: number | undefined;
  for (const item of items) {
    const y = item.transform?.[5];
    const text = item.str.trim() !== '';
    if (text && y !== undefined && baseline !== undefined) {
      const tolerance = Math.max(item.height, 1) / 2;
      if (Math.abs(y - baseline) > tolerance && line.length > 0) {
        lines.push(line);
        line = [];
      }
    }
    if (text && y !== undefined) baseline = y;
    line.push(item);
    if (item.hasEOL) {
      lines.push(line);
      line = [];
      baseline = undefined;
    }
  }
  if (line.length > 0) lines.push(line);
  return lines;
}

function reorderLine<T extends BidiItem>(line: T[]): T[] {
  const words = line.filter((item) => !item.hasEOL || item.str !== '');
  const ends = line.filter((item) => item.hasEOL && item.str === '');
  const horizontal = words.every(
    (item) =>
      item.transform && Math.abs(item.transform[1]!) < 1e-6 && Math.abs(item.transform[2]!) < 1e-6,
  );
  if (!horizontal || !words.some((item) => item.dir === 'rtl' && STRONG.test(item.str))) {
    return line;
  }
  const visual = [...words].sort((a, b) => a.transform![4]! - b.transform![4]!);
  const side = visual.map((item) =>
    !STRONG.test(item.str) ? undefined : item.dir === 'rtl' ? ('R' as const) : ('L' as const),
  );
  const count = (s: 'R' | 'L') =>
    visual.reduce((n, item, i) => (side[i] === s ? n + item.str.length : n), 0);
  const base = count('R') >= count('L') ? 'R' : 'L';
  // A neutral takes the side of its neighbours where both agree, else the line's.
  const resolved = side.map((s, i) => {
    if (s) return s;
    const before = side.slice(0, i).findLast((x) => x !== undefined);
    const after = side.slice(i + 1).find((x) => x !== undefined);
    return before !== undefined && before === after ? before : base;
  });
  const runs: { side: 'R' | 'L'; items: T[] }[] = [];
  visual.forEach((item, i) => {
    const run = runs.at(-1);
    if (run && run.side === resolved[i]) run.items.push(item);
    else runs.push({ side: resolved[i]!, items: [item] });
  });
  for (const run of runs) if (run.side === 'R') run.items.reverse();
  if (base === 'R') runs.reverse();
  // The line's end stays at its end, whichever item pdf.js marked.
  const endsLine = words.some((item) => item.hasEOL);
  const logical = relayout(runs.flatMap((run) => run.items)).map((item) => ({
    ...item,
    hasEOL: false,
  }));
  if (endsLine) logical[logical.length - 1]!.hasEOL = true;
  return [...logical, ...ends];
}

/**
 * New x positions in the new order, each gap as it was between the two items on the
 * page: pdf-parse puts a tab where the next item starts far from the previous one's end,
 * which in the old positions would be between every two words of a reversed line.
 */
function relayout<T extends BidiItem>(items: readonly T[]): T[] {
  let x = Math.min(...items.map((item) => item.transform![4]!));
  return items.map((item, i) => {
    const transform = [...item.transform!];
    transform[4] = x;
    const next = items[i + 1];
    if (next) x += item.width + gapBetween(item, next);
    return { ...item, transform };
  });
}

function gapBetween(a: BidiItem, b: BidiItem): number {
  const [ax, bx] = [a.transform![4]!, b.transform![4]!];
  return Math.max(0, bx - (ax + a.width), ax - (bx + b.width));
}
