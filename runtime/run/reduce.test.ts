import { describe, expect, it } from 'vitest';
import type { PlanOutput } from '../../functions/plan/plan.js';
import type { SnapshotInput } from '../../functions/snapshot/snapshot.js';
import type { ErrorInfo } from '../errors.js';
import type { PhaseEvent, RunEvent } from '../events.js';
import { pipelines } from '../../functions/index.js';
import { newRunHeader, reduce, repair } from './reduce.js';
import type { Transition } from './reduce.js';
import type { JobState, RunHeader } from './state.js';
import { RunSummary, formatSummary, summarize } from './summary.js';
import { vmJob as testVmJob } from '../../test/helpers/jobs.js';

const RUN = 'r1';
const now = new Date('2026-11-26T08:30:00Z');

/** VM n's job; vm3 is a vdi-export of its xvda. */
function vmJob(n: number): SnapshotInput {
  const vdi = n === 3;
  return testVmJob({ runId: RUN, vm: { uuid: `u${n}`, name: `vm${n}` }, backupDir: '/b', stamp: '20261126-083000', maxBackups: 4, mode: vdi ? 'vdi' : 'vm', disks: vdi ? ['xvda'] : [] });
}

function plan(vms: number, extra: Partial<PlanOutput> = {}): PlanOutput {
  return {
    runId: RUN,
    jobId: 'plan',
    try: 1,
    pool: { uuid: 'p', name: 'pool' },
    stamp: '20261126-083000',
    backupDir: '/b',
    vmJobs: Array.from({ length: vms }, (_, i) => vmJob(i + 1)),
    hostJobs: [],
    excludes: [],
    warnings: [],
    cleaned: [],
    concurrency: 2,
    vmRetries: 1,
    ...extra,
  };
}

/** A tiny in-memory run: applies transitions the way the coordinator does. */
class Run {
  header: RunHeader = newRunHeader(RUN, now, { concurrency: 2, vmRetries: 1 });
  jobs = new Map<string, JobState>();
  queued: { fn: string; id: string; data: unknown }[] = [];
  finished = false;

  apply(event: RunEvent): Transition {
    // As the coordinator loads them: a stop needs every pending job.
    const ids = event.outcome === 'stop' ? this.header.pending : [event.jobId, ...this.header.pending.slice(0, this.header.concurrency)];
    const view = new Map(ids.filter((id) => this.jobs.has(id)).map((id) => [id, structuredClone(this.jobs.get(id)!)]));
    const t = reduce({ header: this.header, jobs: view }, event, now);
    this.header = t.header;
    for (const j of t.jobs) this.jobs.set(j.jobId, j);
    this.queued.push(...t.enqueue);
    this.finished ||= t.finished;
    return t;
  }
  take(): string[] {
    const q = this.queued.map((e) => e.id);
    this.queued = [];
    return q;
  }
}

const base = (fn: string, jobId: string, tryN = 1) => ({ runId: RUN, jobId, fn, try: tryN, attempt: 1, at: now.toISOString() });
const done = (fn: string, jobId: string, output: unknown = {}, tryN = 1): PhaseEvent => ({ ...base(fn, jobId, tryN), outcome: 'done', durationMs: 10, output });
const failed = (fn: string, jobId: string, error: Partial<ErrorInfo> = {}, tryN = 1, input: unknown = {}): PhaseEvent => ({
  ...base(fn, jobId, tryN),
  outcome: 'failed',
  durationMs: 10,
  error: { name: 'E', code: 'X', message: 'boom', permanent: true, retryable: false, ...error },
  input,
});

/** Output of a phase of a VM job, enough for the reducer (meta reports the set's files). */
function outputOf(fn: string, n: number, tryN: number): unknown {
  if (fn === 'meta') return { files: [{ name: 'f', format: 'xva', size: 5 }], bytes: 5 };
  if (fn === 'prune') return { runId: RUN, jobId: `vm.u${n}`, try: tryN, vm: { uuid: `u${n}`, name: `vm${n}` }, backupDir: '/b', folder: `vm${n}`, maxBackups: 4, protect: ['20261126-083000'], kept: ['20261126-083000'], deleted: [], warnings: [] };
  return {};
}

/** Runs a VM job through every phase of its pipeline, from `from` on. */
function finishVm(run: Run, n: number, tryN = 1, from: string = pipelines.vm[0]) {
  const phases: readonly string[] = pipelines.vm;
  for (const fn of phases.slice(phases.indexOf(from))) run.apply(done(fn, `vm.u${n}`, outputOf(fn, n, tryN), tryN));
}

