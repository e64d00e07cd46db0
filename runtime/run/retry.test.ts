import { describe, expect, it } from 'vitest';
import { pipelines } from '../../functions/index.js';
import type { ErrorInfo } from '../errors.js';
import type { PhaseEvent } from '../events.js';
import { newRunHeader, reduce } from './reduce.js';
import { planRetry } from './retry.js';
import type { JobState, RunHeader } from './state.js';

const RUN = 'r1';
const at = new Date('2026-11-26T08:30:00Z');
const later = new Date('2026-11-26T10:00:00Z');

const permanent: ErrorInfo = { name: 'PermanentError', code: 'SPACE_LOW', message: 'disk full', permanent: true, retryable: false };
const restart: ErrorInfo = { name: 'RestartError', code: 'ECONNRESET', message: 'reset', permanent: true, retryable: true };
const transient: ErrorInfo = { name: 'Error', code: 'EIO', message: 'io', permanent: false, retryable: true };

function job(id: string, over: Partial<JobState> = {}): JobState {
  const kind = over.kind ?? 'vm';
  const pipeline: string[] = [...pipelines[kind]];
  return {
    jobId: id,
    kind,
    category: kind === 'vm' ? 'vm-export' : kind,
    label: id,
    pipeline,
    phase: pipeline[0]!,
    status: 'success',
    try: 1,
    input: { runId: RUN, jobId: id, try: 1, marker: `input of ${id}` },
    files: [],
    bytes: 0,
    warnings: [],
    phaseMs: {},
    startedAt: at.toISOString(),
    finishedAt: at.toISOString(),
    ...over,
  };
}

function failedAt(id: string, phase: string, error: ErrorInfo, over: Partial<JobState> = {}): JobState {
  return job(id, { phase, status: 'failed', error, failedInput: { runId: RUN, jobId: id, try: over.try ?? 1, marker: `${phase} input of ${id}` }, ...over });
}

function finished(jobs: JobState[], over: Partial<RunHeader> = {}): RunHeader {
  return {
    ...newRunHeader(RUN, at, { concurrency: 2, vmRetries: 0 }),
    status: 'finished',
    finishedAt: at.toISOString(),
    jobIds: jobs.map((j) => j.jobId),
    ...over,
  };
}

describe('planRetry: refusals', () => {
  it.each([
    ['a running run', finished([failedAt('vm.a', 'export', restart)], { status: 'running', remaining: 1 }), [failedAt('vm.a', 'export', restart)], 'not-finished'],
    ['a planning run', finished([], { status: 'planning' }), [], 'not-finished'],
    ['a run whose plan failed', finished([], { fatal: permanent }), [], 'fatal'],
    ['a run where everything succeeded', finished([job('vm.a'), job('pool-db', { kind: 'pool-db' })]), [job('vm.a'), job('pool-db', { kind: 'pool-db' })], 'nothing-failed'],
  ])('%s', (_name, header, jobs, reason) => {
    const r = planRetry(header, jobs, later);
    expect(r).toMatchObject({ ok: false, reason });
    if (!r.ok) expect(r.message).toContain(RUN);
  });
});

const FIRST = pipelines.vm[0];

describe('planRetry: where each failed job starts again', () => {
  it.each([
    // job, expected phase, expected data marker, from
    ['pre-hook failed', failedAt('vm.a', FIRST, permanent), FIRST, 'input of vm.a', 'start'],
    ['snapshot failed (permanent): pre-vm hooks again, then a snapshot', failedAt('vm.a', 'snapshot', permanent), FIRST, 'input of vm.a', 'start'],
    ['export failed (restart error): the snapshot is gone', failedAt('vm.a', 'export', restart), FIRST, 'input of vm.a', 'start'],
    ['export failed (permanent): the snapshot is gone too', failedAt('vm.a', 'export', permanent), FIRST, 'input of vm.a', 'start'],
    ['meta failed (transient, attempts used up)', failedAt('vm.a', 'meta', transient), 'meta', 'meta input of vm.a', 'failed-phase'],
    ['prune failed (permanent)', failedAt('vm.a', 'prune', permanent), 'prune', 'prune input of vm.a', 'failed-phase'],
    ['meta failed with a restart error', failedAt('vm.a', 'meta', restart), FIRST, 'input of vm.a', 'start'],
    ['meta failed and its input is unusable', failedAt('vm.a', 'meta', permanent, { failedInput: 'garbage' }), FIRST, 'input of vm.a', 'start'],
    ['pool-db failed', failedAt('pool-db', 'pool-db', transient, { kind: 'pool-db' }), 'pool-db', 'input of pool-db', 'start'],
    ['host backup failed', failedAt('host.h1', 'host-backup', transient, { kind: 'host-backup' }), 'host-backup', 'input of host.h1', 'start'],
  ])('%s', (_name, failed, phase, marker, from) => {
    const r = planRetry(finished([failed]), [failed], later);
    if (!r.ok) throw new Error(r.message);
    expect(r.enqueue).toEqual([{ fn: phase, data: { runId: RUN, jobId: failed.jobId, try: 2, marker }, id: `${RUN}:${failed.jobId}:2:${phase}` }]);
    expect(r.retried).toEqual([{ jobId: failed.jobId, label: failed.label, phase, from }]);
    const j = r.jobs[0]!;
    expect(j).toMatchObject({ status: 'running', phase, try: 2, startedAt: later.toISOString() });
    expect(j.error).toBeUndefined();
    expect(j.failedInput).toBeUndefined();
    expect(j.finishedAt).toBeUndefined();
    // The job's first-phase input is kept for later restarts.
    expect(j.input).toEqual(failed.input);
  });
});

