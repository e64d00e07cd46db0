import type { Logger } from 'pino';
import type { Bus, Closer, Settle } from './bus/bus.js';
import { PermanentError, RetryLaterError, StoppedError, errorInfo } from './errors.js';
import { eventSubject, jobSubject, progressSubject } from './events.js';
import type { PhaseDone, PhaseFailed, PhaseProgress, PhaseStarted } from './events.js';
import type { Clock, Ctx, FunctionDef, Origin } from './function.js';
import { noHooks } from './hooks/runner.js';
import type { HookRunner } from './hooks/runner.js';
import type { XapiClient } from './xapi/client.js';

/** What the runtime gives every handler, besides its input. */
export interface ServeDeps {
  bus: Bus;
  log: Logger;
  xapi: () => Promise<XapiClient>;
  clock: Clock;
  origin: Origin;
  /** Aborts running handlers when the process shuts down. */
  signal?: AbortSignal;
  /** Least time between two progress signals of one job, in ms (default 1000). */
  progressEveryMs?: number;
  /**
   * The operator's hooks: a process that runs hooks configured in its settings must pass
   * `hooksFromSettings(settings, …)` (runtime/hooks/settings.ts). Default: `noHooks`.
   */
  hooks?: HookRunner;
  /** Told how each delivery ended and how long it took (`vmbackup worker --metrics-listen`). */
  metrics?: { job(fn: string, outcome: 'done' | 'failed' | 'retry', ms: number): void };
}

export interface ServeOptions {
  /** Deliveries of one function handled at the same time in this process. */
  concurrency: (fn: FunctionDef) => number;
  /** How long a delivery may go without a heartbeat before redelivery (NATS ack_wait). */
  ackWaitMs?: number;
  /**
   * What `deps.signal` means. `hand-back` (default; NATS workers): running handlers are
   * aborted and their jobs handed back, for another worker or the next start. `stop` (the
   * embedded run, stopped by SIGTERM): there is nobody to hand a job back to, so an aborted
   * handler's phase is reported failed with code STOPPED, and a job delivered after the signal
   * is reported so without being run — unless `afterStop(fn)` says otherwise:
   *
   *   'skip'     the default, above;
   *   'aborted'  run, with its signal already aborted (export: it destroys its snapshot and
   *              transfers nothing);
   *   'finish'   run to the end with a live signal, also when under way at the signal
   *              (post-vm hooks: they undo what the pre-vm hooks did; run-end hooks).
   */
  shutdown?: { mode: 'hand-back' } | { mode: 'stop'; afterStop?: (fn: FunctionDef) => 'skip' | 'aborted' | 'finish' };
}

/**
 * Binds functions to their subjects on a bus. This is the edge: it decodes and validates
 * each message, calls `handle` with typed input, validates the output, publishes the phase's
 * events and maps the outcome to delivery — the one place where a failure is logged:
 *
 *   success → publish `done`, ack
 *   invalid input, PermanentError, or last attempt → publish `failed`, term
 *   RetryLaterError → nak after its delay;  any other error → nak after the backoff
 *   aborted by `deps.signal` → nak at once (`hand-back`), or publish `failed` STOPPED, term (`stop`)
 */
export async function serve(fns: readonly FunctionDef[], deps: ServeDeps, opts: ServeOptions): Promise<Closer> {
  const closers: Closer[] = [];
  for (const fn of fns) {
    closers.push(
      await deps.bus.work(
        jobSubject(fn.name),
        { concurrency: opts.concurrency(fn), maxDeliver: fn.retry.maxDeliver, ...(opts.ackWaitMs !== undefined ? { ackWaitMs: opts.ackWaitMs } : {}) },
        async (delivery) => {
          const started = Date.now();
          const settle = await handleDelivery(fn, delivery, deps, opts.shutdown ?? { mode: 'hand-back' });
          deps.metrics?.job(fn.name, settle.kind === 'ack' ? 'done' : settle.kind === 'retry' ? 'retry' : 'failed', Date.now() - started);
          return settle;
        },
      ),
    );
  }
  return { close: async () => void (await Promise.all(closers.map((c) => c.close()))) };
}

interface JobIds {
  runId: string;
  jobId: string;
  try: number;
}

function idsOf(data: unknown): JobIds | undefined {
  if (typeof data !== 'object' || data === null) return undefined;
  const d = data as Record<string, unknown>;
  if (typeof d.runId !== 'string' || typeof d.jobId !== 'string') return undefined;
  return { runId: d.runId, jobId: d.jobId, try: typeof d.try === 'number' ? d.try : 1 };
}

