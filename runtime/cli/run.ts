import { createHash } from 'node:crypto';
import { openNats } from '../bus/nats-connect.js';
import type { NatsRuntime } from '../bus/nats-connect.js';
import { redactUrl } from '../bus/nats-connect.js';
import { commandHelp } from '../config/args.js';
import { UsageError } from '../errors.js';
import { PhaseEvent, PhaseProgress, eventSubject, runEvents, runProgress } from '../events.js';
import { systemClock } from '../function.js';
import { captureConsole } from '../log.js';
import type { Logger } from '../log.js';
import { describeUnconsumed, runFunctions, unconsumedWork } from '../run/consumers.js';
import type { Unconsumed } from '../run/consumers.js';
import { newRunId, startRun } from '../run/start.js';
import type { Bus } from '../bus/bus.js';
import type { RunStore } from '../run/store.js';
import { RunSummary, summarize } from '../run/summary.js';
import { formatBytes, formatSeconds } from '../units.js';
import { fatalExit, report, runEnded, runOptions } from './backup.js';
import { reportTargets } from '../report/report.js';
import type { ReportTargets } from '../report/report.js';
import type { Io } from './io.js';
import { VERSION, fail } from './io.js';
import { TerminalProgress, progressWanted } from './progress-display.js';
import { commandLogger, loadCommandSettings } from './settings.js';

/**
 * `vmbackup run --nats URL [selection flags]` — submits a run to the workers on NATS, shows
 * its progress, and prints the same summary as the embedded `vmbackup` with the same exit
 * codes: 0 all backed up (warnings allowed), 1 a backup failed, 2 the run could not start,
 * NATS is unreachable, or a usage / config error. The selection flags and config keys are
 * the backup command's (`runOptions`); the backup directory is the workers'.
 *
 * `--trigger-id ID` derives the run id from ID: the same trigger sent twice makes one run
 * (the second `run` follows the first's run). `--timeout S` stops waiting after S seconds
 * (exit 2; the run goes on, `vmbackup status RUN` shows it).
 *
 * Nothing waits in silence: within a few seconds it says on stderr which of the run's jobs
 * no worker consumes (and whether no worker runs the coordinator), and `--wait-timeout S`
 * (default 300) stops waiting (exit 2) once the run has gone S seconds without progress: no
 * event of the run, and no phase of it under way. A long export is under way: it is never
 * cut short. The run stays queued and starts when a worker comes.
 */