describe('planRetry: the run', () => {
  it('a run stopped by SIGTERM, retried, is no longer stopping: its jobs not started start, the stopped ones again', () => {
    const stopped: ErrorInfo = { name: 'StoppedError', code: 'STOPPED', message: 'not backed up: the run was stopped by SIGTERM', permanent: true, retryable: false };
    const jobs = [failedAt('vm.a', 'export', { ...stopped, message: 'export stopped by SIGTERM' }), job('vm.b', { status: 'failed', error: stopped })];
    const r = planRetry(finished(jobs, { stopping: { reason: 'SIGTERM', at: at.toISOString() } }), jobs, later);
    if (!r.ok) throw new Error(r.message);
    expect(r.header.stopping).toBeUndefined();
    expect(r.enqueue.map((e) => e.id)).toEqual([`${RUN}:vm.a:2:${FIRST}`, `${RUN}:vm.b:2:${FIRST}`]);
  });

  it('reopens the run: running, remaining = failed jobs, retries counted, finishedAt cleared; successes untouched', () => {
    const jobs = [job('vm.ok'), failedAt('vm.a', 'meta', transient), failedAt('pool-db', 'pool-db', transient, { kind: 'pool-db' })];
    const r = planRetry(finished(jobs, { retries: 1 }), jobs, later);
    if (!r.ok) throw new Error(r.message);
    expect(r.header).toMatchObject({ status: 'running', remaining: 2, retries: 2, active: 1, pending: [] });
    expect(r.header.finishedAt).toBeUndefined();
    expect(r.jobs.map((j) => j.jobId)).toEqual(['vm.a', 'pool-db']);
  });

  it('VM jobs restarting respect the concurrency; resumed phases and pool jobs start at once', () => {
    const jobs = [
      failedAt('vm.a', 'export', restart),
      failedAt('vm.b', 'export', restart),
      failedAt('vm.c', 'snapshot', permanent),
      failedAt('vm.d', 'prune', permanent),
      failedAt('pool-db', 'pool-db', transient, { kind: 'pool-db' }),
    ];
    const r = planRetry(finished(jobs), jobs, later);
    if (!r.ok) throw new Error(r.message);
    expect(r.enqueue.map((e) => e.id)).toEqual([`${RUN}:vm.a:2:${FIRST}`, `${RUN}:vm.b:2:${FIRST}`, `${RUN}:vm.d:2:prune`, `${RUN}:pool-db:2:pool-db`]);
    expect(r.header).toMatchObject({ active: 3, pending: ['vm.c'], remaining: 5 });
    expect(r.jobs.find((j) => j.jobId === 'vm.c')).toMatchObject({ status: 'pending', phase: FIRST, try: 2 });
    expect(r.jobs.find((j) => j.jobId === 'vm.c')!.startedAt).toBeUndefined();
  });

  it('the coordinator’s reducer carries retried jobs to the end: a pending one starts with its new try, the run finishes again', () => {
    const jobs = [failedAt('vm.a', 'export', restart), failedAt('vm.b', 'prune', permanent), failedAt('vm.c', 'export', restart)];
    const r = planRetry(finished(jobs, { concurrency: 1 }), jobs, later);
    if (!r.ok) throw new Error(r.message);
    let header = r.header;
    const state = new Map(jobs.map((j) => [j.jobId, j]));
    for (const j of r.jobs) state.set(j.jobId, j);
    const queued = [...r.enqueue];
    let finishedAgain = false;
    const ev = (fn: string, jobId: string, tryN: number, outcome: 'done' | 'failed'): PhaseEvent =>
      outcome === 'done'
        ? { runId: RUN, jobId, fn, try: tryN, attempt: 1, at: later.toISOString(), outcome, durationMs: 1, output: { runId: RUN, jobId, try: tryN } }
        : { runId: RUN, jobId, fn, try: tryN, attempt: 1, at: later.toISOString(), outcome, durationMs: 1, error: permanent, input: {} };
    // A stale event of the failed attempt changes nothing.
    expect(reduce({ header, jobs: new Map([['vm.a', state.get('vm.a')!]]) }, ev('export', 'vm.a', 1, 'failed'), later).jobs).toEqual([]);
    // Play the queue: every phase succeeds.
    while (queued.length > 0) {
      const next = queued.shift()!;
      const [, jobId, tryN] = next.id.split(':');
      const data = next.data as { try: number };
      expect(data.try).toBe(Number(tryN));
      const ids = [jobId!, ...header.pending.slice(0, header.concurrency)];
      const view = new Map(ids.filter((id) => state.has(id)).map((id) => [id, state.get(id)!]));
      const t = reduce({ header, jobs: view }, ev(next.fn, jobId!, data.try, 'done'), later);
      header = t.header;
      for (const j of t.jobs) state.set(j.jobId, j);
      queued.push(...t.enqueue);
      finishedAgain ||= t.finished;
    }
    expect(finishedAgain).toBe(true);
    expect(header).toMatchObject({ status: 'finished', remaining: 0, active: 0, pending: [] });
    expect([...state.values()].map((j) => [j.jobId, j.status, j.try])).toEqual([
      ['vm.a', 'success', 2],
      ['vm.b', 'success', 2],
      ['vm.c', 'success', 2],
    ]);
  });
});
