import type { Logger } from 'pino';
import type { Bus } from '../bus/bus.js';
import { formatSeconds } from '../units.js';
import { runCommand } from './command.js';
import { ABORT_POINTS, hookSubject } from './event.js';
import type { EventOf, HookPoint, HookResult } from './event.js';
import { postHook } from './http.js';
import { HOOK_KINDS } from './kind.js';
import type { HookKind, KindResult } from './kind.js';
import { askNats } from './nats.js';

/**
 * Runs the operator's hooks of a point and says whether to go on. What handlers get as
 * `ctx.hooks`; built from the settings by `hooksFromSettings` (settings.ts), or `noHooks`.
 *
 * Never throws for a hook's failure (the policies turn it into continue or abort); throws only
 * when `signal` is aborted (shutdown), so the runtime hands the job back.
 *
 * @example
 *   const r = await ctx.hooks.run('pre-vm', event, { log: ctx.log, signal: ctx.signal, heartbeat: ctx.heartbeat });
 *   if (r.decision === 'abort') return { ...input, skipped: { reason: r.reasons.join('; ') } };
 */
export interface HookRunner {
  run<P extends HookPoint>(point: P, event: EventOf<P>, opts?: HookRunOptions): Promise<HookResult>;
}

export interface HookRunOptions {
  /** The job's logger (bound to run and VM); default: the runner's. */
  log?: Logger;
  /** Shutdown: running commands are killed and `run` throws. */
  signal?: AbortSignal;
  /** Called every few seconds while hooks run, so a long hook does not look like a dead job. */
  heartbeat?: () => void;
}

/** How often `run` calls its `heartbeat` while hooks run. */
const HEARTBEAT_MS = 5_000;

/** The runner when no hook is configured: always continue. */
export const noHooks: HookRunner = {
  run: async () => ({ decision: 'continue', reasons: [], warnings: [] }),
};

/** What to do when a hook fails or does not answer in time. */
export type HookPolicy = 'continue' | 'abort';

/** The hooks, as the settings configure them (settings.ts builds it, with checks). */
export interface HookConfig {
  /** Program and arguments per point. */
  commands: Partial<Record<HookPoint, readonly string[]>>;
  /** URL per point. */
  urls: Partial<Record<HookPoint, string>>;
  /** HMAC secret of HTTP hooks (required when a URL is set). */
  secret?: string;
  /** Ask on `vmbackup.hooks.<point>` at every point. */
  nats: boolean;
  /** NATS replies to wait for (0 = all within the timeout). */
  natsReplies: number;
  timeoutMs: number;
  onTimeout: HookPolicy;
  onFailure: HookPolicy;
}

export interface HookRunnerDeps {
  /** The process logger; `run` may pass a child bound to the job. */
  log: Logger;
  /** Environment command hooks start from. */
  env: Readonly<Record<string, string | undefined>>;
  /** Required when `config.nats`. */
  bus?: Bus;
  now?: () => Date;
  /** Between SIGTERM and SIGKILL of a command past its timeout. */
  killGraceMs?: number;
  /** How often `run` calls its `heartbeat` (default 5 s). */
  heartbeatMs?: number;
}

/** True when at least one hook of any kind is configured for some point. */
export function anyHook(config: HookConfig): boolean {
  return config.nats || Object.keys(config.commands).length > 0 || Object.keys(config.urls).length > 0;
}

/**
 * The runner of a configuration. For each point the configured kinds run one after the other:
 * command, HTTP, NATS at pre-vm and run-start; NATS, HTTP, command at post-vm and run-end (the
 * reverse, as a teardown undoes a setup). Each kind's result, then the policy:
 *
 *   abort    → abort (at pre-vm/run-start; the kinds after it do not run), else a warning
 *   failed   → `hooks_on_failure` (continue with a warning, or abort)
 *   timeout  → `hooks_on_timeout` (continue with a warning, or abort)
 *
 * At post-vm and run-end every kind runs, whatever the others said.
 */
