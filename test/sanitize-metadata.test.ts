import { describe, expect, it } from 'vitest';
import { flatSubset, METADATA_LIMITS, sanitizeMetadata } from '../runner/sanitize-metadata.ts';

/** Depth of nested objects/arrays: {} is 1, {a:{}} is 2. */
function depth(value: unknown): number {
  if (typeof value !== 'object' || value === null) return 0;
  const children = Object.values(value as object);
  return 1 + Math.max(0, ...children.map(depth));
}

/** Every object and array reachable from `value` (cycles followed once). */
function objectsOf(value: unknown, seen = new Set<object>()): Set<object> {
  if (typeof value === 'object' && value !== null && !seen.has(value)) {
    seen.add(value);
    for (const child of Object.values(value)) objectsOf(child, seen);
  }
  return seen;
}

/** Every string reachable from `value`, keys included. */
function stringsOf(value: unknown, out: string[] = []): string[] {
  if (typeof value === 'string') out.push(value);
  else if (typeof value === 'object' && value !== null) {
    for (const [key, child] of Object.entries(value)) {
      out.push(key);
      stringsOf(child, out);
    }
  }
  return out;
}

function nested(levels: number): Record<string, unknown> {
  let value: Record<string, unknown> = { leaf: 'bottom' };
  for (let i = 0; i < levels - 1; i++) value = { child: value };
  return value;
}

const isWellFormed = (s: string) =>
  !/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);