export async function runCommand(argv: readonly string[], io: Io): Promise<number> {
  let extras: Extras;
  try {
    extras = takeExtras(argv, { '--trigger-id': 'value', '--timeout': 'value', '--wait-timeout': 'value' });
  } catch (error) {
    return fail(io, error);
  }
  const loaded = loadCommandSettings(extras.rest, io, { command: 'run', help: () => commandHelp('run', { version: VERSION }) });
  if (typeof loaded === 'number') return loaded;
  const { settings, flags } = loaded;
  let timeoutS: number | undefined;
  let waitTimeoutS: number;
  let reports: ReportTargets;
  try {
    reports = reportTargets(settings);
    timeoutS = seconds(extras.values['--timeout'], '--timeout');
    waitTimeoutS = seconds(extras.values['--wait-timeout'], '--wait-timeout') ?? DEFAULT_WAIT_TIMEOUT_S;
  } catch (error) {
    return fail(io, error);
  }
  const triggerId = extras.values['--trigger-id'] as string | undefined;
  const startedAt = systemClock.now();
  const runId = triggerId !== undefined ? runIdForTrigger(triggerId) : newRunId(startedAt);
  // Progress lines end with the run and the VM they are about (two VMs may share a name).
  // A terminal gets a live line per VM; cron's output (not a terminal) stays as it was.
  const display = !flags.json && progressWanted(flags.progress, io.stdout) ? new TerminalProgress(io) : undefined;
  const log = commandLogger(settings, display?.io() ?? io, { json: flags.json, file: true, context: true });
  const restoreConsole = captureConsole(log);
  let nats: NatsRuntime | undefined;
  const stop = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => stop.abort(new Error(signal));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    nats = await openNats(settings, log, { name: 'vmbackup run' });
    const follower = await followRun(nats, runId, log, {
      runEndMs: (settings.hook_timeout + 5) * 1000,
      ...(display !== undefined ? { onEvent: (e: PhaseEvent) => display.event(e), onProgress: (p: PhaseProgress) => display.signal(p) } : {}),
    });
    const options = runOptions(settings, loaded);
    const submitted = await startRun(nats.store, nats.bus, { runId, options, startedAt, trigger: 'cli' });
    if (submitted) log.info(`vmbackup ${VERSION} run ${runId}: submitted to NATS ${redactUrl(settings.nats_url!)} (backups to ${options.backupDir} on the workers)`);
    else log.info(`run ${runId} exists already (trigger ${triggerId ?? runId} was sent before): following it`);
    const watch = watchProgress(nats.bus, follower, { runId, fns: runFunctions(options), waitMs: waitTimeoutS * 1000, log });
    const outcome = await Promise.race([
      follower.summary.then((summary) => ({ summary })),
      abortable(stop.signal).then((reason) => ({ stopped: `${reason.message} received`, code: 'NOT_FINISHED' })),
      watch.stalled.then((reason) => ({ stopped: reason, code: 'NO_PROGRESS' })),
      ...(timeoutS !== undefined ? [delay(timeoutS * 1000).then(() => ({ stopped: `no summary within ${timeoutS} s`, code: 'NOT_FINISHED' }))] : []),
    ]);
    watch.stop();
    await follower.close();
    display?.stop();
    if ('stopped' in outcome) {
      if (outcome.code === 'NO_PROGRESS') log.error(`${outcome.stopped}: stopped waiting; run ${runId} stays queued and goes on when a worker takes it (vmbackup status ${runId})`);
      else log.warn(`${outcome.stopped}: stopped waiting; run ${runId} goes on on the workers (vmbackup status ${runId})`);
      if (flags.json) io.stdout.write(JSON.stringify({ runId, status: 'unknown', exitCode: 2, error: { code: outcome.code, message: outcome.stopped } }) + '\n');
      return 2;
    }
    report(outcome.summary, settings, io, flags.json);
    await runEnded(outcome.summary, settings, reports, log);
    return outcome.summary.exitCode;
  } catch (error) {
    display?.stop();
    return fatalExit(error, log, io, { runId, json: flags.json });
  } finally {
    display?.stop();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await nats?.close().catch(() => {});
    restoreConsole();
    log.flush();
  }
}

/**
 * The run id of a trigger: the same id always gives the same run, so a trigger sent twice
 * starts one run (the run store's create refuses the second).
 *
 * @example runIdForTrigger('nightly-2026-11-26') // → 't-nightly-2026-11-26'
 */
export function runIdForTrigger(triggerId: string): string {
  if (/^[A-Za-z0-9_-]{1,60}$/.test(triggerId)) return `t-${triggerId}`;
  return `th-${createHash('sha256').update(triggerId).digest('hex').slice(0, 32)}`;
}

/** What a client following a run sees. */
export interface RunFollower {
  /** Resolves with the run's summary: its `run.finished` event, or its finished state. */
  summary: Promise<RunSummary>;
  /** True once any event of the run was seen. */
  heard(): boolean;
  /** When the last event of the run was seen (ms since the epoch; 0 before any). */
  lastEventAt(): number;
  /** True while a phase of the run has started and not ended (a worker works on it). */
  underWay(): boolean;
  close(): Promise<void>;
}

