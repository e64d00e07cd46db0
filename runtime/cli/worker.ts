import { functions } from '../../functions/index.js';
import { answerSelectionChecks } from '../../functions/plan/check.js';
import type { Closer } from '../bus/bus.js';
import { openNats, redactUrl } from '../bus/nats-connect.js';
import type { NatsRuntime } from '../bus/nats-connect.js';
import { commandHelp } from '../config/args.js';
import type { Settings } from '../config/schema.js';
import { ConfigError, UsageError } from '../errors.js';
import { isLoopback, listen, parseListen } from '../gateway/server.js';
import { WorkerMetrics } from '../status/metrics.js';
import { metricsApp } from '../status/serve-metrics.js';
import type { FunctionDef } from '../function.js';
import { localOrigin, systemClock } from '../function.js';
import { startRunEndTrigger } from '../hooks/run-end.js';
import { hookConfigFromSettings, hooksFromConfig } from '../hooks/settings.js';
import { captureConsole } from '../log.js';
import type { Logger } from '../log.js';
import { startCoordinator } from '../run/coordinator.js';
import { serve } from '../serve.js';
import { XapiClient } from '../xapi/client.js';
import type { XapiOptions } from '../xapi/client.js';
import type { Io } from './io.js';
import { VERSION, fail } from './io.js';
import { seconds, takeExtras } from './run.js';
import type { Extras } from './run.js';
import { readMetricsTokens, readTokensFile } from './secrets.js';
import { commandLogger, loadCommandSettings, printWarnings } from './settings.js';
import { xapiOptions, xapiPassword } from './xapi.js';

/** Functions whose jobs are per VM: `concurrency` at a time in this worker; the others two. */
const PER_VM = new Set(['pre-hook', 'snapshot', 'export', 'meta', 'prune', 'post-hook']);
/** Functions that work without XAPI: a worker serving only these needs no pool password. */
const WITHOUT_XAPI = new Set(['meta', 'prune', 'pre-hook', 'post-hook', 'run-end']);

/**
 * `vmbackup worker --nats URL [--functions export,prune]` — a long-lived worker: binds the
 * chosen functions (default all; `--functions` or `worker_functions`, comma lists) to their
 * subjects on JetStream and runs the run coordinator (unless `--no-coordinator`). Several
 * workers, on one node or many, share the work; each job is done once.
 *
 * XAPI is connected when a job first needs it, and again after the session is lost. On
 * SIGTERM or SIGINT it drains: stops taking jobs, lets running ones finish for up to
 * `--drain-timeout` seconds (default 60), hands the rest back (a second signal: at once),
 * logs out of XAPI and closes NATS; exit 0. Exit 2: usage or config error, NATS unreachable.
 *
 * `--ack-wait S` (default 30): how long a job of a worker that died waits before another
 * worker takes it over. A live worker keeps its jobs however long they take. `--replicas N`:
 * in a JetStream cluster, the replica count of vmbackup's streams (raised, never lowered).
 */