describe('sanitizeMetadata', () => {
  it('keeps ordinary metadata as it is', () => {
    const input = {
      region: 'DACH',
      pages: 12,
      ratio: 0.5,
      draft: false,
      owner: null,
      tags: ['a', 'b'],
      nested: { level: { deeper: [1, { x: 'y' }] } },
    };
    expect(sanitizeMetadata(input)).toEqual(input);
  });

  it('returns {} for anything that is not an object', () => {
    for (const value of [null, undefined, 1, 'text', true, ['an', 'array']]) {
      expect(sanitizeMetadata(value)).toEqual({});
    }
  });

  it(`cuts nesting below depth ${METADATA_LIMITS.maxDepth} with a marker`, () => {
    const out = sanitizeMetadata(nested(50));
    expect(depth(out)).toBe(METADATA_LIMITS.maxDepth);
    expect(JSON.stringify(out)).toContain('[truncated: too deep]');
    expect(JSON.stringify(out)).not.toContain('bottom');
    // Exactly at the limit nothing is lost.
    expect(sanitizeMetadata(nested(METADATA_LIMITS.maxDepth))).toEqual(
      nested(METADATA_LIMITS.maxDepth),
    );
  });

  it('copes with 10,000 levels of nesting (arrays too) without recursing through them', () => {
    const deepObject = JSON.parse(`${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}`);
    const deepArray = JSON.parse(`{"x":${'['.repeat(100_000)}${']'.repeat(100_000)}}`);
    expect(depth(sanitizeMetadata(deepObject))).toBe(METADATA_LIMITS.maxDepth);
    expect(sanitizeMetadata(deepArray).x).toEqual([[[[['[truncated: too deep]']]]]]);
  });

  it(`keeps the first ${METADATA_LIMITS.maxKeys} keys of an object`, () => {
    const input = Object.fromEntries(Array.from({ length: 500 }, (_, i) => [`k${i}`, i]));
    const out = sanitizeMetadata({ wide: input });
    const keys = Object.keys(out.wide as object);
    expect(keys).toHaveLength(METADATA_LIMITS.maxKeys);
    expect(keys[0]).toBe('k0');
    expect(keys.at(-1)).toBe(`k${METADATA_LIMITS.maxKeys - 1}`);
    expect(Object.keys(sanitizeMetadata(input))).toHaveLength(METADATA_LIMITS.maxKeys);
  });

  it(`keeps the first ${METADATA_LIMITS.maxArrayItems} items of an array`, () => {
    const out = sanitizeMetadata({ list: Array.from({ length: 10_000 }, (_, i) => i) });
    expect(out.list).toEqual(Array.from({ length: METADATA_LIMITS.maxArrayItems }, (_, i) => i));
  });

  it(`cuts strings to ${METADATA_LIMITS.maxStringLength} characters`, () => {
    const out = sanitizeMetadata({ text: 'x'.repeat(100_000), list: ['y'.repeat(5000)] });
    expect(out.text).toBe('x'.repeat(METADATA_LIMITS.maxStringLength));
    expect(out.list).toEqual(['y'.repeat(METADATA_LIMITS.maxStringLength)]);
  });

  it('never cuts a string between the two halves of a surrogate pair', () => {
    // 😀 is two UTF-16 units; the limit falls between them.
    const text = `${'x'.repeat(METADATA_LIMITS.maxStringLength - 1)}😀 and more`;
    const out = sanitizeMetadata({ text });
    expect(isWellFormed(out.text as string)).toBe(true);
    expect((out.text as string).length).toBeLessThanOrEqual(METADATA_LIMITS.maxStringLength);
    expect(out.text).toMatch(/^x+$/);
  });

  it('replaces NUL and unpaired surrogates, which PostgreSQL jsonb refuses, in values and keys', () => {
    const input = JSON.parse(
      '{"nul":"a\\u0000b","lone":"x\\ud83d","low":"\\udc00y","pair":"\\ud83d\\ude00","k\\u0000ey":1,"list":["\\ud800"]}',
    );
    const out = sanitizeMetadata(input);
    for (const s of stringsOf(out)) {
      expect(s).not.toContain('\u0000');
      expect(isWellFormed(s), JSON.stringify(s)).toBe(true);
    }
    expect(out.pair).toBe('😀');
    expect(out.nul).toBe('a\ufffdb');
    expect(Object.keys(out)).toHaveLength(6);
  });

  it('replaces metadata over the size cap with a truncation marker', () => {
    const huge = Object.fromEntries(
      Array.from({ length: 100 }, (_, i) => [`field${i}`, 'z'.repeat(4000)]),
    );
    const out = sanitizeMetadata(huge);
    expect(out).toEqual({ _truncated: true, _original_bytes: expect.any(Number) });
    expect(out._original_bytes).toBeGreaterThan(METADATA_LIMITS.maxBytes);
    // Just under the cap is kept whole.
    const fits = {
      text: 'z'.repeat(3000),
      more: Array.from({ length: 9 }, () => 'w'.repeat(3000)),
    };
    expect(Buffer.byteLength(JSON.stringify(fits))).toBeLessThan(METADATA_LIMITS.maxBytes);
    expect(sanitizeMetadata(fits)).toEqual(fits);
  });

  it('measures the cap in bytes, not characters', () => {
    // 9 × 4000 three-byte characters: 36,000 characters, but over 100 KB of UTF-8.
    const input = Object.fromEntries(
      Array.from({ length: 9 }, (_, i) => [`f${i}`, '€'.repeat(4000)]),
    );
    expect(sanitizeMetadata(input)).toMatchObject({ _truncated: true });
  });

  it('does not let __proto__ keys change any prototype', () => {
    const input = JSON.parse(
      '{"__proto__":{"polluted":true,"isAdmin":true},"inner":{"__proto__":{"polluted":true}},"list":[{"__proto__":{"polluted":true}}],"constructor":{"prototype":{"polluted":true}},"ok":1}',
    );
    const out = sanitizeMetadata(input);
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    expect(Object.getPrototypeOf(out.inner)).toBe(Object.prototype);
    expect(Object.getPrototypeOf((out.list as object[])[0])).toBe(Object.prototype);
    expect((out as Record<string, unknown>).polluted).toBeUndefined();
    expect((out as Record<string, unknown>).isAdmin).toBeUndefined();
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.prototype).not.toHaveProperty('polluted');
    expect(out.ok).toBe(1);
    // `constructor` is an ordinary key holding plain data.
    expect(out.constructor).toEqual({ prototype: { polluted: true } });
    expect(JSON.parse(JSON.stringify(out))).toEqual(out);
  });

  it('shares no object with its input, so changing one leaves the other alone', () => {
    const shared = { a: 1 };
    const input = { x: shared, y: [shared, { z: [1, 2] }], source_line: { line: 3 } };
    const out = sanitizeMetadata(input);
    const before = JSON.stringify(input);
    const inputObjects = objectsOf(input);
    for (const object of objectsOf(out)) expect(inputObjects.has(object)).toBe(false);
    (out.x as { a: number }).a = 99;
    ((out.y as unknown[])[1] as { z: number[] }).z.push(3);
    expect(JSON.stringify(input)).toBe(before);
  });

  it('turns a reference cycle into a finite tree', () => {
    const a: Record<string, unknown> = { name: 'a' };
    a.self = a;
    a.list = [a];
    const out = sanitizeMetadata(a);
    expect(() => JSON.stringify(out)).not.toThrow();
    expect(depth(out)).toBeLessThanOrEqual(METADATA_LIMITS.maxDepth);
  });

  it('writes non-finite numbers and values JSON has no form for as null', () => {
    const out = sanitizeMetadata({
      nan: NaN,
      inf: Infinity,
      neg: -Infinity,
      big: JSON.parse('1e999'),
      undef: undefined,
      fn: () => 1,
      bigint: 10n,
      list: [NaN, 1],
      fine: 1.5,
    });
    expect(out).toEqual({
      nan: null,
      inf: null,
      neg: null,
      big: null,
      undef: null,
      fn: null,
      bigint: null,
      list: [null, 1],
      fine: 1.5,
    });
  });

  it('keeps source_line only as a small flat subset', () => {
    const sourceLine = {
      line: 7,
      file: 'x.jsonl',
      ok: true,
      none: null,
      long: 's'.repeat(10_000),
      nested: { deep: 'dropped' },
      list: [1, 2],
      ...Object.fromEntries(Array.from({ length: 50 }, (_, i) => [`extra${i}`, i])),
    };
    const out = sanitizeMetadata({ other: 1, source_line: sourceLine });
    const kept = out.source_line as Record<string, unknown>;
    expect(kept).toMatchObject({ line: 7, file: 'x.jsonl', ok: true, none: null });
    expect(kept.long).toBe('s'.repeat(METADATA_LIMITS.maxFlatString));
    expect(kept).not.toHaveProperty('nested');
    expect(kept).not.toHaveProperty('list');
    expect(Object.keys(kept)).toHaveLength(METADATA_LIMITS.maxFlatFields);
    expect(Object.values(kept).every((v) => v === null || typeof v !== 'object')).toBe(true);
    expect(out.other).toBe(1);
  });
});

