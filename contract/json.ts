/** The value of a JSON text, or undefined where it is none (for a zod safeParse to judge). */
export function jsonOrUndefined(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