export async function workerCommand(argv: readonly string[], io: Io): Promise<number> {
  let extras: Extras;
  try {
    extras = takeExtras(argv, { '--no-coordinator': 'switch', '--ack-wait': 'value', '--drain-timeout': 'value', '--replicas': 'value' });
  } catch (error) {
    return fail(io, error);
  }
  // Warnings once the worker's own options are known good.
  let hookConfig: ReturnType<typeof hookConfigFromSettings> | undefined;
  const loaded = loadCommandSettings(extras.rest, io, {
    command: 'worker',
    help: () => commandHelp('worker', { version: VERSION, notes: [`Functions (--functions, Default: all): ${functions.map((f) => f.name).join(', ')}.`] }),
    warnings: false,
    // Hook settings are settings: a bad one ends the worker before it connects (exit 2).
    check: (l) => void (hookConfig = hookConfigFromSettings(l.settings, { hasBus: true, where: l.where })),
  });
  if (typeof loaded === 'number') return loaded;
  let fns: FunctionDef[];
  let ackWaitS: number;
  let drainS: number;
  let coordinator: boolean;
  let replicas: number | undefined;
  let metricsAt: { at: { host: string; port: number }; tokens: string[] } | undefined;
  try {
    fns = chosenFunctions(loaded.settings.worker_functions);
    metricsAt = metricsListen(loaded.settings);
    ackWaitS = seconds(extras.values['--ack-wait'], '--ack-wait') ?? 30;
    drainS = seconds(extras.values['--drain-timeout'], '--drain-timeout') ?? 60;
    coordinator = extras.values['--no-coordinator'] !== true;
    const r = extras.values['--replicas'];
    if (r !== undefined) {
      if (typeof r !== 'string' || !/^[1-5]$/.test(r)) throw new UsageError(`--replicas must be 1 to 5 (got ${JSON.stringify(r)})`);
      replicas = Number(r);
    }
    if (fns.some((f) => !WITHOUT_XAPI.has(f.name))) xapiPassword(loaded.settings);
  } catch (error) {
    return fail(io, error);
  }
  const { settings } = loaded;
  printWarnings(io, loaded.warnings);

  const origin = localOrigin();
  const metrics = new WorkerMetrics();
  // A worker's lines name the run and the VM they are about: it serves many runs at once.
  const log = commandLogger(settings, io, { json: false, file: true, context: true });
  const restoreConsole = captureConsole(log);
  const xapi = lazyXapi(settings, log);
  const abort = new AbortController();
  let nats: NatsRuntime | undefined;
  const closers: Closer[] = [];
  let signals = 0;
  let wake!: (signal: NodeJS.Signals) => void;
  const stopping = new Promise<NodeJS.Signals>((resolve) => (wake = resolve));
  const onSignal = (signal: NodeJS.Signals) => {
    if (++signals > 1) {
      log.warn(`${signal} again: handing running jobs back now`);
      abort.abort(new Error(signal));
    }
    wake(signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    nats = await openNats(settings, log, {
      name: `vmbackup worker ${origin.hostname}:${origin.pid}`,
      bus: { ackWaitMs: ackWaitS * 1000 },
      ...(replicas !== undefined ? { replicas } : {}),
    });
    const maxPayload = nats.nc.info?.max_payload ?? 0;
    if (maxPayload < 4 << 20) log.debug(`NATS max_payload is ${maxPayload} bytes: a plan of more than ~${Math.floor(maxPayload / 700)} VMs will not fit (infra/nats/nats-server.conf sets 8 MB)`);
    // Checked with the settings, before connecting (a bad one ended the worker there).
    const hooks = hooksFromConfig(hookConfig!, { log, env: io.env, bus: nats.bus });
    if (coordinator) {
      // Before serving: no phase event of ours may predate the coordinator's consumer.
      closers.push(await startCoordinator(nats.store, nats.bus, systemClock, log, { onFinished: (summary) => metrics.run(summary.status) }));
      closers.push(await startRunEndTrigger(nats.bus, log));
    }
    // The gateway asks whether a request's entries match the pool before it starts a run.
    if (fns.some((f) => f.name === 'plan')) closers.push(await answerSelectionChecks(nats.bus, { xapi: xapi.get, log }));
    if (metricsAt !== undefined) {
      const served = await listen(metricsApp(metrics.registry, metricsAt.tokens), metricsAt.at);
      closers.push({ close: () => served.close(1_000) });
      log.info(`worker metrics on ${served.url}/metrics${metricsAt.tokens.length === 0 ? ' (no token: loopback only)' : ''}`);
    }
    const serving = await serve(
      fns,
      { bus: nats.bus, log, xapi: xapi.get, clock: systemClock, origin, signal: abort.signal, hooks, metrics },
      { concurrency: (fn) => (PER_VM.has(fn.name) ? settings.concurrency : 2), ackWaitMs: ackWaitS * 1000 },
    );
    log.info(
      `vmbackup ${VERSION} worker ready: serving ${fns.map((f) => f.name).join(', ')}${coordinator ? ' and the coordinator' : ''}; NATS ${redactUrl(settings.nats_url!)}; XAPI ${settings.xapi_url}`,
    );
    const signal = await stopping;
    log.info(`${signal} received: draining (running jobs finish within ${drainS} s, or go back to the queue)`);
    const drained = serving.close();
    const timer = setTimeout(() => {
      if (!abort.signal.aborted) {
        log.warn(`drain timeout (${drainS} s): handing running jobs back`);
        abort.abort(new Error('drain timeout'));
      }
    }, drainS * 1000);
    await drained;
    clearTimeout(timer);
    for (const c of closers) await c.close().catch(() => {});
    log.info('worker stopped');
    return 0;
  } catch (error) {
    return fail(io, error);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await nats?.close().catch((error: unknown) => log.warn({ err: error }, `closing NATS: ${(error as Error).message}`));
    await xapi.close();
    restoreConsole();
    log.flush();
  }
}

/**
 * Where `--metrics-listen` / metrics_listen serves the worker's metrics, and the tokens it
 * accepts (metrics_tokens_file and gateway_tokens_file); without any, only on loopback.
 */
function metricsListen(settings: Settings): { at: { host: string; port: number }; tokens: string[] } | undefined {
  if (settings.metrics_listen === undefined) return undefined;
  let at: { host: string; port: number };
  try {
    at = parseListen(settings.metrics_listen);
  } catch {
    throw new ConfigError(`metrics_listen = ${settings.metrics_listen}: must be HOST:PORT (e.g. 127.0.0.1:9464, [::1]:9464, :9464)`, { key: 'metrics_listen' });
  }
  const gatewayTokens = settings.gateway_tokens_file !== undefined ? readTokensFile(settings.gateway_tokens_file, 'gateway_tokens_file') : [];
  const tokens = [...readMetricsTokens(settings), ...gatewayTokens];
  if (tokens.length === 0 && !isLoopback(at.host)) {
    throw new ConfigError(`metrics_listen = ${settings.metrics_listen} is not a loopback address: give metrics_tokens_file (or gateway_tokens_file) so that GET /metrics needs a token`, { key: 'metrics_listen' });
  }
  return { at, tokens };
}

/** The functions of `--functions` / `worker_functions` (comma lists), all when empty. */
export function chosenFunctions(items: readonly string[]): FunctionDef[] {
  const names = [...new Set(items.flatMap((i) => i.split(',')).map((n) => n.trim()).filter((n) => n !== ''))];
  if (names.length === 0) return [...functions];
  const unknown = names.filter((n) => !functions.some((f) => f.name === n));
  if (unknown.length > 0) {
    throw new UsageError(`unknown function${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')} in --functions / worker_functions (functions: ${functions.map((f) => f.name).join(', ')})`);
  }
  return functions.filter((f) => names.includes(f.name));
}

/**
 * The worker's XAPI session: made when a job first asks for it, shared by every job, and
 * made again when the last one was lost (xen-api gave up logging in again) or failed.
 */
function lazyXapi(settings: Settings, log: Logger): { get: () => Promise<XapiClient>; close(): Promise<void> } {
  let current: Promise<XapiClient> | undefined;
  // Read once (the CA file included), when first needed: later sessions reuse them.
  let options: XapiOptions | undefined;
  const connect = (): Promise<XapiClient> => {
    try {
      options ??= xapiOptions(settings, log);
    } catch (error) {
      return Promise.reject(error);
    }
    const p = XapiClient.connect(options);
    p.then(
      () => log.info(`XAPI: logged in to ${settings.xapi_url} as ${settings.username}`),
      (error: unknown) => {
        log.warn(`XAPI: ${(error as Error).message}`);
        if (current === p) current = undefined;
      },
    );
    return p;
  };
  return {
    get: async () => {
      const pending = current;
      if (pending !== undefined) {
        const client = await pending.catch(() => undefined);
        if (client?.connected === true) return client;
        if (current === pending) {
          current = undefined;
          if (client !== undefined) {
            log.warn(`XAPI: the session to ${settings.xapi_url} was lost; logging in again`);
            void client.close().catch(() => {});
          }
        }
      }
      current ??= connect();
      return current;
    },
    close: async () => {
      const client = await current?.catch(() => undefined);
      current = undefined;
      await client?.close().catch(() => {});
    },
  };
}
