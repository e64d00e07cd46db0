import { PermanentError } from '../../runtime/errors.js';
import type { Ctx } from '../../runtime/function.js';
import { HOOK_ABORTED } from '../../runtime/hooks/kind.js';

/**
 * The `run-start` hooks, as the plan runs them before anything else (no leftover is cleaned,
 * no VM selected before they say continue). An abort ends the run at once: the plan fails
 * with the permanent error HOOK_ABORTED, which the summary reports as a run skipped by its
 * hook (exit code 1: nothing was backed up). Returns the hooks' warnings.
 *
 * @example const warnings = await runStartHooks({ runId, startedAt, backupDir: o.backupDir }, ctx);
 */
export async function runStartHooks(run: { runId: string; startedAt: string; backupDir: string }, ctx: Pick<Ctx, 'hooks' | 'log' | 'signal' | 'clock' | 'heartbeat'>): Promise<string[]> {
  const result = await ctx.hooks.run(
    'run-start',
    { point: 'run-start', runId: run.runId, at: ctx.clock.now().toISOString(), startedAt: run.startedAt, backupDir: run.backupDir },
    { log: ctx.log, signal: ctx.signal, heartbeat: () => ctx.heartbeat() },
  );
  if (result.decision === 'abort') {
    throw new PermanentError(HOOK_ABORTED, `the run was skipped: ${result.reasons.join('; ')}`, { point: 'run-start', reasons: result.reasons });
  }
  return result.warnings;
}
