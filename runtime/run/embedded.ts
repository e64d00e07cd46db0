import type { Logger } from 'pino';
import { functions } from '../../functions/index.js';
import type { RunOptions } from '../../functions/plan/plan.js';
import { MemoryBus } from '../bus/memory.js';
import { eventSubject, runEvents } from '../events.js';
import type { PhaseEvent } from '../events.js';
import type { Clock, Origin } from '../function.js';
import { serve } from '../serve.js';
import type { XapiClient } from '../xapi/client.js';
import { startCoordinator } from './coordinator.js';
import { startRun } from './start.js';
import { MemoryRunStore } from './store.js';
import { RunSummary } from './summary.js';

/** Functions whose jobs are per VM: they run `concurrency` at a time; the others one by one. */
const PER_VM = new Set(['snapshot', 'export', 'meta', 'prune']);

export interface EmbeddedRunDeps {
  xapi: XapiClient;
  log: Logger;
  clock: Clock;
  origin: Origin;
  signal?: AbortSignal;
  /** Sees every phase event of the run (progress display). */
  onEvent?: (event: PhaseEvent) => void;
}

/**
 * One run on the in-process bus: the same functions, coordinator and events as on NATS,
 * in this process, from plan to summary. What cron runs.
 */
export async function runEmbedded(run: { runId: string; options: RunOptions; startedAt: Date }, deps: EmbeddedRunDeps): Promise<RunSummary> {
  const bus = new MemoryBus();
  const store = new MemoryRunStore();
  try {
    const finished = new Promise<RunSummary>((resolve, reject) => {
      void bus.subscribe(eventSubject(run.runId, 'run', 'finished'), {}, async (_s, data) => {
        const summary = RunSummary.safeParse(data);
        if (summary.success) resolve(summary.data);
        else reject(new Error(`invalid run summary: ${summary.error.message}`));
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
    await serve(
      functions,
      { bus, log: deps.log, xapi: async () => deps.xapi, clock: deps.clock, origin: deps.origin, ...(deps.signal !== undefined ? { signal: deps.signal } : {}) },
      { concurrency: (fn) => (PER_VM.has(fn.name) ? run.options.concurrency : 2) },
    );
    await startRun(store, bus, { ...run, trigger: 'cli' });
    return await finished;
  } finally {
    await bus.close();
  }
}