/** Why the runtime is shutting down, for messages: the signal's name (`SIGTERM`). */
function shutdownReason(signal: AbortSignal): string {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason.message : typeof reason === 'string' ? reason : 'shutdown';
}

async function handleDelivery(
  fn: FunctionDef,
  delivery: { data: unknown; attempt: number; working(): void; subject: string },
  deps: ServeDeps,
  shutdown: NonNullable<ServeOptions['shutdown']>,
): Promise<Settle> {
  const started = Date.now();
  const parsed = fn.subject.schema.safeParse(delivery.data);
  const ids = parsed.success ? (parsed.data as JobIds) : idsOf(delivery.data);
  const vmRef = parsed.success ? (parsed.data as { vm?: { name?: string; uuid?: string } }).vm : undefined;
  const vmName = vmRef?.name;
  // The uuid too: two VMs may share a name, and a worker serves many runs at once.
  const log = deps.log.child({
    fn: fn.name,
    subject: delivery.subject,
    ...(ids !== undefined ? { runId: ids.runId, jobId: ids.jobId, try: ids.try } : {}),
    ...(vmName !== undefined ? { vm: vmName } : {}),
    ...(vmRef?.uuid !== undefined ? { vmUuid: vmRef.uuid } : {}),
    attempt: delivery.attempt,
  });
  const who = vmName !== undefined ? `${vmName}: ` : '';
  const base = (at: Date) => ({ runId: ids!.runId, jobId: ids!.jobId, fn: fn.name, try: ids!.try, attempt: delivery.attempt, at: at.toISOString() });
  const eventId = (outcome: string) => `${ids!.runId}:${ids!.jobId}:${ids!.try}:${fn.name}:${outcome}`;

  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    const error = new PermanentError('BAD_INPUT', `invalid ${fn.name} message: ${issues}`);
    log.error({ err: error }, error.message);
    if (ids !== undefined) {
      const failed: PhaseFailed = { ...base(deps.clock.now()), outcome: 'failed', durationMs: 0, error: errorInfo(error), input: delivery.data };
      await deps.bus.publish(eventSubject(ids.runId, fn.name, 'failed'), failed, { id: eventId('failed') });
    }
    return { kind: 'term' };
  }

  const ids2 = ids!;
  if (delivery.attempt > fn.retry.maxDeliver) {
    // Every attempt was delivered and none settled (its worker died each time). The NATS bus
    // delivers once more so that the job is reported failed instead of silently dropped.
    const error = new PermanentError(
      'GAVE_UP',
      `${vmName !== undefined ? `${vmName}: ` : ''}${fn.name} given up: ${fn.retry.maxDeliver} deliveries ended without an outcome (the worker died or lost NATS each time)`,
    );
    log.error({ err: error }, error.message);
    const failed: PhaseFailed = { ...base(deps.clock.now()), outcome: 'failed', durationMs: 0, error: errorInfo(error), input: parsed.data };
    await deps.bus.publish(eventSubject(ids2.runId, fn.name, 'failed'), failed, { id: eventId('failed') });
    return { kind: 'term' };
  }
  const stopping = shutdown.mode === 'stop';
  const afterStop = shutdown.mode === 'stop' ? (shutdown.afterStop?.(fn) ?? 'skip') : 'aborted';
  if (stopping && deps.signal?.aborted === true && afterStop === 'skip') {
    // The run is stopped: this phase is not started.
    const error = new StoppedError(`${fn.name} not started: the run was stopped by ${shutdownReason(deps.signal)}`);
    log.info(`${who}${error.message}`);
    const failed: PhaseFailed = { ...base(deps.clock.now()), outcome: 'failed', durationMs: 0, error: errorInfo(error), input: parsed.data };
    await deps.bus.publish(eventSubject(ids2.runId, fn.name, 'failed'), failed, { id: eventId('failed') });
    return { kind: 'term' };
  }
  const startedEvent: PhaseStarted = { ...base(deps.clock.now()), outcome: 'started', ...(vmName !== undefined ? { label: vmName } : {}) };
  // Its id names the attempt: a delivery again is started again, a publish repeated after a
  // lost acknowledgement is not stored twice.
  await deps.bus.publish(eventSubject(ids2.runId, fn.name, 'started'), startedEvent, { id: `${eventId('started')}:${delivery.attempt}` });

  const abort = new AbortController();
  const onShutdown = () => abort.abort(deps.signal?.reason);
  const linked = deps.signal !== undefined && afterStop !== 'finish';
  if (linked) {
    // A delivery that begins after the signal begins aborted.
    if (deps.signal!.aborted) onShutdown();
    else deps.signal!.addEventListener('abort', onShutdown, { once: true });
  }
  const ctx: Ctx = {
    log,
    xapi: deps.xapi,
    clock: deps.clock,
    origin: deps.origin,
    signal: abort.signal,
    heartbeat: () => delivery.working(),
    progress: progressSignal(deps, { ...base(deps.clock.now()), ...(vmName !== undefined ? { label: vmName } : {}) }),
    attempt: delivery.attempt,
    hooks: deps.hooks ?? noHooks,
  };
  try {
    const raw = await fn.handle(parsed.data, ctx);
    const output = fn.output.parse(raw);
    const done: PhaseDone = { ...base(deps.clock.now()), outcome: 'done', durationMs: Date.now() - started, output };
    await deps.bus.publish(eventSubject(ids2.runId, fn.name, 'done'), done, { id: eventId('done') });
    log.debug({ durationMs: done.durationMs }, `${fn.name} done`);
    return { kind: 'ack' };
  } catch (error) {
    const info = errorInfo(error);
    if (stopping && linked && abort.signal.aborted) {
      // Stopped: said once here; the coordinator neither retries nor goes on with this job.
      const stopped = new StoppedError(`${fn.name} stopped by ${shutdownReason(deps.signal!)}`, {}, { cause: error });
      log.error({ err: error, code: info.code }, `${who}${stopped.message}`);
      const failed: PhaseFailed = { ...base(deps.clock.now()), outcome: 'failed', durationMs: Date.now() - started, error: errorInfo(stopped), input: parsed.data };
      await deps.bus.publish(eventSubject(ids2.runId, fn.name, 'failed'), failed, { id: eventId('failed') });
      return { kind: 'term' };
    }
    if (deps.signal?.aborted === true && !(error instanceof PermanentError)) {
      // Shutting down: hand the job back at once for another worker (or the next start).
      log.warn({ code: info.code }, `${who}${fn.name} interrupted by shutdown; job handed back`);
      return { kind: 'retry', delayMs: 0 };
    }
    const last = error instanceof PermanentError || delivery.attempt >= fn.retry.maxDeliver;
    if (!last) {
      const delayMs =
        error instanceof RetryLaterError ? error.delayMs : (fn.retry.backoffMs[Math.min(delivery.attempt - 1, fn.retry.backoffMs.length - 1)] ?? 1_000);
      log.warn({ err: error, code: info.code, delayMs }, `${who}${fn.name} failed (${info.code}), retrying in ${Math.round(delayMs / 1000)} s: ${info.message}`);
      return { kind: 'retry', delayMs };
    }
    log.error({ err: error, code: info.code }, `${who}${fn.name} failed: ${info.message}`);
    const failed: PhaseFailed = { ...base(deps.clock.now()), outcome: 'failed', durationMs: Date.now() - started, error: info, input: parsed.data };
    await deps.bus.publish(eventSubject(ids2.runId, fn.name, 'failed'), failed, { id: eventId('failed') });
    return { kind: 'term' };
  } finally {
    if (linked) deps.signal!.removeEventListener('abort', onShutdown);
  }
}

/**
 * A job's `ctx.progress`: sends a PhaseProgress signal on the bus (Bus.notify) at most once
 * per `deps.progressEveryMs`, the first at once, so that a phase may call it for every chunk
 * it writes. Only the last figures count: a call within the interval is not queued.
 */
function progressSignal(deps: ServeDeps, ids: { runId: string; jobId: string; fn: string; try: number; label?: string }): (bytes: number, total?: number) => void {
  const every = deps.progressEveryMs ?? 1_000;
  const subject = progressSubject(ids.runId, ids.jobId);
  let last = -Infinity;
  return (bytes, total) => {
    const now = Date.now();
    if (now - last < every) return;
    last = now;
    const signal: PhaseProgress = {
      runId: ids.runId,
      jobId: ids.jobId,
      fn: ids.fn,
      try: ids.try,
      ...(ids.label !== undefined ? { label: ids.label } : {}),
      bytes,
      ...(total !== undefined ? { total } : {}),
      at: deps.clock.now().toISOString(),
    };
    deps.bus.notify(subject, signal);
  };
}
