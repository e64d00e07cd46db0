import { createHash } from 'node:crypto';
import { openNats } from '../bus/nats-connect.js';
import type { NatsRuntime } from '../bus/nats-connect.js';
import { redactUrl } from '../bus/nats-connect.js';
import { commandHelp } from '../config/args.js';
import { UsageError } from '../errors.js';
import { PhaseEvent, eventSubject, runEvents } from '../events.js';
import { systemClock } from '../function.js';
import { captureConsole } from '../log.js';
import type { Logger } from '../log.js';
import { newRunId, startRun } from '../run/start.js';
import type { RunStore } from '../run/store.js';
import { RunSummary, summarize } from '../run/summary.js';
import { formatBytes, formatSeconds } from '../units.js';
import { fatalExit, report, runOptions } from './backup.js';
import type { Io } from './io.js';
import { VERSION, fail } from './io.js';
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
 */
export async function runCommand(argv: readonly string[], io: Io): Promise<number> {
  let extras: Extras;
  try {
    extras = takeExtras(argv, { '--trigger-id': 'value', '--timeout': 'value' });
  } catch (error) {
    return fail(io, error);
  }
  const loaded = loadCommandSettings(extras.rest, io, { command: 'run', help: () => commandHelp('run', { version: VERSION }) });
  if (typeof loaded === 'number') return loaded;
  const { settings, flags } = loaded;
  let timeoutS: number | undefined;
  try {
    timeoutS = seconds(extras.values['--timeout'], '--timeout');
  } catch (error) {
    return fail(io, error);
  }
  const triggerId = extras.values['--trigger-id'] as string | undefined;
  const startedAt = systemClock.now();
  const runId = triggerId !== undefined ? runIdForTrigger(triggerId) : newRunId(startedAt);
  const log = commandLogger(settings, io, { json: flags.json, file: true });
  const restoreConsole = captureConsole(log);
  let nats: NatsRuntime | undefined;
  const stop = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => stop.abort(new Error(signal));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    nats = await openNats(settings, log, { name: 'vmbackup run' });
    const follower = await followRun(nats, runId, log, { runEndMs: (settings.hook_timeout + 5) * 1000 });
    const options = runOptions(settings, loaded);
    const submitted = await startRun(nats.store, nats.bus, { runId, options, startedAt, trigger: 'cli' });
    if (submitted) log.info(`vmbackup ${VERSION} run ${runId}: submitted to NATS ${redactUrl(settings.nats_url!)} (backups to ${options.backupDir} on the workers)`);
    else log.info(`run ${runId} exists already (trigger ${triggerId ?? runId} was sent before): following it`);
    const noWorker = setTimeout(
      () => {
        if (!follower.heard()) log.warn(`nothing has happened to run ${runId} for 30 s: is a vmbackup worker (serving plan) connected to NATS ${redactUrl(settings.nats_url!)}?`);
      },
      30_000,
    ).unref();
    const outcome = await Promise.race([
      follower.summary.then((summary) => ({ summary })),
      abortable(stop.signal).then((reason) => ({ stopped: `${reason.message} received` })),
      ...(timeoutS !== undefined ? [delay(timeoutS * 1000).then(() => ({ stopped: `no summary within ${timeoutS} s` }))] : []),
    ]);
    clearTimeout(noWorker);
    await follower.close();
    if ('stopped' in outcome) {
      log.warn(`${outcome.stopped}: stopped waiting; run ${runId} goes on on the workers (vmbackup status ${runId})`);
      if (flags.json) io.stdout.write(JSON.stringify({ runId, status: 'unknown', exitCode: 2, error: { code: 'NOT_FINISHED', message: outcome.stopped } }) + '\n');
      return 2;
    }
    report(outcome.summary, settings, io, flags.json);
    return outcome.summary.exitCode;
  } catch (error) {
    return fatalExit(error, log, io, { runId, json: flags.json });
  } finally {
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
  opts: { pollMs?: number; runEndPickupMs?: number; runEndMs?: number } = {},
): Promise<RunFollower> {
  let heard = false;
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
    if (event.data.fn === 'run-end') {
      runEnd = event.data.outcome === 'started' ? 'started' : 'over';
      if (event.data.outcome === 'failed') log.warn(`run-end hooks failed: ${event.data.error.message}`);
      settleAfterRunEnd();
      return;
    }
    progress(event.data, labels, log);
  });
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
    close: async () => {
      clearInterval(poll);
      for (const t of timers) clearTimeout(t);
      await sub.close();
    },
  };
}

/** The summary of a finished run from its state in the store; undefined while it runs. */
export async function finishedState(store: RunStore, runId: string): Promise<RunSummary | undefined> {
  const current = await store.header(runId);
  if (current === undefined || current.header.status !== 'finished') return undefined;
  return summarize(current.header, await store.allJobs(runId));
}

/** One progress line of `vmbackup run` for a phase event (debug for a start). */
export function progress(event: PhaseEvent, labels: Map<string, string>, log: Logger): void {
  if (event.outcome === 'started') {
    if (event.label !== undefined) labels.set(event.jobId, event.label);
    log.debug(`${event.label ?? event.jobId}: ${event.fn} started`);
    return;
  }
  const output =
    event.outcome === 'done' ? (event.output as { vm?: { name?: string }; bytes?: number; vmJobs?: unknown[]; skipped?: { reason?: string } } | undefined) : undefined;
  const who = labels.get(event.jobId) ?? output?.vm?.name ?? event.jobId;
  // A delivery after the first: the worker that had the job died or let it go.
  const took = `${formatSeconds(event.durationMs)}${event.attempt > 1 ? ` (delivery ${event.attempt}: an earlier worker did not finish it)` : ''}`;
  if (event.outcome === 'failed') {
    // An error, as the embedded command logs it: the phase gave up (the coordinator may
    // still back the VM up again from a new snapshot; the summary says how it ended).
    log.error(`${who}: ${event.fn} failed (${event.error.code}): ${event.error.message}`);
    return;
  }
  if (event.fn === 'pre-hook' && output?.skipped !== undefined) log.warn(`${who}: skipped by its pre-vm hooks: ${output.skipped.reason ?? 'no reason given'}`);
  else if (event.fn === 'plan' && Array.isArray(output?.vmJobs)) log.info(`plan: ${output.vmJobs.length} VM(s) to back up`);
  else if (event.fn === 'export' && typeof output?.bytes === 'number') log.info(`${who}: exported ${formatBytes(output.bytes)} in ${took}`);
  else log.info(`${who}: ${event.fn} done in ${took}`);
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
