import { pipelines } from '../../functions/index.js';
import type { JobKind } from '../../functions/index.js';
import { PlanOutput } from '../../functions/plan/plan.js';
import type { RunEvent, RunStop } from '../events.js';
import type { Category, JobState, RunHeader } from './state.js';
import { STOPPED } from '../errors.js';
import type { ErrorInfo } from '../errors.js';
import { HOOK_ABORTED } from '../hooks/kind.js';

/** The phases that run the operator's pre-vm and post-vm hooks (functions/pre-hook/, functions/post-hook/). */
const PRE_HOOK = 'pre-hook';
const POST_HOOK = 'post-hook';
const VERIFY = 'verify';
/** The phases that destroy a VM's snapshot (whatever happens to its transfer). */
const EXPORT = 'export';
const DELTA_EXPORT = 'delta-export';
/** The phases after which a VM's backup set (or a delta-export's point) is complete (its manifest is written). */
const META = 'meta';

/** A job to queue: function name, message, dedup id. */
export interface Enqueue {
  fn: string;
  data: unknown;
  id: string;
}

/** What the coordinator must read before reducing an event: the header and some jobs. */
export interface RunView {
  header: RunHeader;
  /**
   * The event's job and the first `header.concurrency` pending VM jobs, when they exist; for
   * a RunStop, every pending VM job.
   */
  jobs: ReadonlyMap<string, JobState>;
}

export interface Transition {
  header: RunHeader;
  /** Jobs created or changed. */
  jobs: JobState[];
  enqueue: Enqueue[];
  /** The run just ended: the coordinator publishes its summary. */
  finished: boolean;
}

/** The dedup id of a phase's job message: one per job, attempt of its pipeline, and phase. */
export function enqueueId(runId: string, jobId: string, tryN: number, fn: string): string {
  return `${runId}:${jobId}:${tryN}:${fn}`;
}

/**
 * The run's state machine, pure: (state, event) → (state', jobs to queue). It is the only
 * place that knows the order of phases and the concurrency gate:
 *
 * - `plan.done` creates the jobs; VM jobs start `concurrency` at a time, pool-db and host
 *   jobs at once. `plan.failed` ends the run with a fatal error.
 * - `<fn>.done` queues the next phase with the output as its input, or ends the job.
 * - `<fn>.failed` ends the job — unless the error is retryable and the VM has retries left:
 *   then its pipeline starts again from a new snapshot (`try` + 1).
 * - Duplicate or stale events (another `try`, a phase already past) change nothing, so
 *   redelivered events are harmless.
 * - `run.stop` (SIGTERM): the run is `stopping`. VM jobs not started end at once as failed
 *   (STOPPED); a running job ends with its current phase — no retry, no next phase, except
 *   what cleans up: the export after a snapshot (it destroys the snapshot and, its run
 *   stopped, transfers nothing) and the post-vm hooks after the pre-vm hooks. A job whose set
 *   is complete (meta done) ends as a success with a warning: no verify, no prune. The run
 *   finishes when the jobs under way have ended.
 */
