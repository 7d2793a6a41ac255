import { readFile } from 'node:fs/promises';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { EXIT_CODES } from '../contract/errors.ts';
import { configToEnv } from '../control-plane/config.ts';
import { GERMAN, renderGray, textPdf } from './fixtures/documents.ts';
import { extractHarness } from './fixtures/extract-harness.ts';
import { makePdf } from './fixtures/make-pdf.ts';
import { childrenOf } from './fixtures/processes.ts';
import { ACCOUNT_A, testConfig } from './helpers/runtime.ts';

// Real PostgreSQL, fs storage, a scanned PDF made by the suite, the installed pdftoppm and
// tesseract: the runner is signalled while one of them runs as its child.
const h = extractHarness();

const CHILD_TOOLS = new Set(['pdftoppm', 'tesseract']);

/** Whether a process exists and is not a zombie. */
const alive = (pid: number) =>
  readFile(`/proc/${pid}/stat`, 'utf8').then(
    (stat) => !/^\d+ \(.*\) Z/.test(stat),
    () => false,
  );

describe('hd-runner run under SIGTERM', () => {
  it('hands the job back (exit 13, attempt refunded) while a child tool runs', async () => {
    // Enough scanned pages that OCR runs far longer than the test needs (40 renders and
    // OCRs at the scan's 150 dpi).
    const scan = renderGray(textPdf([GERMAN]), h.work);
    const pdf = makePdf(Array.from({ length: 40 }, () => scan));
    const doc = await h.addDocument(ACCOUNT_A, [{ name: 'long-scan.pdf', content: pdf }]);
    const job = await h.db.db.enqueueJob({
      accountId: ACCOUNT_A,
      jobType: 'extract_text',
      documentId: doc,
      debug: {},
    });
    const config = testConfig(h.db.url, h.root);
    const runner = execa(process.execPath, ['cli/main.ts', 'run', '--job-id', job.id], {
      env: { PATH: process.env.PATH ?? '', ...configToEnv(config) },
      extendEnv: false,
      reject: false,
    });
    let tool: { pid: number; name: string } | undefined;
    await expect
      .poll(
        async () => (tool = (await childrenOf(runner.pid!)).find((c) => CHILD_TOOLS.has(c.name))),
        { timeout: 60_000, interval: 50 },
      )
      .toBeDefined();
    runner.kill('SIGTERM');
    const result = await runner;
    expect({ exitCode: result.exitCode, signal: result.signal }).toEqual({
      exitCode: EXIT_CODES.interrupted,
      signal: undefined,
    });
    expect(result.stderr).toContain('released');
    expect(await h.db.db.getJob(job.id)).toMatchObject({
      status: 'queued',
      attempts: 0,
      lease_token: null,
    });
    // The tool does not outlive its runner.
    await expect.poll(() => alive(tool!.pid), { timeout: 10_000 }).toBe(false);
  }, 120_000);
});