/** Starts a run of `vms` VMs and takes the queued jobs. */
function started(vms: number, extra: Partial<PlanOutput> = {}): Run {
  const run = new Run();
  run.apply(done('plan', 'plan', plan(vms, extra)));
  run.take();
  return run;
}

/** The phases of a VM job after pre-hook up to and including `fn`, done in order. */
function doneUpTo(run: Run, n: number, fn: string, tryN = 1) {
  const phases: readonly string[] = pipelines.vm;
  for (const phase of phases.slice(0, phases.indexOf(fn))) run.apply(done(phase, `vm.u${n}`, outputOf(phase, n, tryN), tryN));
}

describe('reduce', () => {
  it('starts VMs `concurrency` at a time and the rest as slots free', () => {
    const run = new Run();
    run.apply(done('plan', 'plan', plan(3, { poolDb: { runId: RUN, jobId: 'pool-db', try: 1, backupDir: '/b', stamp: '20261126-083000', maxBackups: 4, idleTimeoutS: 300 } })));
    expect(run.take()).toEqual(['r1:pool-db:1:pool-db', 'r1:vm.u1:1:pre-hook', 'r1:vm.u2:1:pre-hook']);
    expect(run.header.pending).toEqual(['vm.u3']);
    run.apply(done('pre-hook', 'vm.u1'));
    expect(run.take()).toEqual(['r1:vm.u1:1:snapshot']);
    finishVm(run, 1, 1, 'snapshot');
    expect(run.take()).toContain('r1:vm.u3:1:pre-hook');
    expect(run.header.active).toBe(2);
  });

  it('passes each phase its predecessor’s output', () => {
    const run = new Run();
    run.apply(done('plan', 'plan', plan(1)));
    run.take();
    run.apply(done('pre-hook', 'vm.u1', { marker: 41 }));
    expect(run.queued[0]).toMatchObject({ fn: 'snapshot', data: { marker: 41 } });
    run.apply(done('snapshot', 'vm.u1', { marker: 42 }));
    expect(run.queued[1]).toMatchObject({ fn: 'export', data: { marker: 42 } });
  });

  it('ignores duplicate and stale events', () => {
    const run = new Run();
    run.apply(done('plan', 'plan', plan(1)));
    run.take();
    run.apply(done('pre-hook', 'vm.u1'));
    run.apply(done('snapshot', 'vm.u1'));
    expect(run.take()).toEqual(['r1:vm.u1:1:snapshot', 'r1:vm.u1:1:export']);
    expect(run.apply(done('snapshot', 'vm.u1')).enqueue).toEqual([]); // redelivered event
    expect(run.apply(done('export', 'vm.u1', {}, 2)).enqueue).toEqual([]); // another try
    expect(run.apply(done('plan', 'plan', plan(1))).jobs).toEqual([]); // plan twice
  });

  it('restarts a VM from its pre-hook (a new snapshot needs a new pre-vm) after a retryable failure, once', () => {
    const run = started(1);
    doneUpTo(run, 1, 'export');
    run.take();
    run.apply(failed('export', 'vm.u1', { retryable: true, code: 'ECONNRESET' }));
    // The post-vm hooks of the failed attempt run first, told that the VM is backed up again.
    expect(run.queued).toMatchObject([{ fn: 'post-hook', id: 'r1:vm.u1:1:post-hook', data: { try: 1, failed: { fn: 'export', retrying: true, error: { code: 'ECONNRESET' } } } }]);
    run.take();
    run.apply(done('post-hook', 'vm.u1', { failed: { fn: 'export' } }));
    expect(run.queued).toMatchObject([{ fn: 'pre-hook', id: 'r1:vm.u1:2:pre-hook', data: { try: 2, vm: { name: 'vm1' } } }]);
    expect(run.jobs.get('vm.u1')).toMatchObject({ status: 'running', phase: 'pre-hook', try: 2 });
    expect(run.jobs.get('vm.u1')!.error).toBeUndefined();
    run.take();
    doneUpTo(run, 1, 'export', 2);
    run.take();
    run.apply(failed('export', 'vm.u1', { retryable: true }, 2));
    expect(run.queued).toMatchObject([{ fn: 'post-hook', id: 'r1:vm.u1:2:post-hook', data: { failed: { retrying: false } } }]);
    expect(run.finished).toBe(false);
    run.apply(done('post-hook', 'vm.u1', { failed: { fn: 'export' } }, 2));
    expect(run.jobs.get('vm.u1')).toMatchObject({ status: 'failed', phase: 'export', try: 2 });
    expect(run.finished).toBe(true);
  });

  it('a set that fails verify_after_backup is a failed backup: post-hook, then a new attempt', () => {
    const run = started(1);
    doneUpTo(run, 1, 'verify');
    run.take();
    run.apply(done('verify', 'vm.u1', { verified: { ok: false, bytes: 5, ms: 3, error: { code: 'XVA_BAD_CHECKSUM', message: 'chunk Ref:1/00000001 fails its XXH64 checksum' } } }));
    expect(run.queued).toMatchObject([{ fn: 'post-hook', data: { failed: { fn: 'verify', retrying: true, error: { code: 'XVA_BAD_CHECKSUM', retryable: true } } } }]);
    expect(run.jobs.get('vm.u1')!.verified).toEqual({ ok: false, bytes: 5, ms: 3, error: 'chunk Ref:1/00000001 fails its XXH64 checksum' });
    run.take();
    run.apply(done('post-hook', 'vm.u1', { failed: { fn: 'verify' } }));
    expect(run.take()).toEqual(['r1:vm.u1:2:pre-hook']);
    // verified: null (verify_after_backup off) is no check and no failure.
    doneUpTo(run, 1, 'verify', 2);
    run.take();
    run.apply(done('verify', 'vm.u1', { verified: null }, 2));
    expect(run.take()).toEqual(['r1:vm.u1:2:prune']);
  });

  it('does not restart after a permanent failure, and frees the slot', () => {
    const run = new Run();
    run.apply(done('plan', 'plan', plan(3)));
    run.take();
    run.apply(done('pre-hook', 'vm.u1'));
    run.apply(failed('snapshot', 'vm.u1', { code: 'VM_GONE' }));
    expect(run.take()).toEqual(['r1:vm.u1:1:snapshot', 'r1:vm.u1:1:post-hook']);
    run.apply(done('post-hook', 'vm.u1', { failed: { fn: 'snapshot' } }));
    expect(run.take()).toEqual(['r1:vm.u3:1:pre-hook']);
    expect(run.jobs.get('vm.u1')).toMatchObject({ status: 'failed', phase: 'snapshot', error: { code: 'VM_GONE' } });
  });

  it('finishes when every job is final, with VmBackup counts and exit code', () => {
    const run = new Run();
    run.apply(done('plan', 'plan', plan(3, { warnings: [{ entry: 'nope', list: 'vm_exports', message: 'matches no VM' }] })));
    finishVm(run, 1);
    finishVm(run, 2);
    run.apply(done('pre-hook', 'vm.u3'));
    run.apply(failed('snapshot', 'vm.u3', { code: 'NO_DISKS', message: 'no disk xvda' }));
    run.apply(done('post-hook', 'vm.u3', { failed: { fn: 'snapshot' } }));
    expect(run.finished).toBe(true);
    const summary = RunSummary.parse(summarize(run.header, [...run.jobs.values()]));
    expect(summary.categories['vm-export']).toEqual({ S: 2, W: 1, E: 0 });
    expect(summary.categories['pool-db']).toBeUndefined();
    expect(summary.categories['vdi-export']).toEqual({ S: 0, W: 0, E: 1 });
    expect(summary.exitCode).toBe(1);
    const text = formatSummary(summary);
    expect(text).toContain('VmBackup vm-export Summary - S:2 W:1 E:0\n>> Success with Warnings <<');
    expect(text).toContain('VmBackup vdi-export Summary - S:0 W:0 E:1\n>> Error <<');
  });

  it('a failed plan ends the run as fatal (exit 2)', () => {
    const run = new Run();
    run.apply(failed('plan', 'plan', { code: 'BACKUP_DIR_NOT_WRITABLE', message: 'not writable' }));
    expect(run.finished).toBe(true);
    const summary = summarize(run.header, []);
    expect(summary).toMatchObject({ status: 'fatal', exitCode: 2 });
  });

  it('an empty selection finishes at once with success', () => {
    const run = new Run();
    run.apply(done('plan', 'plan', plan(0)));
    expect(run.finished).toBe(true);
    expect(summarize(run.header, []).exitCode).toBe(0);
  });
});

