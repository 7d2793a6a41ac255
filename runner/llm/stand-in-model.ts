import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { TEXT_CLOSE, TEXT_OPEN, type Interpretation, type Synthesis } from './prompts.ts';

/**
 * STAND-IN MODEL — NOT A LANGUAGE MODEL. A deterministic stand-in that speaks the OpenAI
 * chat-completions wire format, so the demo (and tests) can run the LLM stages on a
 * machine without a model endpoint. It "interprets" text with a few string rules
 * (capitalised names, the words between them as the relation, sentences with must/shall
 * as rules) and "synthesises" a node by listing its relations. Its answers say so.
 */
export const STAND_IN_MODEL = 'hd-stand-in-model (deterministic, not an LLM)';

interface ChatRequestBody {
  model?: string;
  messages?: { role?: string; content?: unknown }[];
  response_format?: { type?: string; json_schema?: { name?: string } };
}

const STOPWORDS = new Set(
  (
    'the a an this that these those it its in on at for and but or if when then there ' +
    'der die das ein eine einer und oder wenn dann es im am zum zur nach bei mit von'
  ).split(' '),
);
const RULE_WORDS = /\b(must|shall|should|required|may not|muss|müssen|soll|sollen|darf|dürfen)\b/i;
const ORG_SUFFIX = /\b(inc|corp|corporation|gmbh|ag|ltd|llc|se|kg)\.?$/i;

/** The assistant message content the stand-in gives for a request. */
export function standInAnswer(body: ChatRequestBody): string {
  const messages = body.messages ?? [];
  const text = (role: string) =>
    messages
      .filter((m) => m.role === role)
      .map((m) => (typeof m.content === 'string' ? m.content : ''))
      .join('\n');
  const task =
    body.response_format?.json_schema?.name ??
    (text('system').includes('"relations"') ? 'interpretation' : 'synthesis');
  const user = messages.findLast((m) => m.role === 'user' && String(m.content).includes(TEXT_OPEN));
  const block = between(typeof user?.content === 'string' ? user.content : '');
  return JSON.stringify(task === 'interpretation' ? interpret(block) : synthesise(block));
}

function between(text: string): string {
  const start = text.indexOf(TEXT_OPEN);
  const end = text.lastIndexOf(TEXT_CLOSE);
  return start < 0 || end < start ? text : text.slice(start + TEXT_OPEN.length, end).trim();
}

function interpret(text: string): Interpretation {
  const out: Interpretation = { statements: [], rules: [], relations: [] };
  const sentences = text
    .split(/(?<=[.!?])\s+|\n{2,}/)
    .map((s) => s.replace(/\s+/g, ' ').trim())
    .filter(Boolean);
  for (const sentence of sentences) {
    if (RULE_WORDS.test(sentence)) out.rules.push(sentence.slice(0, 300));
    else if (out.statements.length < 10) out.statements.push(sentence.slice(0, 300));
    const words = [...sentence.matchAll(/[\p{L}\p{N}][\p{L}\p{N}&'’.-]*/gu)].map((m) =>
      m[0].replace(/\.$/, ''),
    );
    const names: { label: string; start: number; end: number }[] = [];
    for (let i = 0; i < words.length; i++) {
      if (!/^\p{Lu}/u.test(words[i]!) || STOPWORDS.has(words[i]!.toLowerCase())) continue;
      let j = i;
      while (j + 1 < words.length && /^\p{Lu}/u.test(words[j + 1]!)) j++;
      names.push({ label: words.slice(i, j + 1).join(' '), start: i, end: j });
      i = j;
    }
    for (let k = 0; k + 1 < names.length; k++) {
      const a = names[k]!;
      const b = names[k + 1]!;
      const gap = words.slice(a.end + 1, b.start).map((w) => w.toLowerCase());
      if (gap.length === 0 || gap.length > 4) continue;
      out.relations.push({
        source: a.label,
        source_type: ORG_SUFFIX.test(a.label) ? 'organization' : 'entity',
        relation: gap.join(' '),
        target: b.label,
        target_type: ORG_SUFFIX.test(b.label) ? 'organization' : 'entity',
        quote: sentence.slice(0, 200),
      });
    }
  }
  return out;
}

function synthesise(block: string): Synthesis {
  const lines = block.split('\n');
  const entity = (lines.find((l) => l.startsWith('Entity: ')) ?? 'Entity: ?').slice(8);
  const relations = lines
    .filter((l) => l.startsWith('- '))
    .map((l) => l.slice(2).replace(/ \(\d+ passage\(s\)\)$/, ''));
  const previousAt = lines.indexOf('Previous description:');
  const previous = previousAt >= 0 ? lines.slice(previousAt + 1).join(' ') : '(none)';
  return {
    description: `[stand-in] ${entity}: ${relations.join('; ') || 'no relations'}.`,
    change_summary:
      previous === '(none)'
        ? 'first description'
        : `[stand-in] now ${relations.length} relation(s)`,
  };
}

/** A complete chat.completion response for `body`, as the OpenAI API returns one. */
export function standInCompletion(body: ChatRequestBody, content: string, id: number) {
  const promptChars = JSON.stringify(body.messages ?? []).length;
  const prompt_tokens = Math.ceil(promptChars / 4);
  const completion_tokens = Math.ceil(content.length / 4);
  return {
    id: `chatcmpl-standin-${id}`,
    object: 'chat.completion',
    created: Math.floor(Date.now() / 1000),
    model: body.model ?? STAND_IN_MODEL,
    choices: [
      {
        index: 0,
        message: { role: 'assistant', content, refusal: null },
        finish_reason: 'stop',
        logprobs: null,
      },
    ],
    usage: { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens },
  };
}

export async function readJsonBody(req: IncomingMessage): Promise<ChatRequestBody> {
  const parts: Buffer[] = [];
  for await (const part of req) parts.push(part as Buffer);
  try {
    return JSON.parse(Buffer.concat(parts).toString('utf8')) as ChatRequestBody;
  } catch {
    return {};
  }
}

export function sendJson(res: ServerResponse, status: number, value: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value));
}

export interface StandInModelServer {
  /** Base URL to put in HD_LLM_BASE_URL, e.g. http://127.0.0.1:41234/v1 */
  url: string;
  close(): Promise<void>;
}

/** Starts the stand-in on 127.0.0.1 (a free port unless given). For the demo. */
export async function startStandInModel(
  options: { port?: number } = {},
): Promise<StandInModelServer> {
  let served = 0;
  const server = createServer((req, res) => {
    if (req.method === 'POST' && req.url?.endsWith('/chat/completions')) {
      void readJsonBody(req).then((body) =>
        sendJson(res, 200, standInCompletion(body, standInAnswer(body), ++served)),
      );
    } else if (req.method === 'GET' && req.url?.endsWith('/models')) {
      sendJson(res, 200, { object: 'list', data: [{ id: STAND_IN_MODEL, object: 'model' }] });
    } else {
      sendJson(res, 404, { error: { message: `no route ${req.method} ${req.url}` } });
    }
  });
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/v1`,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((error) => (error ? reject(error) : resolve()));
      }),
  };
}