export function reduce(view: RunView, event: RunEvent, now: Date): Transition {
  const header: RunHeader = { ...view.header };
  const out: Transition = { header, jobs: [], enqueue: [], finished: false };
  if (header.status === 'finished' || event.outcome === 'started') return out;
  if (event.outcome === 'stop') return stop(out, view, event, now);

  if (event.fn === 'plan') {
    if (header.status !== 'planning') return out;
    if (event.outcome === 'failed') {
      header.fatal = event.error;
      return finish(out, now);
    }
    const plan = PlanOutput.parse(event.output);
    header.status = 'running';
    header.pool = plan.pool;
    header.backupDir = plan.backupDir;
    header.concurrency = plan.concurrency;
    header.vmRetries = plan.vmRetries;
    header.warnings = [...header.warnings, ...plan.warnings.map((w) => ({ entry: w.entry, list: w.list, message: w.message }))];
    header.excludes = plan.excludes.map((v) => v.name);
    header.cleaned = plan.cleaned;
    const created: JobState[] = [
      ...plan.vmJobs.map((j) =>
        j.mode === 'delta'
          ? newJob(j.jobId, 'vm', 'delta-export', j.vm.name, j, { vmUuid: j.vm.uuid, folder: j.folder }, pipelines.delta)
          : newJob(j.jobId, 'vm', j.mode === 'vm' ? 'vm-export' : 'vdi-export', j.vm.name, j, { vmUuid: j.vm.uuid, folder: j.folder }),
      ),
      ...(plan.poolDb !== undefined ? [newJob('pool-db', 'pool-db', 'pool-db', 'pool database', plan.poolDb, {})] : []),
      ...plan.hostJobs.map((j) => newJob(j.jobId, 'host-backup', 'host-backup', j.host.name, j, {})),
    ];
    header.jobIds = created.map((j) => j.jobId);
    header.remaining = created.length;
    header.pending = created.filter((j) => j.kind === 'vm').map((j) => j.jobId);
    out.jobs = created;
    if (header.stopping !== undefined) {
      // Stopped while planning: nothing is started.
      for (const job of created) notStarted(job, header.stopping.reason, now);
      header.pending = [];
      header.remaining = 0;
      header.stopping = { ...header.stopping, notStarted: created.length };
      return finish(out, now);
    }
    for (const job of created) {
      if (job.kind !== 'vm') start(out, job, now);
    }
    startPending(out, new Map(created.map((j) => [j.jobId, j])), now);
    if (header.remaining === 0) return finish(out, now);
    return out;
  }

  const current = view.jobs.get(event.jobId);
  if (current === undefined || current.status !== 'running' || current.try !== event.try || current.phase !== event.fn) return out;
  const job: JobState = { ...current, phaseMs: { ...current.phaseMs } };
  out.jobs.push(job);

  if (event.outcome === 'done') {
    job.phaseMs[event.fn] = (job.phaseMs[event.fn] ?? 0) + event.durationMs;
    const output = event.output as { files?: JobState['files']; warnings?: string[]; bytes?: number };
    if (Array.isArray(output.files)) job.files = output.files;
    if (typeof output.bytes === 'number') job.bytes = output.bytes;
    if (Array.isArray(output.warnings)) job.warnings = [...new Set([...job.warnings, ...output.warnings])];
    if (event.fn === POST_HOOK) return afterPostHook(out, job, view, event.output, now);
    if (event.fn === VERIFY) {
      // verify_after_backup: a set that fails its check is a failed backup (it does not count
      // toward max_backups either); a new snapshot rewrites the same stamp.
      const verified = (event.output as { verified?: { ok: boolean; bytes?: number; ms?: number; asWritten?: boolean; error?: { code?: string; message?: string } } | null }).verified;
      if (verified !== undefined && verified !== null) {
        job.verified = {
          ok: verified.ok,
          bytes: verified.bytes ?? 0,
          ms: verified.ms ?? 0,
          ...(verified.asWritten === true ? { asWritten: true } : {}),
          ...(verified.error?.message !== undefined ? { error: verified.error.message } : {}),
        };
        if (!verified.ok) {
          const error: ErrorInfo = {
            name: 'VerifyFailed',
            code: verified.error?.code ?? 'VERIFY_FAILED',
            message: `verification failed: ${verified.error?.message ?? 'see the manifest'}`,
            permanent: true,
            retryable: true,
          };
          return failJob(out, job, view, now, event.fn, error, event.output);
        }
      }
    }
    const skipped = (event.output as { skipped?: { reason?: unknown } }).skipped;
    if (event.fn === PRE_HOOK && skipped !== undefined) {
      // A pre-vm hook aborted: no snapshot. The post-vm hooks still run (they may undo what
      // another pre-vm hook did), then the job ends skipped.
      const reason = typeof skipped.reason === 'string' ? skipped.reason : 'a pre-vm hook aborted';
      job.error = { name: 'HookAborted', code: HOOK_ABORTED, message: reason, permanent: true, retryable: false };
      return toPostHook(out, job, view, now, undefined, { skipped: { reason } });
    }
    const next = job.pipeline[job.pipeline.indexOf(event.fn) + 1];
    if (header.stopping !== undefined && next !== undefined && next !== POST_HOOK && next !== EXPORT && next !== DELTA_EXPORT) {
      // Stopping: the job ends here (its post-vm hooks still run).
      if (setComplete(job, next)) return completeButStopped(out, job, view, now, next, event.output);
      const error: ErrorInfo = { name: 'StoppedError', code: STOPPED, message: `stopped by ${header.stopping.reason} before ${next}`, permanent: true, retryable: false };
      return failJob(out, job, view, now, next, error, event.output);
    }
    if (next !== undefined) {
      job.phase = next;
      const data = next === POST_HOOK ? postHookInput(header.runId, job, event.output, {}) : event.output;
      out.enqueue.push({ fn: next, data, id: enqueueId(header.runId, job.jobId, job.try, next) });
      return out;
    }
    job.status = 'success';
    return endJob(out, job, view, now);
  }

  // failed
  job.phaseMs[event.fn] = (job.phaseMs[event.fn] ?? 0) + event.durationMs;
  if (event.fn === POST_HOOK) {
    // The post-vm hooks could not be run: the backup's own outcome stands, said in a warning.
    // A job's warnings are printed after its category and VM name: they do not repeat it.
    job.warnings = [...job.warnings, `the post-vm hooks could not run (${event.error.message})`];
    return afterPostHook(out, job, view, event.input, now);
  }
  if (header.stopping !== undefined && event.error.code === STOPPED && setComplete(job, event.fn)) {
    return completeButStopped(out, job, view, now, event.fn, event.input);
  }
  return failJob(out, job, view, now, event.fn, event.error, event.input);
}

