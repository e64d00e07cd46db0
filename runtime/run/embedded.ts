import type { Logger } from 'pino';
import { functions } from '../../functions/index.js';
import type { RunOptions } from '../../functions/plan/plan.js';
import { MemoryBus } from '../bus/memory.js';
import { eventSubject, runEvents } from '../events.js';
import type { PhaseEvent } from '../events.js';
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

export interface EmbeddedRunDeps {
  xapi: XapiClient;
  log: Logger;
  clock: Clock;
  origin: Origin;
  signal?: AbortSignal;
  /** Sees every phase event of the run (progress display). */
  onEvent?: (event: PhaseEvent) => void;
  /** The operator's hooks (hooksFromSettings); none by default. */
  hooks?: HookRunner;
}

/**
 * One run on the in-process bus: the same functions, coordinator and events as on NATS,
 * in this process, from plan to summary, then the run-end hooks. What cron runs.
 */
export async function runEmbedded(run: { runId: string; options: RunOptions; startedAt: Date }, deps: EmbeddedRunDeps): Promise<RunSummary> {
  const bus = new MemoryBus();
  const store = new MemoryRunStore();
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
        const d = data as PhaseEvent;
        if (d.outcome !== undefined) onEvent(d);
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
        ...(deps.signal !== undefined ? { signal: deps.signal } : {}),
      },
      { concurrency: (fn) => (PER_VM.has(fn.name) ? run.options.concurrency : 2) },
    );
    await startRun(store, bus, { ...run, trigger: 'cli' });
    return await finished;
  } finally {
    await bus.close();
  }
}
