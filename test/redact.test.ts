import { expect, it } from 'vitest';
import { Redactor, secretsOf } from '../control-plane/redact.ts';
import { memoryLogger } from './helpers/runtime.ts';

// A secret that no shape rule recognises: only redaction by value can hide it.
const PLAIN = 'db-pass-Xy12abcdEF"q';

it('hides a configured secret in any logged string: messages, error causes, escaped forms', () => {
  const { log, lines } = memoryLogger('info', [PLAIN]);
  const cause = new Error(`upstream said: 401 for key ${PLAIN}`);
  log.error({ err: new Error('call failed', { cause }), body: { echoed: PLAIN } }, `saw ${PLAIN}`);
  log.info({ url: `postgres://u:${encodeURIComponent(PLAIN)}@h/db` }, 'connecting');
  const text = lines.join('\n');
  expect(text).toContain('[redacted]');
  expect(text).not.toContain('Xy12abcdEF');
});

it('hides secrets by their shape, wherever they come from', () => {
  const r = new Redactor([]);
  const jwt = `eyJhbGciOiJIUzI1NiJ9.${'eyJyb2xlIjoic2VydmljZV9yb2xlIn0'}.c2lnbmF0dXJlLXBhcnQ`;
  expect(r.text(`Bearer ${jwt}`)).toBe('Bearer [redacted]');
  expect(r.text('key sk-proj-abcdefghijklmnop1234 refused')).toBe('key [redacted] refused');
  expect(r.text('postgres://hd_runner:s3cr3t@db:5432/x')).toBe(
    'postgres://hd_runner:[redacted]@db:5432/x',
  );
  expect(r.text('GET /object/sign/b/k?token=abc.def.ghi&x=1')).toBe(
    'GET /object/sign/b/k?token=[redacted]&x=1',
  );
});

it('takes every secret setting and URL password from the configuration', () => {
  const secrets = secretsOf({
    HD_DATABASE_URL: 'postgres://postgres:superuser-pw@127.0.0.1:5432/postgres',
    SUPABASE_SERVICE_ROLE_KEY: 'service-role-key-value',
    HD_LLM_API_KEY: 'llm-key-value',
    HD_JOB_STORAGE_URLS: JSON.stringify({ 'b/k': 'http://s/object/sign/b/k?token=signed-tok' }),
    HD_LOG_LEVEL: 'info',
    HD_JOB_TOKEN: 'job-token-value',
    // Counts of tokens are no secrets: taken as ones, every "4096" in a log went.
    HD_LLM_MAX_OUTPUT_TOKENS: '4096',
    HD_LLM_DAILY_TOKEN_BUDGET: '250000',
    AWS_BEARER_TOKEN_BEDROCK: 'bedrock-token-value',
  });
  expect(secrets).not.toContain('4096');
  expect(secrets).not.toContain('250000');
  expect(secrets).toContain('job-token-value');
  expect(secrets).toContain('bedrock-token-value');
  expect(secrets).toEqual(
    expect.arrayContaining([
      'superuser-pw',
      'service-role-key-value',
      'llm-key-value',
      'signed-tok',
    ]),
  );
  expect(secrets).not.toContain('info');
});

it('gives tenants one line without stack frames or host paths; keys and URLs stay', () => {
  const r = new Redactor([]);
  const error = [
    "ENOENT: no such file or directory, open '/var/lib/hd/storage/hd_uploads_raw/accounts/a/x.jsonl'",
    '    at async open (node:internal/fs/promises:639:25)',
    '    at Object.download (/opt/hd-runner/dist/control-plane/storage/fs.js:31:9)',
  ].join('\n');
  expect(r.message(error)).toBe("ENOENT: no such file or directory, open '…/x.jsonl'");
  expect(r.forTenant({ err: { message: 'm', stack: error }, key: 'accounts/a/x.jsonl' })).toEqual({
    err: { message: 'm' },
    key: 'accounts/a/x.jsonl',
  });
  expect(r.tenantText('see https://api.example.com/v1/chat/completions')).toBe(
    'see https://api.example.com/v1/chat/completions',
  );
});