/** Whether the VM's set is complete (meta, or delta-export, wrote its manifest) when phase `fn` is reached. */
function setComplete(job: JobState, fn: string): boolean {
  const commit = job.pipeline.includes(META) ? META : DELTA_EXPORT;
  return job.kind === 'vm' && job.pipeline.includes(commit) && job.pipeline.indexOf(fn) > job.pipeline.indexOf(commit);
}

/**
 * Stopping, with the set complete: it counts, so the job is a success, with a warning that
 * `fn` and what follows (verify, prune) did not run; its post-vm hooks still run.
 */
function completeButStopped(out: Transition, job: JobState, view: RunView, now: Date, fn: string, base: unknown): Transition {
  const reason = out.header.stopping?.reason ?? 'a stop request';
  job.warnings = [...job.warnings, `the run was stopped by ${reason}: the set is complete, but ${phasesFrom(job, fn)} did not run`];
  return toPostHook(out, job, view, now, base, {});
}

/** A phase of the job failed: post-vm hooks first when pre-vm ran, then retry or end. */
function failJob(out: Transition, job: JobState, view: RunView, now: Date, fn: string, error: ErrorInfo, input: unknown): Transition {
  const retrying = mayRetry(job, error, out.header);
  if (job.pipeline.includes(POST_HOOK)) {
    // The pre-vm hooks ran (pre-hook is the first phase): the post-vm hooks must run too —
    // to un-quiesce a database — before the job ends or starts again.
    job.error = error;
    job.failedInput = input;
    return toPostHook(out, job, view, now, undefined, { failed: { fn, error, retrying } });
  }
  if (retrying) return restart(out, job, fn, error.message);
  job.status = 'failed';
  job.error = error;
  job.failedInput = input;
  return endJob(out, job, view, now);
}

/**
 * A VM job whose backup failed with a retryable error and has retries left is backed up
 * again — unless the run is stopping.
 */
function mayRetry(job: JobState, error: ErrorInfo, header: RunHeader): boolean {
  return job.kind === 'vm' && error.retryable && job.try <= header.vmRetries && header.stopping === undefined;
}

/** Starts the job's pipeline again from its first phase (a new snapshot), as attempt `try` + 1. */
function restart(out: Transition, job: JobState, failedFn: string, message: string): Transition {
  job.try += 1;
  job.phase = job.pipeline[0]!;
  delete job.error;
  delete job.failedInput;
  job.warnings = [...job.warnings, `${failedFn} failed (${message}); backing up again (attempt ${job.try})`];
  out.enqueue.push({ fn: job.phase, data: { ...(job.input as object), try: job.try }, id: enqueueId(out.header.runId, job.jobId, job.try, job.phase) });
  return out;
}

/**
 * The input of `post-hook`: prune's output on success (`base`), or what the coordinator knows
 * of the job (the VM job, the set's files) with the failure or the skip.
 */
function postHookInput(runId: string, job: JobState, base: unknown, extra: { failed?: unknown; skipped?: unknown }): unknown {
  const vmJob = (typeof job.input === 'object' && job.input !== null ? job.input : {}) as Record<string, unknown>;
  return {
    runId,
    jobId: job.jobId,
    vm: vmJob.vm,
    backupDir: vmJob.backupDir,
    folder: vmJob.folder,
    maxBackups: vmJob.maxBackups,
    ...(typeof base === 'object' && base !== null ? base : {}),
    try: job.try,
    mode: vmJob.mode,
    stamp: vmJob.stamp,
    files: job.files,
    bytes: job.bytes,
    warnings: job.warnings,
    ...extra,
  };
}