/**
 * Follows a run: logs its phases as they happen and resolves with its summary once the run
 * is over — as the embedded run, after its `run-end` hooks, when a worker takes them up
 * within `runEndPickupMs` (they then get `runEndMs`). Should the `run.finished` event be
 * missed (NATS restarted under this client, or the run ended before it followed), the
 * summary comes from the run's state once that says finished.
 */
export async function followRun(
  nats: Pick<NatsRuntime, 'bus' | 'store'>,
  runId: string,
  log: Logger,
  opts: {
    pollMs?: number;
    runEndPickupMs?: number;
    runEndMs?: number;
    /** Sees each phase event of the run (the terminal's progress lines). */
    onEvent?: (event: PhaseEvent) => void;
    /** Sees the run's progress signals (bytes moved, about once a second per job). */
    onProgress?: (progress: PhaseProgress) => void;
  } = {},
): Promise<RunFollower> {
  let heard = false;
  let lastEventAt = 0;
  /** `<jobId> <fn>` of each phase started and not yet done or failed. */
  const running = new Set<string>();
  let resolve!: (s: RunSummary) => void;
  const summary = new Promise<RunSummary>((r) => (resolve = r));
  const labels = new Map<string, string>();
  const finishedSubject = eventSubject(runId, 'run', 'finished');
  const timers: NodeJS.Timeout[] = [];
  let finished: RunSummary | undefined;
  let runEnd: 'waiting' | 'started' | 'over' = 'waiting';
  const settleAfterRunEnd = () => {
    if (finished !== undefined && runEnd === 'over') resolve(finished);
  };
  const sub = await nats.bus.subscribe(runEvents(runId), {}, async (subject, data) => {
    heard = true;
    lastEventAt = Date.now();
    if (subject === finishedSubject) {
      const parsed = RunSummary.safeParse(data);
      if (!parsed.success || finished !== undefined) return;
      finished = parsed.data;
      // The run-end hooks (mail, unmount …) belong to the run: wait for them, if served.
      timers.push(
        setTimeout(() => {
          if (runEnd === 'waiting') runEnd = 'over';
          settleAfterRunEnd();
        }, opts.runEndPickupMs ?? 5_000),
        setTimeout(() => {
          if (runEnd !== 'over') log.warn(`run ${runId}: the run-end hooks have not finished in time; not waiting for them`);
          runEnd = 'over';
          settleAfterRunEnd();
        }, opts.runEndMs ?? 65_000),
      );
      settleAfterRunEnd();
      return;
    }
    const event = PhaseEvent.safeParse(data);
    if (!event.success) return;
    const phase = `${event.data.jobId} ${event.data.fn}`;
    if (event.data.outcome === 'started') running.add(phase);
    else running.delete(phase);
    if (event.data.fn === 'run-end') {
      runEnd = event.data.outcome === 'started' ? 'started' : 'over';
      if (event.data.outcome === 'failed') log.warn(`run-end hooks failed: ${event.data.error.message}`);
      settleAfterRunEnd();
      return;
    }
    opts.onEvent?.(event.data);
    progress(event.data, labels, log);
  });
  const onProgress = opts.onProgress;
  const signals =
    onProgress !== undefined
      ? await nats.bus.listen(runProgress(runId), (_s, data) => {
          const p = PhaseProgress.safeParse(data);
          if (p.success) onProgress(p.data);
        })
      : undefined;
  // For a finish this client did not see happen (a live one waits for its hooks above): the
  // state said finished twice in a row and still no run.finished event came.
  let finishedPolls = 0;
  const poll = setInterval(() => {
    if (finished !== undefined) return;
    void finishedState(nats.store, runId).then(
      (s) => {
        finishedPolls = s === undefined ? 0 : finishedPolls + 1;
        if (s !== undefined && finishedPolls >= 2 && finished === undefined) resolve(s);
      },
      () => {},
    );
  }, opts.pollMs ?? 2_000);
  void summary.finally(() => {
    clearInterval(poll);
    for (const t of timers) clearTimeout(t);
  });
  return {
    summary,
    heard: () => heard,
    lastEventAt: () => lastEventAt,
    underWay: () => running.size > 0,
    close: async () => {
      clearInterval(poll);
      for (const t of timers) clearTimeout(t);
      await sub.close();
      await signals?.close();
    },
  };
}

