import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { responseJsonSchema } from '../runner/llm/json-schema.ts';
import { INTERPRETATION_PROMPT, SYNTHESIS_PROMPT } from '../runner/llm/prompts.ts';
import { loadConfig } from '../control-plane/config.ts';
import { createLogger } from '../control-plane/logger.ts';
import { LlmClient, llmSettings } from '../runner/llm/client.ts';
import { STAND_IN_MODEL, standInAnswer, startStandInModel } from '../runner/llm/stand-in-model.ts';

/**
 * What each prompt version was when it was recorded. Stored rows name the prompt version
 * that made them, so a prompt that changes under the same version would mix old and new
 * output: change a prompt, bump its version, and record the new fingerprint here.
 */
const FINGERPRINTS: Record<string, string> = {
  'interpretations/v1': '7602056b80fcd1c9e4cd94c6f43d50e2a9a7bca449bfe93bcd40411cf7ed9337',
  'synthesis/v1': '63103069fddcb06646eeedfed5426114044f54ec4e3841c1b393eb7eadd88604',
};

function fingerprint(prompt: typeof INTERPRETATION_PROMPT | typeof SYNTHESIS_PROMPT): string {
  const sample =
    prompt === INTERPRETATION_PROMPT
      ? INTERPRETATION_PROMPT.user({ content: 'TEXT', page_start: 1, page_end: 2 })
      : SYNTHESIS_PROMPT.user({
          label: 'L',
          node_type: 't',
          relations: [
            {
              direction: 'out',
              relation: 'r',
              other_label: 'O',
              other_type: 'u',
              evidence_count: 2,
              quotes: ['q'],
            },
          ],
          previous: null,
        });
  return createHash('sha256')
    .update(JSON.stringify([prompt.system, sample, responseJsonSchema(prompt.schema)]))
    .digest('hex');
}

describe('prompts', () => {
  it.each([INTERPRETATION_PROMPT, SYNTHESIS_PROMPT])(
    '$version has not changed under its version',
    (prompt) => {
      expect(
        fingerprint(prompt),
        `prompt ${prompt.version} changed: bump its version and record the new fingerprint`,
      ).toBe(FINGERPRINTS[prompt.version]);
    },
  );

  it('are answered by the stand-in model in their own schemas', () => {
    const interpretation = standInAnswer({
      response_format: { type: 'json_schema', json_schema: { name: INTERPRETATION_PROMPT.task } },
      messages: [
        { role: 'system', content: INTERPRETATION_PROMPT.system },
        {
          role: 'user',
          content: INTERPRETATION_PROMPT.user({
            content: 'Die Müller AG beliefert Öko Bau. Mitarbeiter müssen Helme tragen.',
            page_start: null,
            page_end: null,
          }),
        },
      ],
    });
    const parsed = INTERPRETATION_PROMPT.schema.parse(JSON.parse(interpretation));
    expect(parsed.rules).toEqual(['Mitarbeiter müssen Helme tragen.']);
    expect(parsed.relations[0]).toMatchObject({ source: 'Müller AG', target: 'Öko Bau' });
    const synthesis = standInAnswer({
      response_format: { type: 'json_schema', json_schema: { name: SYNTHESIS_PROMPT.task } },
      messages: [
        {
          role: 'user',
          content: SYNTHESIS_PROMPT.user({
            label: 'X',
            node_type: 'y',
            relations: [],
            previous: null,
          }),
        },
      ],
    });
    expect(SYNTHESIS_PROMPT.schema.parse(JSON.parse(synthesis)).description).toMatch(
      /^\[stand-in\]/,
    );
  });

  it('are served over HTTP by the demo stand-in model, clearly labelled', async () => {
    const model = await startStandInModel();
    try {
      const config = loadConfig({ HD_LLM_BASE_URL: model.url, HD_LLM_MODEL: STAND_IN_MODEL });
      const client = new LlmClient(llmSettings(config), {
        log: createLogger({ level: 'silent' }),
        signal: new AbortController().signal,
      });
      const P = INTERPRETATION_PROMPT;
      const answer = await client.structured({
        task: P.task,
        schema: P.schema,
        system: P.system,
        user: P.user({ content: 'Acme Corp supplies Globex.', page_start: 1, page_end: 1 }),
      });
      expect(answer.model).toBe(STAND_IN_MODEL);
      expect(answer.model).toMatch(/not an LLM/);
      expect(answer.value.relations).toHaveLength(1);
    } finally {
      await model.close();
    }
  });
});
