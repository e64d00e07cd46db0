import { z } from 'zod';
import { ErrorInfoSchema } from './errors.js';

/**
 * Subjects. Jobs: `vmbackup.jobs.<fn>` (one work queue per function). Events:
 * `vmbackup.events.<runId>.<fn>.<outcome>` — every phase publishes `started`, then `done` or
 * `failed`; the end of a run publishes `vmbackup.events.<runId>.run.finished`, a request to
 * stop it is `vmbackup.events.<runId>.run.stop` (RunStop).
 */
export const JOB_PREFIX = 'vmbackup.jobs';
export const EVENT_PREFIX = 'vmbackup.events';

export function jobSubject(fn: string): string {
  return `${JOB_PREFIX}.${fn}`;
}

export function eventSubject(runId: string, fn: string, outcome: string): string {
  return `${EVENT_PREFIX}.${runId}.${fn}.${outcome}`;
}

/** All events of one run, or of every run with `*`. */
export function runEvents(runId = '*'): string {
  return `${EVENT_PREFIX}.${runId}.>`;
}

/**
 * What a phase reports. `done` carries the function's output (validated against its output
 * schema), `failed` the error and the input that failed, so the job can be re-run from it.
 *
 * @example
 *   { "outcome": "done", "runId": "20261126-083000-7f3a", "jobId": "vm.5c1e…", "fn": "export",
 *     "try": 1, "attempt": 1, "at": "2026-11-26T08:31:12.345Z", "durationMs": 41000, "output": {…} }
 */
const EventBase = z.object({
  runId: z.string(),
  jobId: z.string(),
  fn: z.string(),
  try: z.number().int(),
  attempt: z.number().int(),
  at: z.string(),
});

export const PhaseStarted = EventBase.extend({ outcome: z.literal('started'), label: z.string().optional() });
export const PhaseDone = EventBase.extend({ outcome: z.literal('done'), durationMs: z.number(), output: z.unknown() });
export const PhaseFailed = EventBase.extend({
  outcome: z.literal('failed'),
  durationMs: z.number(),
  error: ErrorInfoSchema,
  input: z.unknown(),
});
export const PhaseEvent = z.discriminatedUnion('outcome', [PhaseStarted, PhaseDone, PhaseFailed]);
export type PhaseStarted = z.infer<typeof PhaseStarted>;
export type PhaseDone = z.infer<typeof PhaseDone>;
export type PhaseFailed = z.infer<typeof PhaseFailed>;
export type PhaseEvent = z.infer<typeof PhaseEvent>;

/**
 * A request to stop a run, on `vmbackup.events.<runId>.run.stop` (the embedded run publishes
 * it on SIGTERM or SIGINT): the coordinator starts no further VM, attempt or phase — only what
 * cleans up (the export that destroys a snapshot, the post-vm hooks) — and ends the jobs not
 * yet started as failed (code STOPPED). `reason` names the signal.
 *
 * @example { "outcome": "stop", "runId": "20261126-083000-7f3a", "reason": "SIGTERM", "at": "2026-11-26T08:31:12.345Z" }
 */
export const RunStop = z.object({ outcome: z.literal('stop'), runId: z.string(), reason: z.string(), at: z.string() });
export type RunStop = z.infer<typeof RunStop>;

/** What the coordinator reduces: the phases' events and stop requests. */
export const RunEvent = z.discriminatedUnion('outcome', [PhaseStarted, PhaseDone, PhaseFailed, RunStop]);
export type RunEvent = z.infer<typeof RunEvent>;

/**
 * Progress of a phase under way, on `vmbackup.progress.<runId>.<jobId>`: a passing signal
 * (Bus.notify, core NATS, not stored), sent by the runtime at most about once a second per
 * job while the phase moves data (the export: bytes written so far). `total` is what the
 * phase expects to move when it can tell (the export: the disks' virtual size, an upper
 * bound of an XVA). A lost signal costs nothing: the next one says it all again.
 *
 * @example
 *   { "runId": "20261126-083000-7f3a", "jobId": "vm.5c1e…", "fn": "export", "try": 1,
 *     "label": "web1", "bytes": 734003200, "total": 10737418240, "at": "2026-11-26T08:31:12.345Z" }
 */
export const PROGRESS_PREFIX = 'vmbackup.progress';

export const PhaseProgress = z.object({
  runId: z.string(),
  jobId: z.string(),
  fn: z.string(),
  try: z.number().int(),
  label: z.string().optional(),
  bytes: z.number().min(0),
  total: z.number().min(0).optional(),
  at: z.string(),
});
export type PhaseProgress = z.infer<typeof PhaseProgress>;

export function progressSubject(runId: string, jobId: string): string {
  return `${PROGRESS_PREFIX}.${runId}.${jobId}`;
}

/** Progress signals of one run, or of every run with `*`. */
export function runProgress(runId = '*'): string {
  return `${PROGRESS_PREFIX}.${runId}.>`;
}