/** `vmbackup run --wait-timeout`'s default: five minutes without progress. */
export const DEFAULT_WAIT_TIMEOUT_S = 300;

/**
 * Watches a submitted run for work that waits in silence. Every few seconds (the first look
 * after 2 s) it asks the bus which of the run's functions (`fns`) have jobs queued that no
 * worker consumes, and whether a worker runs the coordinator: each is said once on stderr,
 * naming it (and again if it comes back after a worker took it). `stalled` resolves once
 * the run has gone `waitMs` without progress — no event of the run, no phase of it under
 * way — with the reason; never while a phase runs, however long (a big export).
 */
export function watchProgress(
  bus: Bus,
  follower: Pick<RunFollower, 'lastEventAt' | 'underWay'>,
  opts: { runId: string; fns: readonly string[]; waitMs: number; log: Logger; firstMs?: number; everyMs?: number },
): { stalled: Promise<string>; stop(): void } {
  const started = Date.now();
  let progressAt = started;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let missing: Unconsumed[] = [];
  const warned = new Set<string>();
  let resolve!: (reason: string) => void;
  const stalled = new Promise<string>((r) => (resolve = r));
  const tick = async (): Promise<void> => {
    try {
      const found = await unconsumedWork(bus, opts.fns);
      // Functions with nothing queued may wait for no worker yet: only what is stuck counts.
      missing = (found ?? []).filter((m) => m.kind === 'coordinator' || m.queued > 0);
    } catch (error) {
      opts.log.debug({ err: error }, `cannot tell who consumes run ${opts.runId}'s jobs: ${(error as Error).message}`);
    }
    if (stopped) return;
    const fresh = missing.filter((m) => !warned.has(m.name));
    if (fresh.length > 0) opts.log.warn(`${describeUnconsumed(fresh)}: run ${opts.runId} waits for it`);
    for (const m of fresh) warned.add(m.name);
    for (const name of [...warned]) {
      if (missing.some((m) => m.name === name)) continue;
      warned.delete(name);
      opts.log.info(`${name === 'coordinator' ? 'a worker runs the coordinator' : `a worker consumes ${name} jobs`} now`);
    }
    const now = Date.now();
    if (follower.underWay()) progressAt = now;
    progressAt = Math.max(progressAt, follower.lastEventAt());
    if (now - progressAt >= opts.waitMs) {
      const s = Math.round(opts.waitMs / 1000);
      resolve(`run ${opts.runId} made no progress for ${s} s (--wait-timeout ${s})${missing.length > 0 ? `: ${describeUnconsumed(missing)}` : ''}`);
      return;
    }
    const next = Math.min(opts.everyMs ?? 5_000, Math.max(100, progressAt + opts.waitMs - now));
    timer = setTimeout(() => void tick(), next);
  };
  timer = setTimeout(() => void tick(), Math.min(opts.firstMs ?? 2_000, opts.waitMs));
  return {
    stalled,
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

/** The summary of a finished run from its state in the store; undefined while it runs. */
export async function finishedState(store: RunStore, runId: string): Promise<RunSummary | undefined> {
  const current = await store.header(runId);
  if (current === undefined || current.header.status !== 'finished') return undefined;
  return summarize(current.header, await store.allJobs(runId));
}

/**
 * One progress line of `vmbackup run` for a phase event (debug for a start). Its record is
 * bound to the run, the job and, for a VM job, the VM's name and uuid (`vmUuid`, from the
 * job id `vm.<uuid>`): two VMs sharing a name give two distinguishable lines.
 */
export function progress(event: PhaseEvent, labels: Map<string, string>, log: Logger): void {
  const vmUuid = event.jobId.startsWith('vm.') ? event.jobId.slice(3) : undefined;
  if (event.outcome === 'started' && event.label !== undefined) labels.set(event.jobId, event.label);
  const output =
    event.outcome === 'done' ? (event.output as { vm?: { name?: string }; bytes?: number; vmJobs?: unknown[]; skipped?: { reason?: string } } | undefined) : undefined;
  const who = labels.get(event.jobId) ?? output?.vm?.name ?? event.jobId;
  const line = log.child({ runId: event.runId, jobId: event.jobId, ...(who !== event.jobId ? { vm: who } : {}), ...(vmUuid !== undefined ? { vmUuid } : {}) });
  if (event.outcome === 'started') {
    line.debug(`${who}: ${event.fn} started`);
    return;
  }
  // A delivery after the first: the worker that had the job died or let it go.
  const took = `${formatSeconds(event.durationMs)}${event.attempt > 1 ? ` (delivery ${event.attempt}: an earlier worker did not finish it)` : ''}`;
  if (event.outcome === 'failed') {
    // An error, as the embedded command logs it: the phase gave up (the coordinator may
    // still back the VM up again from a new snapshot; the summary says how it ended).
    line.error(`${who}: ${event.fn} failed (${event.error.code}): ${event.error.message}`);
    return;
  }
  if (event.fn === 'pre-hook' && output?.skipped !== undefined) line.warn(`${who}: skipped by its pre-vm hooks: ${output.skipped.reason ?? 'no reason given'}`);
  else if (event.fn === 'plan' && Array.isArray(output?.vmJobs)) line.info(`plan: ${output.vmJobs.length} VM(s) to back up`);
  else if (event.fn === 'export' && typeof output?.bytes === 'number') line.info(`${who}: exported ${formatBytes(output.bytes)} in ${took}`);
  else line.info(`${who}: ${event.fn} done in ${took}`);
}

// ---- helpers shared by the NATS commands (worker, run, status, invoke) ----

export type Extras = { rest: string[]; values: Record<string, string | true | undefined> };

/**
 * Takes a command's own options (not settings) out of argv before loadSettings sees it:
 * `--opt value`, `--opt=value`, or a switch.
 *
 * @example takeExtras(['--input', '{}', '-b', '/x'], { '--input': 'value' }) // → { rest: ['-b', '/x'], values: { '--input': '{}' } }
 */
export function takeExtras(argv: readonly string[], spec: Record<string, 'value' | 'switch'>): Extras {
  const rest: string[] = [];
  const values: Extras['values'] = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      rest.push(...argv.slice(i));
      break;
    }
    const eq = arg.indexOf('=');
    const name = arg.startsWith('--') && eq > 0 ? arg.slice(0, eq) : arg;
    const kind = spec[name];
    if (kind === undefined) {
      rest.push(arg);
      continue;
    }
    if (kind === 'switch') {
      if (name !== arg) throw new UsageError(`${name} takes no value`);
      values[name] = true;
    } else if (name !== arg) {
      values[name] = arg.slice(eq + 1);
    } else {
      const value = argv[i + 1];
      if (value === undefined) throw new UsageError(`${name} needs a value`);
      values[name] = value;
      i++;
    }
  }
  return { rest, values };
}

/** A positive number of seconds from an option, or undefined. */
export function seconds(value: string | true | undefined, option: string): number | undefined {
  if (value === undefined) return undefined;
  const n = typeof value === 'string' && /^\d+(\.\d+)?$/.test(value.trim()) ? Number(value) : NaN;
  if (!(n > 0)) throw new UsageError(`${option} must be a number of seconds > 0 (got ${JSON.stringify(value)})`);
  return n;
}

function abortable(signal: AbortSignal): Promise<Error> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve(signal.reason as Error);
    else signal.addEventListener('abort', () => resolve(signal.reason as Error), { once: true });
  });
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