describe('reduce: hooks', () => {
  it('a pre-hook that aborts skips the VM: no snapshot, post-hook still runs, then the slot frees', () => {
    const run = started(3);
    run.apply(done('pre-hook', 'vm.u1', { ...vmJob(1), skipped: { reason: 'pre-vm command hook: replica lagging' }, warnings: [] }));
    // No snapshot: straight to the post-vm hooks, told why.
    expect(run.queued).toMatchObject([{ fn: 'post-hook', id: 'r1:vm.u1:1:post-hook', data: { vm: { name: 'vm1' }, mode: 'vm', stamp: '20261126-083000', files: [], skipped: { reason: 'pre-vm command hook: replica lagging' } } }]);
    expect(run.queued.some((q) => q.fn === 'snapshot')).toBe(false);
    expect(run.header.pending).toEqual(['vm.u3']); // the slot is held until post-vm ran
    run.take();
    run.apply(done('post-hook', 'vm.u1', { skipped: { reason: 'x' } }));
    expect(run.jobs.get('vm.u1')).toMatchObject({ status: 'skipped', error: { code: 'HOOK_ABORTED' } });
    expect(run.take()).toEqual(['r1:vm.u3:1:pre-hook']);
    expect(run.apply(done('pre-hook', 'vm.u1', { skipped: { reason: 'again' } })).enqueue).toEqual([]); // redelivered
    finishVm(run, 2);
    finishVm(run, 3);
    expect(run.finished).toBe(true);

    const summary = RunSummary.parse(summarize(run.header, [...run.jobs.values()]));
    const skipped = summary.jobs.find((j) => j.name === 'vm1')!;
    expect(skipped).toMatchObject({ status: 'skipped', skipped: { reason: 'pre-vm command hook: replica lagging' }, files: [] });
    expect(skipped.error).toBeUndefined();
    // A skip counts as a warning (VmBackup had no such case): exit 0.
    expect(summary.categories['vm-export']).toEqual({ S: 1, W: 1, E: 0 });
    expect(summary).toMatchObject({ status: 'warning', exitCode: 0 });
    expect(formatSummary(summary)).toContain('SKIPPED: vm-export vm1: pre-vm command hook: replica lagging\n');
  });

  it('every VM skipped by its pre-vm hooks: nothing backed up, the run is an error (exit 1)', () => {
    const run = started(1);
    run.apply(done('pre-hook', 'vm.u1', { ...vmJob(1), skipped: { reason: 'pre-vm command hook: timed out' }, warnings: [] }));
    run.take();
    run.apply(done('post-hook', 'vm.u1', { skipped: { reason: 'x' } }));
    expect(run.finished).toBe(true);
    const summary = RunSummary.parse(summarize(run.header, [...run.jobs.values()]));
    expect(summary.categories['vm-export']).toEqual({ S: 0, W: 1, E: 0 });
    expect(summary).toMatchObject({ status: 'error', exitCode: 1 });
    expect(formatSummary(summary)).toContain('SKIPPED: vm-export vm1: pre-vm command hook: timed out\n');
    expect(formatSummary(summary)).toContain('>> Error: every VM was skipped, none backed up <<\n');
  });

  it('post-hook gets the prune output with the set’s files, mode and stamp', () => {
    const run = started(1);
    doneUpTo(run, 1, 'post-hook');
    const queued = run.queued.find((q) => q.fn === 'post-hook')!;
    expect(queued.data).toMatchObject({
      runId: RUN,
      jobId: 'vm.u1',
      try: 1,
      vm: { uuid: 'u1', name: 'vm1' },
      folder: 'vm1',
      kept: ['20261126-083000'],
      mode: 'vm',
      stamp: '20261126-083000',
      files: [{ name: 'f', format: 'xva', size: 5 }],
      bytes: 5,
    });
    expect((queued.data as Record<string, unknown>).failed).toBeUndefined();
    run.apply(done('post-hook', 'vm.u1', { warnings: ['post-vm http hook failed: x; going on'] }));
    expect(run.jobs.get('vm.u1')).toMatchObject({ status: 'success', warnings: ['post-vm http hook failed: x; going on'] });
  });

  // Every failure after the pre-vm hooks ran goes through post-hook before the job ends.
  const failures: [string, string, Partial<ErrorInfo>, { retrying: boolean; status: string; phase: string; queuedAfter: string[] }][] = [
    ['pre-hook crashed', 'pre-hook', { code: 'INTERNAL' }, { retrying: false, status: 'failed', phase: 'pre-hook', queuedAfter: [] }],
    ['snapshot failed (permanent)', 'snapshot', { code: 'VM_GONE' }, { retrying: false, status: 'failed', phase: 'snapshot', queuedAfter: [] }],
    ['export failed (retryable)', 'export', { code: 'ECONNRESET', retryable: true, permanent: false }, { retrying: true, status: 'running', phase: 'pre-hook', queuedAfter: ['r1:vm.u1:2:pre-hook'] }],
    ['meta failed (permanent)', 'meta', { code: 'ENOSPC' }, { retrying: false, status: 'failed', phase: 'meta', queuedAfter: [] }],
    ['prune failed (permanent)', 'prune', { code: 'EACCES' }, { retrying: false, status: 'failed', phase: 'prune', queuedAfter: [] }],
  ];
  it.each(failures)('%s → post-hook with the failure, then the job ends or restarts', (_name, fn, error, want) => {
    const run = started(1);
    doneUpTo(run, 1, fn);
    run.take();
    const input = { marker: `input of ${fn}` };
    run.apply(failed(fn, 'vm.u1', error, 1, input));
    expect(run.queued).toHaveLength(1);
    const post = run.queued[0]!;
    expect(post).toMatchObject({ fn: 'post-hook', id: 'r1:vm.u1:1:post-hook', data: { vm: { name: 'vm1' }, failed: { fn, retrying: want.retrying, error: { code: error.code } } } });
    expect(run.jobs.get('vm.u1')).toMatchObject({ status: 'running', phase: 'post-hook' });
    expect(run.finished).toBe(false);
    run.take();
    run.apply(done('post-hook', 'vm.u1', { ...(post.data as object), hooks: { decision: 'continue', reasons: [], warnings: [] } }));
    expect(run.take()).toEqual(want.queuedAfter);
    const job = run.jobs.get('vm.u1')!;
    expect(job).toMatchObject({ status: want.status, phase: want.phase });
    if (want.status === 'failed') {
      // What `retry` needs to resume at the failed phase: that phase, its input, the error.
      expect(job).toMatchObject({ error: { code: error.code }, failedInput: input });
      expect(run.finished).toBe(true);
    }
  });

  it('a post-hook that fails leaves the backup’s outcome as it was, with a warning', () => {
    const ok = started(1);
    doneUpTo(ok, 1, 'post-hook');
    ok.apply(failed('post-hook', 'vm.u1', { code: 'INTERNAL', message: 'bug' }));
    expect(ok.jobs.get('vm.u1')).toMatchObject({ status: 'success' });
    expect(ok.jobs.get('vm.u1')!.warnings).toEqual(['the post-vm hooks could not run (bug)']);

    const bad = started(1);
    doneUpTo(bad, 1, 'export');
    bad.apply(failed('export', 'vm.u1', { code: 'VDI_IO_ERROR' }));
    bad.take();
    bad.apply(failed('post-hook', 'vm.u1', { code: 'INTERNAL', message: 'bug' }, 1, { failed: { fn: 'export' } }));
    expect(bad.jobs.get('vm.u1')).toMatchObject({ status: 'failed', phase: 'export', error: { code: 'VDI_IO_ERROR' } });
    expect(bad.take()).toEqual([]);
    expect(bad.finished).toBe(true);
  });

  it('a run-start hook that aborts ends the run as skipped: nothing backed up, exit 1', () => {
    const run = new Run();
    run.apply(failed('plan', 'plan', { code: 'HOOK_ABORTED', message: 'the run was skipped: run-start command hook: maintenance tonight' }));
    expect(run.finished).toBe(true);
    const summary = RunSummary.parse(summarize(run.header, []));
    expect(summary).toMatchObject({ status: 'error', exitCode: 1, skipped: { reason: 'the run was skipped: run-start command hook: maintenance tonight' } });
    expect(summary.fatal).toBeUndefined();
    expect(formatSummary(summary)).toContain('SKIPPED: the run was skipped: run-start command hook: maintenance tonight\n>> Error: nothing backed up <<\n');
  });
});