export function createHookRunner(config: HookConfig, deps: HookRunnerDeps): HookRunner {
  if (!anyHook(config)) return noHooks;
  if (config.nats && deps.bus === undefined) throw new Error('hooks: NATS hooks need a bus');
  const now = deps.now ?? (() => new Date());
  return {
    async run(point, event, opts = {}) {
      if (event.point !== point) throw new Error(`hooks: a ${event.point} event given for ${point}`);
      const log = opts.log ?? deps.log;
      // Progress lines name their VM (or run): hooks of several VMs run at once.
      const who = hookSubject(event);
      const canAbort = ABORT_POINTS.has(point);
      const kinds = canAbort ? HOOK_KINDS : [...HOOK_KINDS].reverse();
      const reasons: string[] = [];
      const warnings: string[] = [];
      const beat = opts.heartbeat !== undefined ? setInterval(opts.heartbeat, deps.heartbeatMs ?? HEARTBEAT_MS) : undefined;
      try {
        for (const kind of kinds) {
          const started = Date.now();
          const r = await runKind(kind, config, deps, point, event, { log, ...(opts.signal !== undefined ? { signal: opts.signal } : {}), now: now() });
          if (r === undefined) continue;
          if (opts.signal?.aborted === true) throw new Error(`${point} ${kind} hook interrupted by shutdown`);
          const took = formatSeconds(Date.now() - started);
          const decision = decide(r, config, canAbort);
          const what = `${point} ${kind} hook`;
          if (decision === 'abort') {
            const reason = `${what}: ${describe(r)}`;
            reasons.push(reason);
            log.info({ hook: kind, point, outcome: r.outcome, durationMs: Date.now() - started }, `${who}: ${reason} → abort (${took})`);
            break;
          }
          if (r.outcome === 'continue') {
            log.info({ hook: kind, point, durationMs: Date.now() - started }, `${who}: ${what}: continue${r.reason !== '' ? ` (${r.reason})` : ''} (${took})`);
            continue;
          }
          const policy = canAbort ? `; going on (${r.outcome === 'timeout' ? 'hooks_on_timeout' : 'hooks_on_failure'} = continue)` : '';
          const warning =
            r.outcome === 'abort'
              ? `${what} answered abort (${r.reason}): ignored, a ${point} hook cannot abort`
              : `${what} ${r.outcome === 'timeout' ? 'timed out' : 'failed'}: ${r.reason}${policy}`;
          warnings.push(warning);
          // run-end's warnings reach no summary (it is out): said in the log. The others are
          // the job's or the run's warnings, reported in the summary.
          log[point === 'run-end' ? 'warn' : 'info']({ hook: kind, point, outcome: r.outcome, durationMs: Date.now() - started }, `${who}: ${warning}`);
        }
      } finally {
        clearInterval(beat);
      }
      return { decision: reasons.length > 0 ? 'abort' : 'continue', reasons, warnings };
    },
  };
}

function decide(r: KindResult, config: HookConfig, canAbort: boolean): 'continue' | 'abort' {
  if (!canAbort) return 'continue';
  if (r.outcome === 'abort') return 'abort';
  if (r.outcome === 'failed') return config.onFailure;
  if (r.outcome === 'timeout') return config.onTimeout;
  return 'continue';
}

function describe(r: KindResult): string {
  if (r.outcome === 'failed') return `failed (${r.reason}; hooks_on_failure = abort)`;
  if (r.outcome === 'timeout') return `timed out (${r.reason}; hooks_on_timeout = abort)`;
  return r.reason;
}

async function runKind(
  kind: HookKind,
  config: HookConfig,
  deps: HookRunnerDeps,
  point: HookPoint,
  event: EventOf<HookPoint>,
  opts: { log: Logger; signal?: AbortSignal; now: Date },
): Promise<KindResult | undefined> {
  const signal = opts.signal !== undefined ? { signal: opts.signal } : {};
  switch (kind) {
    case 'command': {
      const argv = config.commands[point];
      if (argv === undefined) return undefined;
      return runCommand(argv, event, { timeoutMs: config.timeoutMs, env: deps.env, log: opts.log, ...signal, ...(deps.killGraceMs !== undefined ? { killGraceMs: deps.killGraceMs } : {}) });
    }
    case 'http': {
      const url = config.urls[point];
      if (url === undefined) return undefined;
      return postHook(url, event, { secret: config.secret ?? '', timeoutMs: config.timeoutMs, now: opts.now, ...signal });
    }
    case 'nats':
      if (!config.nats || deps.bus === undefined) return undefined;
      return askNats(deps.bus, event, { timeoutMs: config.timeoutMs, replies: config.natsReplies });
  }
}
