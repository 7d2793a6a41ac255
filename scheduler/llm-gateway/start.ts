import Docker from 'dockerode';
import { ConfigError, type Config } from '../../control-plane/config.ts';
import { llmLedgerOf } from '../../control-plane/db/llm-ledger.ts';
import type { ControlPlaneDb } from '../../control-plane/db/transport.ts';
import type { Logger } from '../../control-plane/logger.ts';
import { llmSettings } from '../../runner/llm/client.ts';
import { priceTable } from './budgets.ts';
import { LlmLimiter } from './limiter.ts';
import { LABELS } from '../launchers/docker.ts';
import { networkGatewayAddress, type NetworkAddressInfo } from '../launchers/docker-engine.ts';
import { LlmGateway } from './server.ts';

/**
 * The scheduler's LLM gateway, listening where its runners reach it; undefined when
 * HD_LLM_GATEWAY=off or no LLM or transcription endpoint is configured (runners then get
 * the endpoint settings themselves, as `hd-runner run` by hand does).
 */
export async function startLlmGateway(
  config: Config,
  db: ControlPlaneDb,
  log: Logger,
): Promise<LlmGateway | undefined> {
  const chatBase = llmSettings(config).baseURL;
  if (config.HD_LLM_GATEWAY === 'off' || (!chatBase && !config.HD_TRANSCRIBE_BASE_URL))
    return undefined;
  const gateway = new LlmGateway({
    ledger: llmLedgerOf(db),
    log,
    chat: chatBase ? { baseURL: chatBase, apiKey: config.HD_LLM_API_KEY } : undefined,
    transcribe: config.HD_TRANSCRIBE_BASE_URL
      ? {
          baseURL: config.HD_TRANSCRIBE_BASE_URL,
          apiKey: config.HD_TRANSCRIBE_API_KEY ?? config.HD_LLM_API_KEY,
        }
      : undefined,
    transcribeModel: config.HD_TRANSCRIBE_MODEL,
    models: offeredModels(config),
    limiter: new LlmLimiter(config.HD_LLM_LIMITS),
    prices: priceTable(config),
    defaultOutputTokens: config.HD_LLM_MAX_OUTPUT_TOKENS,
    defaultDailyTokens: config.HD_LLM_DAILY_TOKEN_BUDGET,
    timeoutMs: config.HD_LLM_TIMEOUT_MS,
    // A runner sends at most HD_LLM_CONCURRENCY at once; twice that leaves room for
    // requests it gave up on whose connections the gateway has not yet seen close.
    runnerRequests: config.HD_LLM_GATEWAY_RUNNER_REQUESTS ?? 2 * config.HD_LLM_CONCURRENCY,
    bufferBytes: config.HD_LLM_GATEWAY_BUFFER_BYTES,
  });
  await listenWhereRunnersReach(gateway, config, log);
  log.info({ url: gateway.url, limits: config.HD_LLM_LIMITS ?? {} }, 'llm gateway listening');
  return gateway;
}

/** The models the gateway forwards: the scheduler's chat and transcription models and those priced. */
export function offeredModels(config: Config): Set<string> {
  return new Set([
    config.HD_LLM_MODEL,
    config.HD_TRANSCRIBE_MODEL,
    ...Object.keys(priceTable(config)),
  ]);
}

/**
 * Listens at listenAddress. With port 0, a restarted scheduler listens again on the port
 * its running containers were given (HD_LLM_BASE_URL in their environment): they keep
 * the URL they were started with, and the new process re-adopts them (reconcile.ts).
 * A port taken by another process is a ConfigError naming it; a remembered port that is
 * taken falls back to any free one, with a warning.
 */
async function listenWhereRunnersReach(
  gateway: LlmGateway,
  config: Config,
  log: Logger,
): Promise<void> {
  const { host, port } = await listenAddress(config);
  const remembered = port === 0 ? await portOfRunningContainers(config, host) : undefined;
  try {
    await gateway.listen(host, remembered ?? port);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error;
    if (remembered === undefined)
      throw new ConfigError(
        `invalid configuration: HD_LLM_GATEWAY_ADDRESS: ${host}:${port} is in use by another process (another scheduler on this host?); give each scheduler its own port`,
      );
    log.warn(
      { port: remembered },
      "llm gateway: the port this scheduler's running containers were given is taken; listening on another, so their model requests fail (LLM_FAILED, retried)",
    );
    await gateway.listen(host, 0);
  }
}

/** The gateway port in the environment of this scheduler's running containers, if any. */
async function portOfRunningContainers(config: Config, host: string): Promise<number | undefined> {
  if (config.HD_LAUNCHER !== 'docker') return undefined; // process runners are not re-adopted
  const docker = new Docker();
  const containers = await docker
    .listContainers({ filters: { label: [`${LABELS.schedulerId}=${config.HD_WORKER_ID}`] } })
    .catch(() => []);
  for (const c of containers) {
    const info = await docker
      .getContainer(c.Id)
      .inspect()
      .catch(() => undefined);
    for (const entry of info?.Config.Env ?? []) {
      const url = /^HD_(?:LLM|TRANSCRIBE)_BASE_URL=(.*)$/.exec(entry)?.[1];
      const at = url && URL.canParse(url) ? new URL(url) : undefined;
      if (at?.port && at.hostname.replace(/^\[|\]$/g, '') === host) return Number(at.port);
    }
  }
  return undefined;
}

/**
 * HD_LLM_GATEWAY_ADDRESS, else where runners reach this host: loopback for the process
 * launcher and host networking, the network's gateway address (docker0's, 172.17.0.1 on
 * the default bridge) for containers on a bridge network; any free port.
 */
async function listenAddress(config: Config): Promise<{ host: string; port: number }> {
  const given = config.HD_LLM_GATEWAY_ADDRESS;
  if (given) {
    const at = given.lastIndexOf(':');
    return { host: given.slice(0, at).replace(/^\[|\]$/g, ''), port: Number(given.slice(at + 1)) };
  }
  if (config.HD_LAUNCHER !== 'docker' || config.HD_DOCKER_NETWORK === 'host')
    return { host: '127.0.0.1', port: 0 };
  const network = await new Docker()
    .getNetwork(config.HD_DOCKER_NETWORK)
    .inspect()
    .catch((error: unknown) => {
      throw new ConfigError(
        `invalid configuration: HD_LLM_GATEWAY_ADDRESS: not set, and the address of Docker network ${config.HD_DOCKER_NETWORK} could not be read (${(error as Error).message}); set it, or HD_LLM_GATEWAY=off`,
      );
    });
  const host = networkGatewayAddress(network as NetworkAddressInfo);
  if (!host)
    throw new ConfigError(
      `invalid configuration: HD_LLM_GATEWAY_ADDRESS: not set, and Docker network ${config.HD_DOCKER_NETWORK} shows no IPv4 gateway address; set it, or HD_LLM_GATEWAY=off`,
    );
  return { host, port: 0 };
}
