import type { Command } from '../command-spec.ts';
import { RUN_SPEC } from './run-spec.ts';

/**
 * Every command's name, usage and flags. The code of a command is imported only when it
 * runs, so `--help` and argument errors answer at once (no pdf.js, supabase-js or pg loaded).
 */
export const COMMANDS: readonly Command[] = [
  {
    name: 'scheduler',
    summary: 'claim queued jobs and run each in its own runner (the systemd service)',
    usage: `hd-runner scheduler [--slots N] [--job-types a,b] [--launcher process|docker]

Runs until SIGTERM/SIGINT: claims jobs into N slots (LISTEN/NOTIFY wake-ups, polling
as fallback), starts one runner per job, records crashes and timeouts, reaps expired
leases. On SIGTERM it stops claiming, lets running jobs finish for
HD_SHUTDOWN_GRACE_MS, then hands the rest back to the queue. A second signal exits at once.
While the database is unreachable it waits (a line every 5 s); while the Docker engine
does not answer it claims nothing.

With --launcher docker (HD_LAUNCHER=docker) each job runs in its own container of
HD_DOCKER_IMAGE (HD_DOCKER_GPU_IMAGE for GPU jobs, pinned to a GPU of HD_GPUS); on start
and every HD_RECONCILE_INTERVAL_MS the scheduler re-adopts or removes the containers
labelled with its HD_WORKER_ID (default here: the hostname, so a restart finds them).
With --launcher process a restart stops the runners the killed scheduler left and hands
their jobs back; HD_WARM_RUNNERS (default 1) runners are kept started for idle slots,
each handed one CPU job and its credentials on stdin when it is claimed (no job id, lease
or credential in it before), so the job skips the runner's start-up.

With an LLM or transcription endpoint configured it serves an OpenAI-compatible gateway
to its runners (HD_LLM_GATEWAY, HD_LLM_GATEWAY_ADDRESS): they get its URL and a credential
of their job's lease, never the provider key (a restart listens again on the port its
running containers were given); HD_LLM_LIMITS holds all runners to one set of limits per
model, and hd_llm_budgets caps each account's tokens per UTC day (a refused job waits for
the next day without spending an attempt).`,
    options: {
      slots: { type: 'string' },
      'job-types': { type: 'string' },
      launcher: { type: 'string' },
    },
    load: async () => (await import('./scheduler.ts')).schedulerCommand,
  },
  { ...RUN_SPEC, load: async () => (await import('./run.ts')).runCommand },
  {
    name: 'enqueue',
    summary: 'upload a JSONL file to storage (or name a URL) and queue an import_assets_jsonl job',
    usage: `hd-runner enqueue --account UUID --file PATH [--strict] [--document-id UUID]
                   [--max-attempts N] [--priority N] [--webhook-url URL] [--json]
hd-runner enqueue --account UUID --url URL [options above]
hd-runner enqueue --account UUID --batch NAME [--idempotency-key KEY] FILE… [options above]

Uploads PATH to {bucket}/accounts/{account}/assets-jsonl/{timestamp}-{name} and inserts
the job; prints its id. {name} is the file name in the characters storage keys allow
(Müller.jsonl → Muller.jsonl); debug.original_name keeps it as given.
--strict fails the job on the first invalid line.
--batch: one job per FILE, queued together as batch NAME (all or none); prints the batch
id (--json: the batch and its job ids). The same --idempotency-key again (same account)
returns the first batch and queues nothing. Follow it with hd-runner batches show ID.
--url: the job names an http(s) URL instead; the scheduler fetches it before the runner
starts (public addresses only unless HD_URL_INPUT_ALLOW_CIDRS allows a range; at most
HD_URL_INPUT_MAX_BYTES, within HD_URL_INPUT_TIMEOUT_MS, HD_URL_INPUT_MAX_REDIRECTS
redirects), checks it is text, and stores it at
{bucket}/accounts/{account}/url-inputs/{job}/{name} (debug.url_input) for every attempt.
--webhook-url: the job's (with --batch: the batch's) end event is also sent there, signed
with the account's signing secret (hd-runner webhooks secret); a loopback, private or
metadata address is refused unless HD_WEBHOOK_ALLOW_CIDRS allows it.`,
    options: {
      account: { type: 'string' },
      file: { type: 'string' },
      url: { type: 'string' },
      batch: { type: 'string' },
      'idempotency-key': { type: 'string' },
      strict: { type: 'boolean' },
      'document-id': { type: 'string' },
      'max-attempts': { type: 'string' },
      priority: { type: 'string' },
      'webhook-url': { type: 'string' },
      json: { type: 'boolean' },
    },
    load: async () => (await import('./enqueue.ts')).enqueueCommand,
    embeddedDefault: true,
  },
  {
    name: 'jobs',
    summary: 'list, show, requeue, cancel or watch jobs; their artifacts',
    usage: `hd-runner jobs list [--account UUID] [--status S] [--type T] [--limit N] [--json]
                                        newest first, 20 unless --limit (up to 1000);
                                        says so when more jobs match
hd-runner jobs show ID [--logs [--limit N]] [--json]
                                        --logs: also the runner's last N log lines
                                        (hd_job_logs, default 100)
hd-runner jobs requeue ID [--json]      failed/completed → queued, error cleared, attempts 0
hd-runner jobs cancel ID [--reason TEXT] [--json]
                                        queued/running → failed (CANCELLED); a running
                                        runner is stopped by its scheduler
hd-runner jobs watch ID… | --batch ID | --account UUID [--interval MS] [--json]
                                        live progress until the jobs end: bars on a
                                        terminal, a line per change otherwise, --json
                                        events; exit 0 all completed, 10 any failed
                                        (--account: its queued and running jobs now)
hd-runner jobs artifacts ID | --batch ID [--url [--expires S]] [--download DIR]
                         [--archive FILE] [--json]
                                        the job's (the batch's) stored results: kind,
                                        name, bytes, SHA-256; --url: links valid S
                                        seconds (default 3600; Supabase Storage signed
                                        URLs, fs: file URLs); --download: each file into
                                        DIR/kind/name (a batch: DIR/job/kind/name);
                                        --archive: one zip of them all; every file is
                                        checked against its SHA-256. None stored: exit 1
                                        with --download/--archive (NO_ARTIFACTS)

ID is a job's UUID or a unique start of it (4+ characters, as the demo prints them).
A job in another state than the action needs is left as it is: exit 1, with why.
Without HD_DATABASE_URL, after hd-runner demo: the demo's embedded PostgreSQL.`,
    options: {
      account: { type: 'string' },
      status: { type: 'string' },
      type: { type: 'string' },
      limit: { type: 'string' },
      reason: { type: 'string' },
      logs: { type: 'boolean' },
      batch: { type: 'string' },
      interval: { type: 'string' },
      url: { type: 'boolean' },
      expires: { type: 'string' },
      download: { type: 'string' },
      archive: { type: 'string' },
      json: { type: 'boolean' },
    },
    load: async () => (await import('./jobs.ts')).jobsCommand,
    embeddedDefault: true,
  },
  {
    name: 'batches',
    summary: 'list, show, cancel or requeue batches of jobs',
    usage: `hd-runner batches list [--account UUID] [--status S] [--limit N] [--json]
                                        newest first, 20 unless --limit (up to 1000);
                                        S: active, completed, failed, cancelled
hd-runner batches show ID [--json]      counts, percent and the batch's jobs
hd-runner batches cancel ID [--reason TEXT] [--json]
                                        its queued/running jobs → failed (CANCELLED)
hd-runner batches requeue ID [--json]   its failed and cancelled jobs → queued, attempts 0

A batch is active while a job is queued or running; then failed (a job failed for
good), cancelled (none failed, some cancelled) or completed. The database keeps its
counts (total, queued, running, completed, failed, cancelled) exact.
ID is a batch's UUID or a unique start of it (4+ characters). Nothing to cancel or
requeue: exit 1, with why.`,
    options: {
      account: { type: 'string' },
      status: { type: 'string' },
      limit: { type: 'string' },
      reason: { type: 'string' },
      json: { type: 'boolean' },
    },
    load: async () => (await import('./batches.ts')).batchesCommand,
    embeddedDefault: true,
  },
  {
    name: 'webhooks',
    summary: 'add and list webhook endpoints, read the delivery log, replay a delivery',
    usage: `hd-runner webhooks add --account UUID --url URL [--events a,b] [--json]
                                        prints the endpoint id and its signing secret (once)
hd-runner webhooks list [--account UUID] [--json]
hd-runner webhooks deliveries [--account UUID] [--status S] [--limit N] [--json]
                                        newest first; S: pending, delivered, failed
hd-runner webhooks replay DELIVERY_ID [--json]
                                        send again (same webhook-id), attempts from 0
hd-runner webhooks secret --account UUID [--json]
                                        the account's secret signing its jobs' and
                                        batches' own URLs (--webhook-url, debug.webhook_url)

Events: job.completed, job.failed, batch.completed, batch.failed, batch.cancelled (default
all). The scheduler delivers them signed per Standard Webhooks; see README, Webhooks.`,
    options: {
      account: { type: 'string' },
      url: { type: 'string' },
      events: { type: 'string' },
      status: { type: 'string' },
      limit: { type: 'string' },
      json: { type: 'boolean' },
    },
    load: async () => (await import('./webhooks.ts')).webhooksCommand,
    embeddedDefault: true,
  },
  {
    name: 'migrate',
    summary: 'apply the SQL contract (supabase/migrations) to the database',
    usage: `hd-runner migrate [--force]

Applies every numbered file of supabase/migrations that the database has not seen (or
whose content changed), each in a transaction, under an advisory lock. The files are
re-runnable; --force applies all of them again.

Needs HD_DATABASE_URL (a direct PostgreSQL connection; on Supabase the pooler-less URL).`,
    options: { force: { type: 'boolean' } },
    load: async () => (await import('./migrate.ts')).migrateCommand,
    embeddedDefault: true,
  },
  {
    name: 'doctor',
    summary: 'check what this worker talks to: project, migrations, queue, storage, Docker, GPUs',
    usage: `hd-runner doctor [--job-id ID] [--json]

Prints one line per check (ok, WARN, FAIL, SKIP) and exits 1 when a check fails:
  target      transport, host and Supabase project ref (never a secret); FAIL when it is
              not HD_EXPECTED_PROJECT_REF, or the key belongs to another project
  database    reachable, which database and PostgreSQL version
  migrations  every file of supabase/migrations applied and unchanged
  queue       jobs by status, age of the oldest queued job
  wake-ups    LISTEN/NOTIFY, polling, or Realtime (and whether it is published)
  job         with --job-id: is the job the app just queued in THIS database?
  storage     the bucket (HD_BUCKET) exists and can be listed
  docker      engine and runner images (needed by HD_LAUNCHER=docker only)
  gpus        nvidia-smi's GPUs and persistence mode`,
    options: { json: { type: 'boolean' }, 'job-id': { type: 'string' } },
    load: async () => (await import('./doctor.ts')).doctorCommand,
    embeddedDefault: true,
  },
  {
    name: 'demo',
    summary: 'run the import and the document pipeline end to end on an embedded PostgreSQL',
    usage: `hd-runner demo [--dir PATH]

Starts a real PostgreSQL (embedded; data in PATH/postgres, default .hd-data), applies the
migrations, and runs the scheduler (process launcher) until every job it queued ended:

1. imports: the JSONL files of examples/ for two tenants. One globex file has bad lines:
   run leniently it completes and reports them; with strict: true it fails (expected).
2. a pipeline per tenant: examples/*-memo.md → extract_text → extract_interpretations →
   text2kg → synthesize_node, each stage queued by the previous one's completion.
   Without HD_LLM_BASE_URL the LLM stages talk to a STAND-IN MODEL (deterministic string
   rules, not a language model), clearly labelled in the output.

Exit 0 when every job ended as expected. Run it again: imports find their rows
unchanged and the pipeline stages find their work done.`,
    options: { dir: { type: 'string' } },
    load: async () => (await import('./demo.ts')).demoCommand,
  },
  {
    name: 'selftest',
    summary:
      'check that this runner (container) can work: user, dirs, config, database, storage, GPU',
    usage: `hd-runner selftest [--gpu] [--json]

Checks, and prints one line each:
  user      not running as root
  config    the environment parses (HD_* settings)
  workdir   HD_WORK_DIR (default the temp dir) is writable; notes a read-only root fs
  database  HD_DATABASE_URL answers and has the hd-runner schema (skipped when unset)
  storage   the fs storage root is readable (skipped when HD_STORAGE_ROOT is unset and absent)
  gpu       with --gpu: nvidia-smi lists at least one GPU

Exit 0 when no check failed, 1 otherwise. In a container:
  docker run --rm hd-runner selftest
  docker run --rm --gpus all hd-runner-gpu selftest --gpu`,
    options: { gpu: { type: 'boolean' }, json: { type: 'boolean' } },
    load: async () => (await import('./selftest.ts')).selftestCommand,
  },
];
