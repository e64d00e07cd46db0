/** The hook kinds, in the order they run at pre-vm and run-start (reversed at post-vm and run-end). */
export const HOOK_KINDS = ['command', 'http', 'nats'] as const;
export type HookKind = (typeof HOOK_KINDS)[number];

/**
 * What one hook of one kind said, before the policies apply (runner.ts):
 * `continue` and `abort` are answers; `failed` (could not run, crashed, bad answer) and
 * `timeout` (no answer in time) are not, and the settings `hooks_on_failure` and
 * `hooks_on_timeout` decide what they mean.
 */
export interface KindResult {
  kind: HookKind;
  outcome: 'continue' | 'abort' | 'failed' | 'timeout';
  /** For people: why it aborted, how it failed; empty for a plain continue. */
  reason: string;
}

/**
 * Error code of a job (or a run) that a hook aborted: the job ends `skipped`, not `failed`.
 * Here, in a module that imports nothing, so the run's summary can use it without a cycle.
 */
export const HOOK_ABORTED = 'HOOK_ABORTED';
