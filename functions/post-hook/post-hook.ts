import path from 'node:path';
import { z } from 'zod';
import { ErrorInfoSchema } from '../../runtime/errors.js';
import { jobSubject } from '../../runtime/events.js';
import { defineFunction, subject } from '../../runtime/function.js';
import { HookResult, vmEventFields } from '../../runtime/hooks/event.js';
import type { PostVmEvent, VmOutcome } from '../../runtime/hooks/event.js';
import { VmJob, VmRef, WrittenFile } from '../job.js';
import { PruneOutput } from '../prune/prune.js';

/**
 * post-hook — the last phase of a VM's backup: runs the operator's `post-vm` hooks (un-quiesce
 * a database, report …) whatever happened to the backup. The coordinator queues it after
 * `prune` (success), after the phase that failed (with `failed`), and after a pre-hook that
 * aborted (with `skipped`): a pre-vm is always followed by a post-vm. A post-vm hook cannot
 * abort anything; what it says becomes a warning.
 *
 * Subject `vmbackup.jobs.post-hook`; input: the prune's output — with the set's files, mode
 * and stamp when the coordinator adds them — or the failure or skip. Output: the same, plus
 * what the hooks said.
 *
 * @example input { "runId": "…", "jobId": "vm.5c1e…", "try": 1, "vm": {…}, "backupDir": "/b",
 *   "folder": "DEV-MYSQL", "maxBackups": 4, "mode": "vm", "stamp": "20261126-083000", "files": [],
 *   "failed": { "fn": "export", "error": { "code": "ECONNRESET", … }, "retrying": true } }
 */
export const PostHookInput = PruneOutput.partial({ kept: true, deleted: true }).extend({
  vm: VmRef,
  mode: VmJob.shape.mode.optional(),
  stamp: z.string().optional(),
  /** The set's files (meta's output), relative to the VM folder. */
  files: z.array(WrittenFile).default([]),
  bytes: z.number().int().min(0).default(0),
  /** The backup failed in phase `fn`; `retrying`: the VM is backed up again after this. */
  failed: z.object({ fn: z.string(), error: ErrorInfoSchema, retrying: z.boolean().default(false) }).optional(),
  /** A pre-vm hook aborted: nothing was backed up. */
  skipped: z.object({ reason: z.string() }).optional(),
});
export type PostHookInput = z.infer<typeof PostHookInput>;

export const PostHookOutput = PostHookInput.extend({
  /** What the post-vm hooks said (an abort here is only a warning). */
  hooks: HookResult,
});
export type PostHookOutput = z.infer<typeof PostHookOutput>;

export const PostHookJob = subject(jobSubject('post-hook'), PostHookInput);

/** How the VM's backup ended, as the post-vm hooks are told. */
export function vmOutcome(input: PostHookInput): VmOutcome {
  const dir = path.join(input.backupDir, input.folder);
  const common = {
    files: input.files.map((f) => ({ path: path.join(dir, f.name), size: f.size, format: f.format })),
    bytes: input.bytes,
    warnings: input.warnings,
  };
  if (input.skipped !== undefined) return { status: 'skipped', ...common, reason: input.skipped.reason };
  if (input.failed !== undefined) {
    const e = input.failed.error;
    return { status: 'failed', ...common, error: { phase: input.failed.fn, code: e.code, message: e.message }, retrying: input.failed.retrying };
  }
  return { status: 'success', ...common };
}

/** The post-vm event of a VM job. */
export function postVmEvent(input: PostHookInput, at: Date): PostVmEvent {
  const stamp = input.stamp ?? input.protect[0];
  return {
    point: 'post-vm',
    ...vmEventFields(input, at),
    ...(input.mode !== undefined ? { mode: input.mode } : {}),
    ...(stamp !== undefined ? { stamp } : {}),
    outcome: vmOutcome(input),
  };
}

export const postHook = defineFunction({
  name: 'post-hook',
  description: "Run the operator's post-vm hooks after a VM's backup, whether it succeeded, failed or was skipped.",
  subject: PostHookJob,
  output: PostHookOutput,
  async handle(input, ctx) {
    const hooks = await ctx.hooks.run('post-vm', postVmEvent(input, ctx.clock.now()), { log: ctx.log, signal: ctx.signal, heartbeat: () => ctx.heartbeat() });
    return { ...input, warnings: [...input.warnings, ...hooks.warnings], hooks };
  },
});