describe('reduce: a stopped run (SIGTERM)', () => {
  const stop = (reason = 'SIGTERM'): RunEvent => ({ outcome: 'stop', runId: RUN, reason, at: now.toISOString() });
  const stopped = { name: 'StoppedError', code: 'STOPPED', permanent: true, retryable: false };

  it('ends the pending VMs at once; the running ones end with their phase: no retry, no next VM, no prune', () => {
    const run = started(4);
    doneUpTo(run, 1, 'export'); // vm1: export under way
    doneUpTo(run, 2, 'meta'); // vm2: export done, meta under way
    run.take();
    expect(run.header.pending).toEqual(['vm.u3', 'vm.u4']);

    const t = run.apply(stop());
    expect(t.enqueue).toEqual([]);
    expect(t.finished).toBe(false);
    expect(run.header).toMatchObject({ stopping: { reason: 'SIGTERM', at: now.toISOString() }, pending: [], remaining: 2, active: 2 });
    for (const id of ['vm.u3', 'vm.u4']) {
      expect(run.jobs.get(id)).toMatchObject({ status: 'failed', try: 1, error: { ...stopped, message: 'not backed up: the run was stopped by SIGTERM' } });
      expect(run.jobs.get(id)!.startedAt).toBeUndefined();
    }

    // The export aborted by the stop — even with an error that would be retried — is final;
    // its post-vm hooks still run, told that nothing follows.
    run.apply(failed('export', 'vm.u1', { code: 'ECONNRESET', retryable: true, permanent: false }));
    expect(run.queued).toMatchObject([{ fn: 'post-hook', id: 'r1:vm.u1:1:post-hook', data: { failed: { fn: 'export', retrying: false } } }]);
    run.take();
    run.apply(done('post-hook', 'vm.u1', { failed: { fn: 'export' } }));
    expect(run.take()).toEqual([]); // no attempt 2, and no vm3 in the freed slot
    expect(run.jobs.get('vm.u1')).toMatchObject({ status: 'failed', try: 1, phase: 'export' });

    // meta finished after the stop: the set is complete and counts, but verify and prune do not run.
    run.apply(done('meta', 'vm.u2', { ...(outputOf('meta', 2, 1) as object), runId: RUN, jobId: 'vm.u2', try: 1, vm: { uuid: 'u2', name: 'vm2' }, backupDir: '/b', folder: 'vm2', maxBackups: 4, protect: ['20261126-083000'] }));
    expect(run.queued.map((q) => q.fn)).toEqual(['post-hook']);
    expect(run.queued[0]!.data).toMatchObject({ folder: 'vm2', files: [{ name: 'f' }] });
    expect((run.queued[0]!.data as Record<string, unknown>).failed).toBeUndefined();
    run.take();
    expect(run.finished).toBe(false);
    run.apply(done('post-hook', 'vm.u2', {}));
    expect(run.take()).toEqual([]);
    expect(run.jobs.get('vm.u2')).toMatchObject({ status: 'success', warnings: ['the run was stopped by SIGTERM: the set is complete, but prune did not run'] });
    expect(run.finished).toBe(true);
    expect(run.header.remaining).toBe(0);

    const summary = RunSummary.parse(summarize(run.header, [...run.jobs.values()]));
    expect(summary).toMatchObject({ status: 'error', exitCode: 1 });
    // The stop is not a warning of the vm-export phase: vm2's own (its prune not run) is.
    expect(summary.categories['vm-export']).toEqual({ S: 1, W: 1, E: 2 });
    expect(summary.warnings).toEqual([]);
    expect(summary.stopped).toEqual({ reason: 'SIGTERM', at: '2026-11-26T08:30:00.000Z', notStarted: 2 });
    expect(summary.categories['vdi-export']).toEqual({ S: 0, W: 0, E: 1 }); // vm3
    const text = formatSummary(summary);
    expect(text).toContain('STOPPED: the run was stopped by SIGTERM at 2026-11-26T08:30:00.000Z: 2 jobs not started, the jobs under way were stopped\n');
    expect(text).not.toContain('WARNING: the run was stopped');
    expect(text).toContain('VmBackup vm-export Summary - S:1 W:1 E:2\n');
    expect(text).toContain('ERROR: vm-export vm4: not backed up: the run was stopped by SIGTERM\n');
  });

  it('a snapshot made after the stop still goes to export, which destroys it; after pre-vm, no snapshot', () => {
    const run = started(2);
    run.apply(done('pre-hook', 'vm.u1')); // vm1: snapshot under way; vm2: pre-hook under way
    run.take();
    run.apply(stop());

    run.apply(done('snapshot', 'vm.u1', { marker: 'snap' }));
    expect(run.queued).toMatchObject([{ fn: 'export', id: 'r1:vm.u1:1:export', data: { marker: 'snap' } }]);
    run.take();
    run.apply(failed('export', 'vm.u1', { ...stopped, message: 'export stopped by SIGTERM' }));
    run.apply(done('post-hook', 'vm.u1', { failed: { fn: 'export' } }));
    expect(run.jobs.get('vm.u1')).toMatchObject({ status: 'failed', phase: 'export', error: { code: 'STOPPED', message: 'export stopped by SIGTERM' } });

    run.take();
    run.apply(done('pre-hook', 'vm.u2', { marker: 'pre' }));
    // No snapshot: straight to the post-vm hooks, which undo what the pre-vm hooks did.
    expect(run.queued).toMatchObject([{ fn: 'post-hook', data: { failed: { fn: 'snapshot', retrying: false, error: { code: 'STOPPED', message: 'stopped by SIGTERM before snapshot' } } } }]);
    run.take();
    run.apply(done('post-hook', 'vm.u2', { failed: { fn: 'snapshot' } }));
    // `retry` of the run would resume at the phase that did not run, from its input.
    expect(run.jobs.get('vm.u2')).toMatchObject({ status: 'failed', phase: 'snapshot', failedInput: { marker: 'pre' } });
    expect(run.take()).toEqual([]);
    expect(run.finished).toBe(true);
  });

  it.each([
    ['verify stopped under way (verify_after_backup)', 'verify', true, 'verify and prune'],
    ['prune not started', 'prune', false, 'prune'],
  ])('%s: the set is complete, so a success with a warning', (_name, fn, verify, phases) => {
    const run = started(1, { vmJobs: [{ ...vmJob(1), verify }] });
    doneUpTo(run, 1, fn);
    run.take();
    run.apply(stop());
    run.apply(failed(fn, 'vm.u1', { ...stopped, message: `${fn} stopped by SIGTERM` }, 1, { marker: `input of ${fn}` }));
    expect(run.queued).toMatchObject([{ fn: 'post-hook', data: { marker: `input of ${fn}` } }]);
    expect((run.queued[0]!.data as Record<string, unknown>).failed).toBeUndefined();
    run.apply(done('post-hook', 'vm.u1', {}));
    expect(run.jobs.get('vm.u1')).toMatchObject({ status: 'success', warnings: [`the run was stopped by SIGTERM: the set is complete, but ${phases} did not run`] });
    expect(run.finished).toBe(true);
  });

  it('pool-db and host jobs that fail after the stop are final, and the run finishes with them', () => {
    const run = new Run();
    run.apply(done('plan', 'plan', plan(0, { poolDb: { runId: RUN, jobId: 'pool-db', try: 1, backupDir: '/b', stamp: '20261126-083000', maxBackups: 4, idleTimeoutS: 300 } })));
    run.take();
    run.apply(stop());
    expect(run.finished).toBe(false);
    run.apply(failed('pool-db', 'pool-db', { ...stopped, message: 'pool-db not started: the run was stopped by SIGTERM' }));
    expect(run.finished).toBe(true);
    expect(run.jobs.get('pool-db')).toMatchObject({ status: 'failed', error: { code: 'STOPPED' } });
  });

  it('stopped while planning: the plan’s jobs are not started, the run finishes at once', () => {
    const run = new Run();
    const t = run.apply(stop('SIGINT'));
    expect(t.header.stopping).toEqual({ reason: 'SIGINT', at: now.toISOString() });
    expect(run.finished).toBe(false);
    run.apply(done('plan', 'plan', plan(3, { poolDb: { runId: RUN, jobId: 'pool-db', try: 1, backupDir: '/b', stamp: '20261126-083000', maxBackups: 4, idleTimeoutS: 300 } })));
    expect(run.take()).toEqual([]);
    expect(run.finished).toBe(true);
    expect([...run.jobs.values()].map((j) => [j.jobId, j.status, j.error?.code])).toEqual([
      ['vm.u1', 'failed', 'STOPPED'],
      ['vm.u2', 'failed', 'STOPPED'],
      ['vm.u3', 'failed', 'STOPPED'],
      ['pool-db', 'failed', 'STOPPED'],
    ]);
    expect(run.header.stopping).toEqual({ reason: 'SIGINT', at: now.toISOString(), notStarted: 4 });
    expect(run.header.warnings).toEqual([]);
  });

  it('a stop is applied once, and not at all to a finished run', () => {
    const run = started(3);
    const pending = run.header.pending.length;
    expect(pending).toBeGreaterThan(0);
    run.apply(stop());
    const again = run.apply(stop('SIGINT'));
    expect(again.jobs).toEqual([]);
    expect(run.header.stopping).toMatchObject({ reason: 'SIGTERM', notStarted: pending });

    const over = new Run();
    over.apply(done('plan', 'plan', plan(0)));
    expect(over.finished).toBe(true);
    expect(over.apply(stop()).header.stopping).toBeUndefined();
  });
});

