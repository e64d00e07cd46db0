import type { Logger } from 'pino';
import type { Bus, Closer } from '../bus/bus.js';
import { RunEvent, eventSubject, jobSubject, runEvents } from '../events.js';
import type { Clock } from '../function.js';
import { reduce, repair } from './reduce.js';
import type { Transition } from './reduce.js';
import type { JobState, RunHeader } from './state.js';
import type { RunStore } from './store.js';
import { summarize } from './summary.js';
import type { RunSummary } from './summary.js';

/** Durable name of the coordinator's event consumer. */
export const COORDINATOR = 'coordinator';

/**
 * Applies one phase event (or a stop request) to its run: reads the state, reduces, queues
 * the next jobs, publishes the summary when the run ends, then commits the state. Side effects
 * come before the commit and are idempotent (dedup ids), so a crash anywhere in between is
 * repaired by the event's redelivery.
 */
export async function coordinate(store: RunStore, bus: Bus, event: RunEvent, clock: Clock, log: Logger, onFinished?: (summary: RunSummary) => void): Promise<void> {
  // A phase's start changes no state (reduce ignores it): half of all events, so reading the
  // run for them would double the coordinator's work, which is serial across every run.
  if (event.outcome === 'started') return;
  for (let attempt = 0; attempt < 10; attempt++) {
    // The header and the event's job at once; the pending jobs only when a slot is free
    // (most events just move their job to its next phase).
    const [current, own] = await Promise.all([store.header(event.runId), event.outcome === 'stop' ? undefined : store.jobs(event.runId, [event.jobId])]);
    if (current === undefined) {
      // Phases invoked on their own (vmbackup invoke, POST /v1/functions) have no run state.
      log.debug({ runId: event.runId, ...(event.outcome !== 'stop' ? { fn: event.fn } : {}) }, `event for unknown run ${event.runId} ignored`);
      return;
    }
    // A stop ends every pending job at once: it needs them all.
    let jobs = own ?? (await store.jobs(event.runId, current.header.pending));
    const behind = stateBehind(current.header, jobs, event);
    if (behind !== undefined) {
      // Dropping the event as stale would leave its job, and the run, waiting for ever.
      throw new Error(`run ${event.runId}: the state read (revision ${current.revision}) is older than the event ${event.outcome !== 'stop' ? `${event.fn}.${event.outcome} of ${event.jobId}` : 'stop'} (${behind}); reading it again`);
    }
    const now = clock.now();
    let t = reduce({ header: current.header, jobs }, event, now);
    if (event.outcome !== 'stop' && t.header.pending.length > 0 && (t.header.active < t.header.concurrency || t.header.stopping !== undefined)) {
      // A slot is free (a job ended): read the first pending jobs and reduce again with them.
      jobs = await store.jobs(event.runId, [event.jobId, ...current.header.pending.slice(0, current.header.concurrency)]);
      t = reduce({ header: current.header, jobs }, event, now);
    }
    // A stop changes the header even when it ends no job.
    if (event.outcome !== 'stop' && t.jobs.length === 0 && t.enqueue.length === 0 && !t.finished) {
      // An event that finds its job already ended comes again after a coordinator died: if
      // that one died between its commit's jobs and header, the header is set from the jobs.
      const job = jobs.get(event.jobId);
      if (job === undefined || job.status === 'pending' || job.status === 'running' || current.header.status !== 'running') return;
      const all = new Map((await store.allJobs(event.runId)).map((j) => [j.jobId, j]));
      const repaired = repair(current.header, all, now);
      if (repaired === undefined) return;
      log.warn({ runId: event.runId }, `run ${event.runId}: its state counted ${current.header.remaining} job(s) to go, its jobs ${repaired.header.remaining} (a coordinator stopped in the middle of a commit): set from the jobs`);
      t = repaired;
      jobs = all;
    }
    // What the new state queues goes out while its jobs are written (store.commit), and is
    // out before the header, the commit point: a crash before it is repaired by the event's
    // redelivery, and after it nothing is missing. The jobs queued at once are independent
    // (dedup ids, one phase per job), so they are not published one after the other.
    let finished: RunSummary | undefined;
    const transition = t;
    const queued = (async () => {
      await Promise.all(transition.enqueue.map((e) => bus.enqueue(jobSubject(e.fn), e.data, { id: e.id })));
      if (!transition.finished) return;
      const stored = await store.allJobs(event.runId);
      const changed = new Map(transition.jobs.map((j) => [j.jobId, j]));
      const merged = transition.header.jobIds.map((id) => changed.get(id) ?? stored.find((j) => j.jobId === id)).filter((j) => j !== undefined);
      const summary: RunSummary = summarize(transition.header, merged);
      // A retried run finishes again: its new summary needs its own dedup id.
      const finishedId = `${event.runId}:run:finished${transition.header.retries !== undefined && transition.header.retries > 0 ? `:${transition.header.retries}` : ''}`;
      await bus.publish(eventSubject(event.runId, 'run', 'finished'), summary, { id: finishedId });
      finished = summary;
    })();
    // Most events only move their job to its next phase: the header stays as it was, and the
    // job alone is written, if it is still as read (store.advance).
    const eventJob = event.outcome !== 'stop' ? event.jobId : undefined;
    const from = eventJob !== undefined ? jobs.get(eventJob) : undefined;
    const step = !t.finished && from !== undefined && t.jobs.length === 1 && t.jobs[0]!.jobId === eventJob && JSON.stringify(t.header) === JSON.stringify(current.header);
    if (step ? await store.advance(event.runId, t.jobs[0]!, from, queued) : await store.commit(event.runId, t.header, current.revision, t.jobs, queued)) {
      logNewWarnings(log, current.header, t, jobs);
      if (finished !== undefined) onFinished?.(finished);
      return;
    }
  }
  throw new Error(`run ${event.runId}: state changed under the coordinator ten times in a row`);
}