function toPostHook(out: Transition, job: JobState, view: RunView, now: Date, base: unknown, extra: { failed?: unknown; skipped?: unknown }): Transition {
  if (!job.pipeline.includes(POST_HOOK)) return afterPostHook(out, job, view, extra, now);
  job.phase = POST_HOOK;
  out.enqueue.push({ fn: POST_HOOK, data: postHookInput(out.header.runId, job, base, extra), id: enqueueId(out.header.runId, job.jobId, job.try, POST_HOOK) });
  return out;
}

/**
 * The post-vm hooks ran (or could not): the job ends as its backup did — skipped (a pre-vm
 * hook aborted), failed, or success — or, failed with a retryable error and retries left,
 * starts again from its pre-hook. `data` is the post-hook's message: it names the phase that
 * failed, which the job keeps as its phase so that `retry` can resume there.
 */
function afterPostHook(out: Transition, job: JobState, view: RunView, data: unknown, now: Date): Transition {
  if (job.error?.code === HOOK_ABORTED) {
    job.status = 'skipped';
    return endJob(out, job, view, now);
  }
  if (job.error !== undefined) {
    const fn = (data as { failed?: { fn?: unknown } } | undefined)?.failed?.fn;
    const failedFn = typeof fn === 'string' && job.pipeline.includes(fn) ? fn : undefined;
    if (mayRetry(job, job.error, out.header)) return restart(out, job, failedFn ?? job.phase, job.error.message);
    job.status = 'failed';
    if (failedFn !== undefined) job.phase = failedFn;
    return endJob(out, job, view, now);
  }
  job.status = 'success';
  return endJob(out, job, view, now);
}

function newJob(jobId: string, kind: JobState['kind'], category: Category, label: string, input: unknown, extra: { vmUuid?: string; folder?: string }, phases: readonly string[] = pipelines[kind]): JobState {
  const pipeline = [...phases];
  return {
    jobId,
    kind,
    category,
    label,
    ...extra,
    pipeline,
    phase: pipeline[0]!,
    status: 'pending',
    try: 1,
    input,
    files: [],
    bytes: 0,
    warnings: [],
    phaseMs: {},
  };
}

function start(out: Transition, job: JobState, now: Date): void {
  job.status = 'running';
  job.startedAt = now.toISOString();
  // A job retried after its run finished (retry.ts) waits here with `try` > 1.
  out.enqueue.push({ fn: job.phase, data: { ...(job.input as object), try: job.try }, id: enqueueId(out.header.runId, job.jobId, job.try, job.phase) });
}

/** Starts pending VM jobs while fewer than `concurrency` run (none when stopping). */
function startPending(out: Transition, jobs: ReadonlyMap<string, JobState>, now: Date): void {
  const header = out.header;
  if (header.stopping !== undefined) return stopPending(out, jobs, now);
  while (header.active < header.concurrency && header.pending.length > 0) {
    const id = header.pending[0]!;
    const pending = jobs.get(id);
    if (pending === undefined) break; // not loaded: the next event will start it
    header.pending = header.pending.slice(1);
    header.active += 1;
    const job = out.jobs.find((j) => j.jobId === id) ?? { ...pending };
    if (!out.jobs.includes(job)) out.jobs.push(job);
    start(out, job, now);
  }
}

function endJob(out: Transition, job: JobState, view: RunView, now: Date): Transition {
  job.finishedAt = now.toISOString();
  const header = out.header;
  header.remaining = Math.max(0, header.remaining - 1);
  if (job.kind === 'vm') {
    header.active = Math.max(0, header.active - 1);
    startPending(out, view.jobs, now);
  }
  if (header.remaining === 0) return finish(out, now);
  return out;
}

/**
 * `run.stop`: the run is stopping — the pending VM jobs end now, the running ones with their
 * current phase (reduce). Stopped while planning: the plan's outcome ends the run.
 */
function stop(out: Transition, view: RunView, event: RunStop, now: Date): Transition {
  const header = out.header;
  if (header.stopping !== undefined) return out;
  header.stopping = { reason: event.reason, at: event.at };
  if (header.status === 'planning') return out;
  const pending = header.pending.length;
  stopPending(out, view.jobs, now);
  // Said as the run being stopped (the summary's `stopped`), not as a warning of a phase.
  header.stopping = { ...header.stopping, notStarted: pending };
  if (header.remaining === 0) return finish(out, now);
  return out;
}