describe('flatSubset', () => {
  it('stays small whatever the keys', () => {
    // Long keys would let one "small" subset carry a megabyte.
    const input = Object.fromEntries(
      Array.from({ length: 30 }, (_, i) => [`${i}${'k'.repeat(50_000)}`, 'v'.repeat(50_000)]),
    );
    const out = flatSubset(input);
    const budget = METADATA_LIMITS.maxFlatFields * (2 * METADATA_LIMITS.maxFlatString + 10) + 10;
    expect(Buffer.byteLength(JSON.stringify(out))).toBeLessThanOrEqual(budget);
  });

  it('drops __proto__ and returns {} for non-objects', () => {
    const out = flatSubset(JSON.parse('{"__proto__":{"x":1},"a":"b"}'));
    expect(out).toEqual({ a: 'b' });
    expect(Object.getPrototypeOf(out)).toBe(Object.prototype);
    for (const value of [null, 'x', 3, [1, 2]]) expect(flatSubset(value)).toEqual({});
  });

  it('cuts strings without leaving half a surrogate pair or a NUL', () => {
    const out = flatSubset({
      cut: `${'x'.repeat(METADATA_LIMITS.maxFlatString - 1)}😀`,
      nul: 'a\u0000',
    });
    expect(isWellFormed(out.cut as string)).toBe(true);
    expect(out.nul).not.toContain('\u0000');
  });
});

describe('work bound', () => {
  it('stops copying a wide graph of shared references after a bounded number of values', () => {
    const shared: Record<string, unknown> = {};
    for (let i = 0; i < 100; i++) shared[`k${i}`] = shared; // 100^6 paths if followed naively
    // Unbounded, this would not finish within the test timeout.
    const copy = sanitizeMetadata({ root: shared });
    expect(JSON.stringify(copy)).toMatch(/truncated/);
  });
});
