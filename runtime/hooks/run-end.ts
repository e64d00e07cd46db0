import type { Logger } from 'pino';
import type { Bus, Closer } from '../bus/bus.js';
import { eventSubject, jobSubject } from '../events.js';
import { RunSummary } from '../run/summary.js';

/** Durable name of the subscription that turns `run.finished` into a `run-end` job. */
export const RUN_END_TRIGGER = 'run-end-hooks';

/**
 * The `run-end` job of a finished run: its summary as input. One per finish — a run retried
 * later (POST /v1/runs/{id}/retry) finishes again and gets another — deduplicated by the
 * finish time, so the trigger may see `run.finished` twice, or run in several processes.
 *
 * @example runEndJob(summary) // → { data: { runId, jobId: 'run-end.20261126083512345', try: 1, summary }, id: '…:run-end:2026-11-26T08:35:12.345Z' }
 */
export function runEndJob(summary: RunSummary): { data: { runId: string; jobId: string; try: number; summary: RunSummary }; id: string } {
  const finished = summary.finishedAt ?? summary.startedAt;
  return {
    data: { runId: summary.runId, jobId: `run-end.${finished.replace(/\D/g, '')}`, try: 1, summary },
    id: `${summary.runId}:run-end:${finished}`,
  };
}

/**
 * Watches `vmbackup.events.<runId>.run.finished` (every run by default) and queues the run's
 * `run-end` hook job, where the `run-end` function runs the hooks. The coordinator stays pure
 * and the hooks run in a worker like any other phase. Start it beside the coordinator: the
 * embedded run does; the NATS worker that runs the coordinator must too.
 *
 * @example const closer = await startRunEndTrigger(bus, log);
 */
export async function startRunEndTrigger(bus: Bus, log: Logger, opts: { runId?: string } = {}): Promise<Closer> {
  return bus.subscribe(eventSubject(opts.runId ?? '*', 'run', 'finished'), { durable: RUN_END_TRIGGER }, async (_subject, data) => {
    const summary = RunSummary.safeParse(data);
    if (!summary.success) {
      log.warn(`run-end hooks: a run.finished event that is not a run summary was ignored (${summary.error.issues[0]?.message ?? 'invalid'})`);
      return;
    }
    const job = runEndJob(summary.data);
    await bus.enqueue(jobSubject('run-end'), job.data, { id: job.id });
  });
}
