import type { NatsConnection } from 'nats';
import { openNats, redactUrl } from '../bus/nats-connect.js';
import type { NatsRuntime } from '../bus/nats-connect.js';
import { commandHelp } from '../config/args.js';
import type { Settings } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import { systemClock } from '../function.js';
import { DEFAULT_WINDOWS, createGateway } from '../gateway/app.js';
import { NatsTriggerLog } from '../gateway/nats-trigger-log.js';
import { isLoopback, listen, parseListen } from '../gateway/server.js';
import { followProgress } from '../gateway/page.js';
import { ProgressBoard } from '../run/progress.js';
import { createLogger } from '../log.js';
import { runOptions } from './backup.js';
import type { Io } from './io.js';
import { VERSION, fail } from './io.js';
import { readMetricsTokens, readSecretFile, readTokensFile } from './secrets.js';
import { loadCommandSettings } from './settings.js';

/** Gateway-only switch: serve without bearer tokens, on a loopback address only. */
const NO_AUTH_FLAG = '--no-auth';
/** Shortest webhook secret accepted. */
const MIN_SECRET_LENGTH = 16;

/**
 * `vmbackup gateway --nats URL --listen HOST:PORT` — the HTTP gateway on NATS: starts runs,
 * shows them, lists backups, runs one phase on its own, takes Alertmanager and signed
 * webhooks (runtime/gateway/README.md). Runs until SIGTERM or SIGINT, then stops accepting
 * requests, lets those in progress finish and closes NATS. Exit codes: 0 after a signal,
 * 2 for a usage or config error (no token, unreadable file, no NATS).
 */
export async function gatewayCommand(argv: readonly string[], io: Io): Promise<number> {
  const noAuth = argv.includes(NO_AUTH_FLAG);
  const loaded = loadCommandSettings(
    argv.filter((a) => a !== NO_AUTH_FLAG),
    io,
    { command: 'gateway', help: () => commandHelp('gateway', { version: VERSION }) },
  );
  if (typeof loaded === 'number') return loaded;
  const { settings } = loaded;

  let secrets: { tokens: string[]; webhookSecret?: string; metricsTokens: string[] };
  let at: { host: string; port: number };
  try {
    if (settings.nats_url === undefined) throw new ConfigError('the gateway needs NATS: give --nats URL (or nats_url in the config)', { key: 'nats_url' });
    at = parseListen(settings.gateway_listen);
    secrets = readSecrets(settings, noAuth, at.host);
  } catch (error) {
    return fail(io, error);
  }

  const log = createLogger({ consoleLevel: settings.log_level, console: io.stdout, consoleErrors: io.stderr });
  let nats: NatsRuntime | undefined;
  try {
    // A request waits at most 5 s for a publish while NATS is away, then gets its 503.
    nats = await openNats(settings, log, { name: 'vmbackup gateway', bus: { publishRetryMs: 5_000 } });
    const { nc } = nats;
    const triggers = await NatsTriggerLog.open(nc, { clock: systemClock, maxTtlMs: Math.max(...Object.values(DEFAULT_WINDOWS)) });
    // What the status page shows of the exports under way: the workers' progress signals.
    const progress = new ProgressBoard();
    await followProgress(nats.bus, progress, systemClock);
    const app = createGateway({
      bus: nats.bus,
      store: nats.store,
      triggers,
      backupDir: settings.backup_dir,
      tokens: secrets.tokens,
      allowNoAuth: noAuth,
      ...(secrets.webhookSecret !== undefined ? { webhookSecret: secrets.webhookSecret } : {}),
      bodyLimit: settings.gateway_body_limit,
      alertmanagerLabel: settings.alertmanager_label,
      runDefaults: runOptions(settings, loaded),
      clock: systemClock,
      log,
      ready: () => natsReady(nc),
      version: VERSION,
      progress,
      metricsTokens: secrets.metricsTokens,
      maxAgeHours: settings.max_age_hours,
    });
    const gw = await listen(app, at);
    log.info(`vmbackup ${VERSION} gateway listening on ${gw.url} (NATS ${redactUrl(settings.nats_url!)}; ${secrets.tokens.length} token(s)${secrets.webhookSecret !== undefined ? ', signed webhooks on' : ''})`);
    const signal = await new Promise<NodeJS.Signals>((resolve) => {
      const on = (s: NodeJS.Signals) => {
        process.off('SIGTERM', on);
        process.off('SIGINT', on);
        resolve(s);
      };
      process.on('SIGTERM', on);
      process.on('SIGINT', on);
    });
    log.info(`${signal} received: gateway stopping`);
    await gw.close();
    return 0;
  } catch (error) {
    return fail(io, error);
  } finally {
    await nats?.close().catch((error: unknown) => log.warn({ err: error }, `closing NATS: ${(error as Error).message}`));
    log.flush();
  }
}

/** Tokens and the webhook secret, from their files; errors name the file, never a secret. */
export function readSecrets(settings: Settings, noAuth: boolean, host: string): { tokens: string[]; webhookSecret?: string; metricsTokens: string[] } {
  let tokens: string[] = [];
  if (settings.gateway_tokens_file !== undefined) {
    tokens = readTokensFile(settings.gateway_tokens_file, 'gateway_tokens_file');
  }
  if (tokens.length === 0 && !noAuth) {
    throw new ConfigError(
      settings.gateway_tokens_file === undefined
        ? 'the gateway needs bearer tokens: set gateway_tokens_file (a file with one token per line, e.g. from openssl rand -hex 32)'
        : `gateway_tokens_file ${settings.gateway_tokens_file} holds no token`,
      { key: 'gateway_tokens_file' },
    );
  }
  if (noAuth && !isLoopback(host)) {
    throw new ConfigError(`${NO_AUTH_FLAG} is only allowed on a loopback address (gateway_listen = ${settings.gateway_listen})`, { key: 'gateway_listen' });
  }
  if (noAuth) tokens = [];
  let webhookSecret: string | undefined;
  if (settings.webhook_secret_file !== undefined) {
    webhookSecret = readSecretFile(settings.webhook_secret_file, 'webhook_secret_file').split(/\r?\n/)[0]!.trim();
    if (webhookSecret.length < MIN_SECRET_LENGTH) {
      throw new ConfigError(`webhook_secret_file ${settings.webhook_secret_file}: the secret (first line) is shorter than ${MIN_SECRET_LENGTH} characters`, { key: 'webhook_secret_file', file: settings.webhook_secret_file });
    }
  }
  return { tokens, ...(webhookSecret !== undefined ? { webhookSecret } : {}), metricsTokens: readMetricsTokens(settings) };
}

/** NATS answers a PING and JetStream its account info, each within 2 s. */
async function natsReady(nc: NatsConnection): Promise<boolean> {
  if (nc.isClosed()) return false;
  const within = <T>(p: Promise<T>) => Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('timeout')), 2_000).unref())]);
  try {
    await within(nc.flush());
    const jsm = await within(nc.jetstreamManager());
    await within(jsm.getAccountInfo());
    return true;
  } catch {
    return false;
  }
}
