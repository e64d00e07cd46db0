import { z } from 'zod';
import { jobSubject } from '../../runtime/events.js';
import { defineFunction, subject } from '../../runtime/function.js';
import { HookResult } from '../../runtime/hooks/event.js';
import { RunSummary } from '../../runtime/run/summary.js';
import { JobBase } from '../job.js';

/**
 * run-end — runs the operator's `run-end` hooks with the run's summary (report, unmount …).
 * Queued once per finished run by runtime/hooks/run-end.ts, which watches `run.finished`;
 * the summary is already out, so what the hooks say is only logged (a run-end hook cannot
 * abort anything).
 *
 * Subject `vmbackup.jobs.run-end`.
 *
 * @example { "runId": "20261126-083000-7f3a", "jobId": "run-end", "try": 1, "summary": { …RunSummary… } }
 */
export const RunEndInput = JobBase.extend({ summary: RunSummary });
export type RunEndInput = z.infer<typeof RunEndInput>;

export const RunEndOutput = JobBase.extend({ hooks: HookResult });
export type RunEndOutput = z.infer<typeof RunEndOutput>;

export const RunEndJob = subject(jobSubject('run-end'), RunEndInput);

export const runEnd = defineFunction({
  name: 'run-end',
  description: "Run the operator's run-end hooks with the run's summary.",
  subject: RunEndJob,
  output: RunEndOutput,
  async handle(input, ctx) {
    const hooks = await ctx.hooks.run('run-end', { point: 'run-end', runId: input.runId, at: ctx.clock.now().toISOString(), summary: input.summary }, { log: ctx.log, signal: ctx.signal, heartbeat: () => ctx.heartbeat() });
    return { runId: input.runId, jobId: input.jobId, try: input.try, hooks };
  },
});