describe('reduce: a delta-export VM', () => {
  const deltaJob = (n: number): SnapshotInput => ({ ...vmJob(n), mode: 'delta', haltedWithoutSnapshot: false, cbt: true });
  const stop = (): RunEvent => ({ outcome: 'stop', runId: RUN, reason: 'SIGTERM', at: now.toISOString() });

  it('runs its own pipeline: pre-hook → snapshot → delta-export → prune → post-hook, as a delta-export', () => {
    const run = started(1, { vmJobs: [deltaJob(1)] });
    expect(run.jobs.get('vm.u1')).toMatchObject({ kind: 'vm', category: 'delta-export', pipeline: [...pipelines.delta] });
    for (const fn of ['pre-hook', 'snapshot', 'delta-export', 'prune']) {
      run.apply(done(fn, 'vm.u1', { marker: fn }));
      expect(run.take()).toEqual([`r1:vm.u1:1:${pipelines.delta[pipelines.delta.indexOf(fn as 'prune') + 1]}`]);
    }
    run.apply(done('post-hook', 'vm.u1'));
    expect(run.jobs.get('vm.u1')).toMatchObject({ status: 'success' });
    expect(summarize(run.header, [...run.jobs.values()]).categories['delta-export']).toEqual({ S: 1, W: 0, E: 0 });
  });

  it('stopped after its snapshot: delta-export still runs (it destroys the snapshot); after delta-export the point counts, prune does not run', () => {
    const run = started(2, { vmJobs: [deltaJob(1), deltaJob(2)] });
    run.apply(done('pre-hook', 'vm.u1'));
    run.apply(done('pre-hook', 'vm.u2'));
    run.apply(done('snapshot', 'vm.u2', { marker: 'snap2' }));
    run.take();
    run.apply(stop());
    run.apply(done('snapshot', 'vm.u1', { marker: 'snap1' }));
    expect(run.queued).toMatchObject([{ fn: 'delta-export', data: { marker: 'snap1' } }]);
    run.take();
    run.apply(done('delta-export', 'vm.u2', { marker: 'point2' }));
    expect(run.queued).toMatchObject([{ fn: 'post-hook', data: { marker: 'point2' } }]);
    run.take();
    run.apply(done('post-hook', 'vm.u2'));
    expect(run.jobs.get('vm.u2')).toMatchObject({ status: 'success', warnings: ['the run was stopped by SIGTERM: the set is complete, but prune did not run'] });
  });
});