/** Ends the pending VM jobs that are loaded as not started; the others stay for a later event. */
function stopPending(out: Transition, jobs: ReadonlyMap<string, JobState>, now: Date): void {
  const header = out.header;
  const reason = header.stopping?.reason ?? 'a stop request';
  const left: string[] = [];
  for (const id of header.pending) {
    const loaded = out.jobs.find((j) => j.jobId === id) ?? jobs.get(id);
    if (loaded === undefined) {
      left.push(id);
      continue;
    }
    const job = out.jobs.includes(loaded) ? loaded : { ...loaded };
    if (!out.jobs.includes(job)) out.jobs.push(job);
    notStarted(job, reason, now);
    header.remaining = Math.max(0, header.remaining - 1);
  }
  header.pending = left;
}

function notStarted(job: JobState, reason: string, now: Date): void {
  job.status = 'failed';
  job.error = { name: 'StoppedError', code: STOPPED, message: `not backed up: the run was stopped by ${reason}`, permanent: true, retryable: false };
  job.finishedAt = now.toISOString();
}

/** The phases of `job` from `fn` on that do something, but the post-vm hooks, for people: `verify and prune`. */
function phasesFrom(job: JobState, fn: string): string {
  const verify = (job.input as { verify?: unknown } | undefined)?.verify === true;
  const later = job.pipeline.slice(job.pipeline.indexOf(fn)).filter((p) => p !== POST_HOOK && (p !== VERIFY || verify));
  return later.length <= 1 ? (later[0] ?? 'nothing') : `${later.slice(0, -1).join(', ')} and ${later.at(-1)}`;
}

function finish(out: Transition, now: Date): Transition {
  out.header.status = 'finished';
  out.header.finishedAt = now.toISOString();
  out.finished = true;
  return out;
}

/**
 * The header set again from the jobs, when it does not count what they say; undefined when it
 * does. A commit writes its jobs, then its header (RunStore.commit): a coordinator that dies
 * in between leaves a job ended (or started) that the header still counts as running (or
 * pending). The event comes again, finds its job already past it and changes nothing, so
 * without this the run would wait for ever. `all` must hold every job of the run.
 *
 * Jobs the lost commit started get their first phase queued again under the id it had (a
 * copy is dropped by the stream's deduplication); the pending jobs start while slots are
 * free; a run with no job left finishes.
 */
export function repair(header: RunHeader, all: ReadonlyMap<string, JobState>, now: Date): Transition | undefined {
  if (header.status !== 'running') return undefined;
  const jobs = header.jobIds.map((id) => all.get(id));
  if (jobs.some((j) => j === undefined)) return undefined;
  const open = (j: JobState) => j.status === 'pending' || j.status === 'running';
  const remaining = jobs.filter((j) => open(j!)).length;
  const active = jobs.filter((j) => j!.kind === 'vm' && j!.status === 'running').length;
  const pending = header.pending.filter((id) => all.get(id)!.status === 'pending');
  if (remaining === header.remaining && active === header.active && pending.length === header.pending.length) return undefined;
  const out: Transition = { header: { ...header, remaining, active, pending }, jobs: [], enqueue: [], finished: false };
  for (const id of header.pending) {
    const job = all.get(id)!;
    if (job.status === 'running' && job.phase === job.pipeline[0]) {
      out.enqueue.push({ fn: job.phase, data: { ...(job.input as object), try: job.try }, id: enqueueId(header.runId, job.jobId, job.try, job.phase) });
    }
  }
  startPending(out, all, now);
  return out.header.remaining === 0 ? finish(out, now) : out;
}

/** A new run's header, written when the run is submitted (before the plan runs). */
export function newRunHeader(runId: string, startedAt: Date, opts: { concurrency: number; vmRetries: number; trigger?: string }): RunHeader {
  return {
    runId,
    status: 'planning',
    startedAt: startedAt.toISOString(),
    concurrency: opts.concurrency,
    vmRetries: opts.vmRetries,
    jobIds: [],
    pending: [],
    active: 0,
    remaining: 0,
    warnings: [],
    excludes: [],
    cleaned: [],
    ...(opts.trigger !== undefined ? { trigger: opts.trigger } : {}),
  };
}
