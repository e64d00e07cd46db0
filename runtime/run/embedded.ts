import type { Logger } from 'pino';
import { functions } from '../../functions/index.js';
import type { RunOptions } from '../../functions/plan/plan.js';
import { MemoryBus } from '../bus/memory.js';
import { PhaseEvent, PhaseProgress, eventSubject, runEvents, runProgress } from '../events.js';
import type { RunStop } from '../events.js';
import type { Clock, Origin } from '../function.js';
import { noHooks } from '../hooks/runner.js';
import type { HookRunner } from '../hooks/runner.js';
import { startRunEndTrigger } from '../hooks/run-end.js';
import { serve } from '../serve.js';
import type { XapiClient } from '../xapi/client.js';
import { startCoordinator } from './coordinator.js';
import { startRun } from './start.js';
import { MemoryRunStore } from './store.js';
import { RunSummary } from './summary.js';

/** Functions whose jobs are per VM: they run `concurrency` at a time; the others one by one. */
const PER_VM = new Set(['pre-hook', 'snapshot', 'export', 'meta', 'verify', 'prune', 'post-hook']);

/**
 * What runs once the run is stopped (ServeOptions.shutdown): the export, aborted — it destroys
 * its snapshot and transfers nothing —, and the hooks, to the end: the post-vm hooks undo what
 * the pre-vm hooks did (a database quiesced), the run-end hooks report. Nothing else starts.
 */
const AFTER_STOP: Record<string, 'aborted' | 'finish'> = { export: 'aborted', 'post-hook': 'finish', 'run-end': 'finish' };

export interface EmbeddedRunDeps {
  xapi: XapiClient;
  log: Logger;
  clock: Clock;
  origin: Origin;
  /**
   * Stops the run (SIGTERM, SIGINT): exports under way are aborted and their snapshots
   * destroyed; no VM, attempt or phase starts any more but the post-vm hooks; the jobs not
   * started end as failed (STOPPED); the summary and the run-end hooks follow as usual.
   */
  signal?: AbortSignal;
  /** Sees every phase event of the run (progress display). */
  onEvent?: (event: PhaseEvent) => void;
  /** Sees the progress signals of the run's phases (bytes moved, about once a second per job). */
  onProgress?: (progress: PhaseProgress) => void;
  /** The operator's hooks (hooksFromSettings); none by default. */
  hooks?: HookRunner;
}

/**
 * One run on the in-process bus: the same functions, coordinator and events as on NATS,
 * in this process, from plan to summary, then the run-end hooks. What cron runs.
 * `deps.signal` stops the run (a RunStop to the coordinator, see EmbeddedRunDeps.signal).
 */
export async function runEmbedded(run: { runId: string; options: RunOptions; startedAt: Date }, deps: EmbeddedRunDeps): Promise<RunSummary> {
  const bus = new MemoryBus();
  const store = new MemoryRunStore();
  const signal = deps.signal;
  let submitted = false;
  let stopAsked = signal?.aborted === true;
  const publishStop = () => {
    const reason: unknown = signal?.reason;
    const stop: RunStop = { outcome: 'stop', runId: run.runId, reason: reason instanceof Error ? reason.message : String(reason ?? 'a stop request'), at: deps.clock.now().toISOString() };
    // Queued for the coordinator at once (this listener comes before those of the phases under
    // way), so it reduces the stop before their failures: nothing is retried.
    bus.publish(eventSubject(run.runId, 'run', 'stop'), stop, { id: `${run.runId}:run:stop` }).catch((error: unknown) => deps.log.error({ err: error }, `stopping run ${run.runId}: ${(error as Error).message}`));
  };
  const onStop = () => {
    stopAsked = true;
    if (submitted) publishStop(); // else once the run exists (the coordinator ignores unknown runs)
  };
  signal?.addEventListener('abort', onStop, { once: true });
  try {
    // The run is over when its summary is out and its run-end hooks have run.
    const finished = new Promise<RunSummary>((resolve, reject) => {
      let summary: RunSummary | undefined;
      let hooksDone = false;
      const settle = () => {
        if (summary !== undefined && hooksDone) resolve(summary);
      };
      void bus.subscribe(eventSubject(run.runId, 'run', 'finished'), {}, async (_s, data) => {
        const parsed = RunSummary.safeParse(data);
        if (!parsed.success) return reject(new Error(`invalid run summary: ${parsed.error.message}`));
        summary = parsed.data;
        settle();
      });
      void bus.subscribe(eventSubject(run.runId, 'run-end', '*'), {}, async (_s, data) => {
        const outcome = (data as { outcome?: string }).outcome;
        if (outcome !== 'done' && outcome !== 'failed') return;
        hooksDone = true;
        settle();
      });
    });
    if (deps.onEvent !== undefined) {
      const onEvent = deps.onEvent;
      await bus.subscribe(runEvents(run.runId), {}, async (_s, data) => {
        const event = PhaseEvent.safeParse(data);
        if (event.success) onEvent(event.data);
      });
    }
    if (deps.onProgress !== undefined) {
      const onProgress = deps.onProgress;
      await bus.listen(runProgress(run.runId), (_s, data) => {
        const p = PhaseProgress.safeParse(data);
        if (p.success) onProgress(p.data);
      });
    }
    await startCoordinator(store, bus, deps.clock, deps.log);
    await startRunEndTrigger(bus, deps.log, { runId: run.runId });
    await serve(
      functions,
      {
        bus,
        log: deps.log,
        xapi: async () => deps.xapi,
        clock: deps.clock,
        origin: deps.origin,
        hooks: deps.hooks ?? noHooks,
        ...(signal !== undefined ? { signal } : {}),
      },
      {
        concurrency: (fn) => (PER_VM.has(fn.name) ? run.options.concurrency : 2),
        shutdown: { mode: 'stop', afterStop: (fn) => AFTER_STOP[fn.name] ?? 'skip' },
      },
    );
    await startRun(store, bus, { ...run, trigger: 'cli' });
    submitted = true;
    if (stopAsked) publishStop();
    return await finished;
  } finally {
    signal?.removeEventListener('abort', onStop);
    await bus.close();
  }
}