/**
 * Why the run state read cannot be the one the event follows, or undefined when it can.
 * A phase's event is published only after the coordinator committed the state that queued
 * that phase (it handles events one at a time, in order), so an event of a later phase or
 * try than its job's state, or of a job the state has not started, means the read came
 * from a store that is behind (a replica catching up) — never that the event is stale.
 *
 * @example stateBehind(header, jobs, exportDoneEvent) // → 'its job is at snapshot, try 1'
 */
export function stateBehind(header: RunHeader, jobs: ReadonlyMap<string, JobState>, event: RunEvent): string | undefined {
  if (event.outcome === 'stop' || event.outcome === 'started' || event.fn === 'plan' || header.status === 'finished') return undefined;
  const job = jobs.get(event.jobId);
  if (job === undefined) return header.status === 'planning' ? 'the run is still planning' : undefined;
  if (event.try > job.try) return `its job is at try ${job.try}`;
  if (event.try < job.try) return undefined;
  if (job.status === 'pending') return 'its job has not started';
  if (job.status !== 'running') return undefined;
  const at = job.pipeline.indexOf(job.phase);
  const of = job.pipeline.indexOf(event.fn);
  return at >= 0 && of > at ? `its job is at ${job.phase}, try ${job.try}` : undefined;
}

/**
 * Says each warning the transition added, once, as it happens (stderr of the command, the
 * worker's log): after the commit, so a retried reduction does not repeat it. The line is the
 * summary's: `<list>: <message>` for the run, `<category> <name>: <warning>` for a job.
 */
function logNewWarnings(log: Logger, before: RunHeader, t: Transition, jobsBefore: ReadonlyMap<string, JobState>): void {
  const runId = t.header.runId;
  for (const w of t.header.warnings.slice(before.warnings.length)) {
    log.warn({ runId, ...(w.entry !== undefined ? { entry: w.entry } : {}), ...(w.list !== undefined ? { list: w.list } : {}) }, `${w.list !== undefined ? `${w.list}: ` : ''}${w.message}`);
  }
  for (const job of t.jobs) {
    const had = new Set(jobsBefore.get(job.jobId)?.warnings ?? []);
    for (const w of job.warnings) if (!had.has(w)) log.warn({ runId, jobId: job.jobId }, `${job.category} ${job.label}: ${w}`);
  }
}

/** Subscribes the coordinator to every run's phase events. */
export async function startCoordinator(store: RunStore, bus: Bus, clock: Clock, log: Logger, opts: { onFinished?: (summary: RunSummary) => void } = {}): Promise<Closer> {
  return bus.subscribe(runEvents(), { durable: COORDINATOR }, async (_subject, data) => {
    const event = RunEvent.safeParse(data);
    if (!event.success) return; // run.finished and other events not for the coordinator
    try {
      await coordinate(store, bus, event.data, clock, log, opts.onFinished);
    } catch (error) {
      // Thrown back to the bus, which delivers the event again; said once here.
      log.error({ err: error, runId: event.data.runId, ...(event.data.outcome !== 'stop' ? { jobId: event.data.jobId } : {}) }, `coordinator: ${(error as Error).message}`);
      throw error;
    }
  });
}
