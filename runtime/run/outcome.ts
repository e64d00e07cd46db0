import { z } from 'zod';
import type { JobState, RunHeader } from './state.js';
import type { RunStore } from './store.js';
import { RunSummary, summarize } from './summary.js';

/**
 * How a finished run ended, as `vmbackup status` and the gateway (`GET /v1/runs`,
 * `GET /v1/runs/{id}`) show it: its summary's status and the exit code the embedded
 * `vmbackup` would have given — computed by `summarize`, from the run's state in the store,
 * the same way for both. A run still planning or running has none.
 *
 * @example
 *   runOutcome(header, jobs) // → { outcome: 'warning', exitCode: 0 }
 */
export const RunOutcome = z.object({
  /** `success`, `warning` (exit 0), `error` (a backup failed, or the run-start hook skipped the run: exit 1), `fatal` (the run could not start: exit 2). */
  outcome: RunSummary.shape.status,
  /** The exit code `vmbackup` (or `vmbackup run`) gives for this run. */
  exitCode: RunSummary.shape.exitCode,
});
export type RunOutcome = z.infer<typeof RunOutcome>;

/** The outcome of a run from its state; undefined until it is finished. */
export function runOutcome(header: RunHeader, jobs: readonly JobState[]): RunOutcome | undefined {
  if (header.status !== 'finished') return undefined;
  const summary = summarize(header, jobs);
  return { outcome: summary.status, exitCode: summary.exitCode };
}

/** Runs read at the same time by `listOutcomes`. */
const PARALLEL = 8;

/** The outcome of each run of a list (undefined for those not finished), read from the store. */
export async function listOutcomes(store: RunStore, headers: readonly RunHeader[]): Promise<(RunOutcome | undefined)[]> {
  const out: (RunOutcome | undefined)[] = [];
  for (let i = 0; i < headers.length; i += PARALLEL) {
    const chunk = headers.slice(i, i + PARALLEL);
    out.push(...(await Promise.all(chunk.map(async (h) => (h.status === 'finished' ? runOutcome(h, await store.allJobs(h.runId)) : undefined)))));
  }
  return out;
}