describe('repair: a header cut from its commit', () => {
  it('finds nothing to set in any state a run goes through, to its stop', () => {
    const run = started(3);
    const check = () => expect(repair(run.header, run.jobs, now)).toBeUndefined();
    check();
    for (const fn of pipelines.vm) {
      run.apply(done(fn, 'vm.u1', outputOf(fn, 1, 1)));
      check();
    }
    run.apply(failed('snapshot', 'vm.u2', { retryable: true, permanent: false }));
    check();
    run.apply({ outcome: 'stop', runId: RUN, reason: 'SIGTERM', at: now.toISOString() });
    check();
  });

  it('sets it as the commit would have: the ended job no longer counted, the next one started and queued again', () => {
    const run = started(3);
    doneUpTo(run, 1, 'post-hook');
    const before = structuredClone(run.header);
    const t = run.apply(done('post-hook', 'vm.u1', outputOf('post-hook', 1, 1)));
    expect(t.header.remaining).toBe(before.remaining - 1);
    // The jobs landed, the header did not: the event comes again and changes nothing.
    const again = reduce({ header: before, jobs: new Map([['vm.u1', run.jobs.get('vm.u1')!]]) }, done('post-hook', 'vm.u1', {}), now);
    expect(again.jobs).toEqual([]);
    const r = repair(before, run.jobs, now)!;
    expect(r.header).toEqual(t.header);
    expect(r.enqueue.map((e) => e.id)).toEqual(t.enqueue.map((e) => e.id));
    expect(r.finished).toBe(false);
  });
});
