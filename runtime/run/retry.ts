import { enqueueId } from './reduce.js';
import type { Enqueue } from './reduce.js';
import type { JobState, RunHeader } from './state.js';

/**
 * Re-running the failed jobs of a finished run (`POST /v1/runs/{id}/retry`), pure:
 * (header, jobs) → (header', jobs', jobs to queue). The caller commits the result with
 * `store.commit` (compare-and-set on the header's revision) and then queues the jobs; the
 * coordinator carries them to completion as any other job and publishes a new summary.
 *
 * Each failed job goes back to `running` with `try` + 1 (so its messages and events get new
 * dedup ids and stale events of the failed attempt stay ignored), and is run again:
 *
 * - a VM job whose `meta` or `prune` failed (the data is on disk): from that phase, with the
 *   input that failed (`failedInput`), without backing the VM up again;
 * - any other VM job: from the first phase of its pipeline — the pre-vm hooks, then a new
 *   snapshot. Its snapshot is gone (the export destroys it whatever happens) or was never
 *   made, and a snapshot must follow the pre-vm hooks (a database quiesced). Also when the
 *   error said the message is spent (a RestartError) or the failed input is unusable;
 * - a pool-db or host backup: done again.
 *
 * VM jobs that restart respect the run's concurrency: as many start as there are free slots,
 * the others wait in `pending` and the coordinator starts them as slots free. Jobs that resume
 * at a later phase (local file work) and pool/host jobs start at once.
 *
 * @example
 *   const r = planRetry(header, jobs, new Date());
 *   if (r.ok) { await store.commit(runId, r.header, revision, r.jobs); for (const e of r.enqueue) await bus.enqueue(jobSubject(e.fn), e.data, { id: e.id }); }
 *   // r.ok === false → r.reason: 'not-finished' | 'fatal' | 'nothing-failed', r.message for people
 */
export type RetryResult =
  | { ok: true; header: RunHeader; jobs: JobState[]; enqueue: Enqueue[]; retried: { jobId: string; label: string; phase: string; from: 'failed-phase' | 'start' }[] }
  | { ok: false; reason: 'not-finished' | 'fatal' | 'nothing-failed'; message: string };

/** VM phases that work on files already written: a failed one is resumed, not restarted. */
const RESUMABLE_VM_PHASES = new Set(['meta', 'verify', 'prune']);

export function planRetry(current: RunHeader, jobs: readonly JobState[], now: Date): RetryResult {
  if (current.status !== 'finished') {
    return { ok: false, reason: 'not-finished', message: `run ${current.runId} is ${current.status}: only a finished run can be retried` };
  }
  if (current.fatal !== undefined) {
    return { ok: false, reason: 'fatal', message: `run ${current.runId} could not start (${current.fatal.message}): it has no jobs to retry, start a new run` };
  }
  const byId = new Map(jobs.map((j) => [j.jobId, j]));
  const failed = current.jobIds.map((id) => byId.get(id)).filter((j): j is JobState => j !== undefined && j.status === 'failed');
  if (failed.length === 0) {
    return { ok: false, reason: 'nothing-failed', message: `run ${current.runId} has no failed job to retry` };
  }

  const header: RunHeader = { ...current, status: 'running', remaining: current.remaining + failed.length, retries: (current.retries ?? 0) + 1 };
  delete header.finishedAt;
  delete header.stopping; // a stopped run, retried, runs its failed jobs to the end
  const out: JobState[] = [];
  const enqueue: Enqueue[] = [];
  const retried: Extract<RetryResult, { ok: true }>['retried'] = [];
  const pending: string[] = [];

  for (const old of failed) {
    const job: JobState = { ...old, phaseMs: { ...old.phaseMs }, try: old.try + 1 };
    delete job.error;
    delete job.failedInput;
    delete job.finishedAt;
    const first = job.pipeline[0]!;
    const failedInput = isObject(old.failedInput) ? old.failedInput : undefined;
    const restart =
      old.phase === first ||
      failedInput === undefined ||
      job.kind !== 'vm' ||
      !RESUMABLE_VM_PHASES.has(old.phase) ||
      (old.error?.permanent === true && old.error.retryable);
    const from = restart ? 'start' : 'failed-phase';
    job.phase = restart ? first : old.phase;
    const data = { ...(restart ? (old.input as object) : failedInput!), try: job.try };
    retried.push({ jobId: job.jobId, label: job.label, phase: job.phase, from });
    out.push(job);

    const gated = job.kind === 'vm' && restart;
    if (gated && header.active >= header.concurrency) {
      job.status = 'pending';
      delete job.startedAt;
      pending.push(job.jobId);
      continue;
    }
    if (job.kind === 'vm') header.active += 1;
    job.status = 'running';
    job.startedAt = now.toISOString();
    enqueue.push({ fn: job.phase, data, id: enqueueId(header.runId, job.jobId, job.try, job.phase) });
  }
  header.pending = [...header.pending, ...pending];
  return { ok: true, header, jobs: out, enqueue, retried };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
