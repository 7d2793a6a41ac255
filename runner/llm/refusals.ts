import type { Capabilities } from './families.ts';

/** The optional request parameters an endpoint may refuse, as they appear on the wire. */
export type OptionalParameter =
  'temperature' | 'max_tokens' | 'max_completion_tokens' | 'response_format';

/** The optional parameters a request made with `capabilities` carries. */
export function sentParameters(capabilities: Capabilities): OptionalParameter[] {
  const sent: OptionalParameter[] = [];
  if (capabilities.temperature) sent.push('temperature');
  if (capabilities.tokenLimit !== 'none') sent.push(capabilities.tokenLimit);
  if (capabilities.responseFormat !== 'prompt') sent.push('response_format');
  return sent;
}

// How servers say "I do not take this parameter": OpenAI's codes and messages
// ("Unsupported parameter: 'max_tokens' is not supported with this model", "Unsupported
// value: 'temperature' does not support 0 with this model"), pydantic-based servers such as
// vLLM ("Extra inputs are not permitted") and the free wording of others ("unknown field",
// "not allowed").
const UNSUPPORTED =
  /unsupported|not supported|does not support|not permitted|extra inputs|unrecognized|unknown (field|param|argument)|not allowed/i;
// And "not this value", which for response_format means a mode the server lacks (vLLM:
// "Input should be 'text' or 'json_object'"; LM Studio: "'response_format.type' must be
// 'json_schema'"). For a token limit it means a number out of range: an error, not a refusal.
const VALUE_REFUSED = /input should be|must be|invalid (value|type|response.?format)/i;

const MENTIONS: Record<OptionalParameter, RegExp> = {
  temperature: /\btemperature\b/i,
  max_tokens: /\bmax_tokens\b/i,
  max_completion_tokens: /\bmax_completion_tokens\b/i,
  response_format: /\bresponse_format\b|\bjson_schema\b|\bjson_object\b|\bresponse format\b/i,
};

interface ErrorShape {
  message?: unknown;
  param?: unknown;
  code?: unknown;
  detail?: unknown;
}

/**
 * Which parameter of the request a 400/422 answer refuses, read from the body as the
 * server sent it (OpenAI's `{"error": {code, param, message}}`, vLLM's older
 * `{"object": "error", "message"}`, FastAPI's `{"detail": […]}`, or plain text).
 * Undefined when the answer is not such a refusal: it then stays an error.
 */
export function refusedParameter(
  status: number | undefined,
  body: string | undefined,
  sent: readonly OptionalParameter[],
): OptionalParameter | undefined {
  if ((status !== 400 && status !== 422) || !body || sent.length === 0) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  const outer = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as ErrorShape & {
    error?: unknown;
  };
  const inner = (
    typeof outer.error === 'object' && outer.error !== null ? outer.error : outer
  ) as ErrorShape;
  const code = typeof inner.code === 'string' ? inner.code : '';
  const param = typeof inner.param === 'string' ? inner.param.split('.')[0] : undefined;
  const coded = code === 'unsupported_parameter' || code === 'unsupported_value';
  const refuses = (parameter: OptionalParameter) =>
    UNSUPPORTED.test(body) || (parameter === 'response_format' && VALUE_REFUSED.test(body));
  if (param && sent.includes(param as OptionalParameter)) {
    return coded || refuses(param as OptionalParameter) ? (param as OptionalParameter) : undefined;
  }
  // Else the parameter named first in the answer ("max_tokens … use max_completion_tokens").
  let first: { parameter: OptionalParameter; at: number } | undefined;
  for (const parameter of sent.filter(refuses)) {
    const at = body.search(MENTIONS[parameter]);
    if (at >= 0 && (!first || at < first.at)) first = { parameter, at };
  }
  return first?.parameter;
}

/**
 * The capabilities to ask again with after `parameter` was refused, or undefined when
 * there is nothing left to try. Each step gives something up for good, so a server that
 * refuses everything ends in a few requests: a refused token limit is tried under its
 * other name once, then left out; structured output steps down json_schema → json_object
 * (schema in the prompt) → prompt only; temperature is left out.
 */
export function withoutParameter(
  capabilities: Capabilities,
  parameter: OptionalParameter,
  refusedBefore: ReadonlySet<string>,
): Capabilities | undefined {
  switch (parameter) {
    case 'temperature':
      return capabilities.temperature ? { ...capabilities, temperature: false } : undefined;
    case 'max_tokens':
    case 'max_completion_tokens': {
      if (capabilities.tokenLimit !== parameter) return undefined;
      const other = parameter === 'max_tokens' ? 'max_completion_tokens' : 'max_tokens';
      return { ...capabilities, tokenLimit: refusedBefore.has(other) ? 'none' : other };
    }
    case 'response_format':
      if (capabilities.responseFormat === 'json_schema')
        return { ...capabilities, responseFormat: 'json_object' };
      if (capabilities.responseFormat === 'json_object')
        return { ...capabilities, responseFormat: 'prompt' };
      return undefined;
  }
}
