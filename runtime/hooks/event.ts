import { z } from 'zod';
import { VmRef } from '../../functions/job.js';
import { RunSummary } from '../run/summary.js';

/**
 * Hook points: where a run stops to let the operator's steps run (runtime/hooks/README.md).
 *
 * - `run-start`: in the plan, before anything is selected or cleaned up. Can abort the run.
 * - `pre-vm`: before a VM's snapshot. Can abort: the VM is skipped, no snapshot is taken.
 * - `post-vm`: after a VM's backup, whatever its outcome (success, failure, skip): every
 *   `pre-vm` is followed by one `post-vm`, so a hook that quiesced a database can undo it.
 * - `run-end`: after the run's summary is built.
 */
export const HookPoint = z.enum(['pre-vm', 'post-vm', 'run-start', 'run-end']);
export type HookPoint = z.infer<typeof HookPoint>;

/** Points whose hooks may abort what follows; at the others an abort is only a warning. */
export const ABORT_POINTS: ReadonlySet<HookPoint> = new Set(['pre-vm', 'run-start']);

/** What a hook answers (NATS reply, HTTP response body): `reason` says why, for the summary. */
export const HookReply = z.object({
  decision: z.enum(['continue', 'abort']),
  reason: z.string().max(1000).optional(),
});
export type HookReply = z.infer<typeof HookReply>;

const Common = {
  runId: z.string(),
  /** ISO time the event was made (part of the signed HTTP body: reject stale ones). */
  at: z.string(),
};

const VmFields = {
  jobId: z.string(),
  /** Attempt of the VM's backup within the run (a VM backed up again gets a new pre-vm). */
  try: z.number().int().min(1),
  vm: VmRef,
  backupDir: z.string(),
  /** The VM's folder inside backupDir (one path component). */
  folder: z.string(),
};

/**
 * The fields a VM's pre-vm and post-vm events share, from its job's message.
 *
 * @example { point: 'pre-vm', ...vmEventFields(input, ctx.clock.now()), mode: input.mode, stamp: input.stamp }
 */
export function vmEventFields(
  job: { runId: string; jobId: string; try: number; vm: z.infer<typeof VmRef>; backupDir: string; folder: string },
  at: Date,
): Pick<PreVmEvent, 'runId' | 'at' | 'jobId' | 'try' | 'vm' | 'backupDir' | 'folder'> {
  return { runId: job.runId, at: at.toISOString(), jobId: job.jobId, try: job.try, vm: job.vm, backupDir: job.backupDir, folder: job.folder };
}

export const PreVmEvent = z.object({
  point: z.literal('pre-vm'),
  ...Common,
  ...VmFields,
  /** `vm`, `vdi`, or `delta` (a point of the chunk store). */
  mode: z.enum(['vm', 'vdi', 'delta']),
  /** `YYYYMMDD-HHMMSS`: names this backup set's files. */
  stamp: z.string(),
});
export type PreVmEvent = z.infer<typeof PreVmEvent>;

/** How a VM's backup ended, as post-vm hooks see it. */
export const VmOutcome = z.object({
  status: z.enum(['success', 'failed', 'skipped']),
  /** Files of the backup set, absolute paths (empty unless the set was written). */
  files: z.array(z.object({ path: z.string(), size: z.number().int().min(0), format: z.string() })),
  bytes: z.number().int().min(0),
  warnings: z.array(z.string()),
  /** When failed: the phase that failed and its error. */
  error: z.object({ phase: z.string(), code: z.string(), message: z.string() }).optional(),
  /** When failed: the VM is backed up again (a new pre-vm comes first). */
  retrying: z.boolean().optional(),
  /** When skipped: why (the pre-vm hooks' reasons). */
  reason: z.string().optional(),
});
export type VmOutcome = z.infer<typeof VmOutcome>;

export const PostVmEvent = z.object({
  point: z.literal('post-vm'),
  ...Common,
  ...VmFields,
  mode: z.enum(['vm', 'vdi', 'delta']).optional(),
  stamp: z.string().optional(),
  outcome: VmOutcome,
});
export type PostVmEvent = z.infer<typeof PostVmEvent>;

export const RunStartEvent = z.object({
  point: z.literal('run-start'),
  ...Common,
  startedAt: z.string(),
  backupDir: z.string(),
});
export type RunStartEvent = z.infer<typeof RunStartEvent>;

export const RunEndEvent = z.object({
  point: z.literal('run-end'),
  ...Common,
  /** The run's summary, as `vmbackup --json` prints it. */
  summary: RunSummary,
});
export type RunEndEvent = z.infer<typeof RunEndEvent>;

/**
 * The event a hook receives: on stdin of a command, as the body of an HTTP POST, as the
 * data of a NATS request. One shape per point, told apart by `point`.
 *
 * @example
 *   { "point": "pre-vm", "runId": "20261126-083000-7f3a", "at": "2026-11-26T08:30:02.000Z",
 *     "jobId": "vm.5c1e…", "try": 1, "vm": {"uuid": "5c1e…", "name": "DEV-MYSQL"},
 *     "backupDir": "/mnt/VmBackup/exports", "folder": "DEV-MYSQL", "mode": "vm",
 *     "stamp": "20261126-083000" }
 */
export const HookEvent = z.discriminatedUnion('point', [PreVmEvent, PostVmEvent, RunStartEvent, RunEndEvent]);
export type HookEvent = z.infer<typeof HookEvent>;

/** The event of one point. */
export type EventOf<P extends HookPoint> = Extract<HookEvent, { point: P }>;

/**
 * Whom a hook's log lines are about, as other progress lines start: the VM's name at pre-vm
 * and post-vm (several VMs' hooks run at once), `run <id>` at run-start and run-end.
 *
 * @example `${hookSubject(event)}: pre-vm command hook: continue (0.0 s)` // web1: pre-vm command hook: …
 */
export function hookSubject(event: HookEvent): string {
  return event.point === 'pre-vm' || event.point === 'post-vm' ? event.vm.name : `run ${event.runId}`;
}

/**
 * What the hooks of one point decided, all kinds together.
 *
 * - `decision`: `abort` only at a point that can abort (pre-vm, run-start).
 * - `reasons`: why it aborted (one per aborting hook).
 * - `warnings`: what went wrong without aborting (a hook failed or timed out and the policy
 *   said continue; an abort at post-vm or run-end).
 *
 * @example { "decision": "abort", "reasons": ["command: replica is 300 s behind"], "warnings": [] }
 */
export const HookResult = z.object({
  decision: z.enum(['continue', 'abort']),
  reasons: z.array(z.string()),
  warnings: z.array(z.string()),
});
export type HookResult = z.infer<typeof HookResult>;
