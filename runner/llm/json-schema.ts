import { z } from 'zod';

type JsonSchema = Record<string, unknown>;

// Generated once per schema: every request of a job sends the same one.
const CACHE = new WeakMap<z.ZodType, JsonSchema>();

/**
 * The JSON schema sent as structured output, generated from the zod schema that later
 * validates the answer, so the two cannot drift. OpenAI's strict mode accepts a subset:
 * every object closed (`additionalProperties: false`) with all its properties required,
 * and no `$schema`; this checks that instead of discovering it as a 400 in production.
 */
export function responseJsonSchema(schema: z.ZodType): JsonSchema {
  const cached = CACHE.get(schema);
  if (cached) return cached;
  const generated = z.toJSONSchema(schema, { target: 'draft-2020-12' }) as JsonSchema;
  delete generated.$schema;
  assertStrictCompatible(generated, '$');
  CACHE.set(schema, generated);
  return generated;
}

function assertStrictCompatible(node: unknown, path: string): void {
  if (Array.isArray(node)) {
    node.forEach((item, i) => assertStrictCompatible(item, `${path}[${i}]`));
    return;
  }
  if (typeof node !== 'object' || node === null) return;
  const obj = node as JsonSchema;
  if (obj.type === 'object') {
    const properties = Object.keys((obj.properties as JsonSchema | undefined) ?? {});
    const required = new Set((obj.required as string[] | undefined) ?? []);
    const optional = properties.filter((p) => !required.has(p));
    if (obj.additionalProperties !== false || optional.length > 0) {
      throw new Error(
        `schema at ${path} is not valid for strict structured output: objects must be closed ` +
          `and every property required${optional.length ? ` (optional: ${optional.join(', ')})` : ''}; ` +
          'use .nullable() instead of .optional()',
      );
    }
  }
  for (const [key, value] of Object.entries(obj)) assertStrictCompatible(value, `${path}.${key}`);
}
