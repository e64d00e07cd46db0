import { pipelines } from '../../functions/index.js';
import type { JobKind } from '../../functions/index.js';
import { PlanOutput } from '../../functions/plan/plan.js';
import type { PhaseEvent } from '../events.js';
import type { Category, JobState, RunHeader } from './state.js';

/** A job to queue: function name, message, dedup id. */
export interface Enqueue {
  fn: string;
  data: unknown;
  id: string;
}

/** What the coordinator must read before reducing an event: the header and some jobs. */
export interface RunView {
  header: RunHeader;
  /** The event's job and the first `header.concurrency` pending VM jobs, when they exist. */
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
 */
export function reduce(view: RunView, event: PhaseEvent, now: Date): Transition {
  const header: RunHeader = { ...view.header };
  const out: Transition = { header, jobs: [], enqueue: [], finished: false };
  if (header.status === 'finished' || event.outcome === 'started') return out;

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
      ...plan.vmJobs.map((j) => newJob(j.jobId, 'vm', j.mode === 'vm' ? 'vm-export' : 'vdi-export', j.vm.name, j, { vmUuid: j.vm.uuid, folder: j.folder })),
      ...(plan.poolDb !== undefined ? [newJob('pool-db', 'pool-db', 'pool-db', 'pool database', plan.poolDb, {})] : []),
      ...plan.hostJobs.map((j) => newJob(j.jobId, 'host-backup', 'host-backup', j.host.name, j, {})),
    ];
    header.jobIds = created.map((j) => j.jobId);
    header.remaining = created.length;
    header.pending = created.filter((j) => j.kind === 'vm').map((j) => j.jobId);
    out.jobs = created;
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
    const next = job.pipeline[job.pipeline.indexOf(event.fn) + 1];
    if (next !== undefined) {
      job.phase = next;
      out.enqueue.push({ fn: next, data: event.output, id: enqueueId(header.runId, job.jobId, job.try, next) });
      return out;
    }
    job.status = 'success';
    return endJob(out, job, view, now);
  }

  // failed
  job.phaseMs[event.fn] = (job.phaseMs[event.fn] ?? 0) + event.durationMs;
  if (job.kind === 'vm' && event.error.retryable && job.try <= header.vmRetries) {
    job.try += 1;
    job.phase = job.pipeline[0]!;
    job.warnings = [...job.warnings, `${job.label}: ${event.fn} failed (${event.error.message}); backing up again (attempt ${job.try})`];
    out.enqueue.push({ fn: job.phase, data: { ...(job.input as object), try: job.try }, id: enqueueId(header.runId, job.jobId, job.try, job.phase) });
    return out;
  }
  job.status = 'failed';
  job.error = event.error;
  job.failedInput = event.input;
  return endJob(out, job, view, now);
}

function newJob(jobId: string, kind: JobKind, category: Category, label: string, input: unknown, extra: { vmUuid?: string; folder?: string }): JobState {
  const pipeline = [...pipelines[kind]];
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
  out.enqueue.push({ fn: job.phase, data: job.input, id: enqueueId(out.header.runId, job.jobId, job.try, job.phase) });
}

/** Starts pending VM jobs while fewer than `concurrency` run. */
function startPending(out: Transition, jobs: ReadonlyMap<string, JobState>, now: Date): void {
  const header = out.header;
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

function finish(out: Transition, now: Date): Transition {
  out.header.status = 'finished';
  out.header.finishedAt = now.toISOString();
  out.finished = true;
  return out;
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
