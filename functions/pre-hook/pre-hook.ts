import { z } from 'zod';
import { jobSubject } from '../../runtime/events.js';
import { defineFunction, subject } from '../../runtime/function.js';
import { vmEventFields } from '../../runtime/hooks/event.js';
import type { PreVmEvent } from '../../runtime/hooks/event.js';
import { SnapshotInput } from '../snapshot/snapshot.js';

/**
 * pre-hook — the first phase of a VM's backup: runs the operator's `pre-vm` hooks (quiesce a
 * database, check a replica …) before the snapshot. When they abort, the output says
 * `skipped` and the coordinator takes no snapshot: the VM is reported skipped, and its
 * `post-hook` still runs (every pre-vm is followed by a post-vm).
 *
 * Runs again for each attempt of the VM within the run (`try`): a new attempt takes a new
 * snapshot, which needs its own pre-vm.
 *
 * Subject `vmbackup.jobs.pre-hook`; input: the plan's VM job. Output: the same job (the
 * snapshot's input), plus `skipped` and the hooks' warnings.
 *
 * @example output { …the VM job…, "skipped": { "reason": "pre-vm command hook: replica is 300 s behind" }, "warnings": [] }
 */
export const PreHookInput = SnapshotInput;
export type PreHookInput = z.infer<typeof PreHookInput>;

export const PreHookOutput = SnapshotInput.extend({
  /** Set when a pre-vm hook aborted: no snapshot is taken. */
  skipped: z.object({ reason: z.string() }).optional(),
  /** Hooks that failed or timed out while the policy said continue. */
  warnings: z.array(z.string()).default([]),
});
export type PreHookOutput = z.infer<typeof PreHookOutput>;

export const PreHookJob = subject(jobSubject('pre-hook'), PreHookInput);

/** The pre-vm event of a VM job. */
export function preVmEvent(input: PreHookInput, at: Date): PreVmEvent {
  return { point: 'pre-vm', ...vmEventFields(input, at), mode: input.mode, stamp: input.stamp };
}

export const preHook = defineFunction({
  name: 'pre-hook',
  description: "Run the operator's pre-vm hooks; an abort skips the VM (no snapshot).",
  subject: PreHookJob,
  output: PreHookOutput,
  async handle(input, ctx) {
    const result = await ctx.hooks.run('pre-vm', preVmEvent(input, ctx.clock.now()), { log: ctx.log, signal: ctx.signal, heartbeat: () => ctx.heartbeat() });
    if (result.decision === 'abort') {
      const reason = result.reasons.join('; ');
      ctx.log.info(`${input.vm.name}: skipped, no snapshot taken: ${reason}`);
      return { ...input, skipped: { reason }, warnings: result.warnings };
    }
    return { ...input, warnings: result.warnings };
  },
});
