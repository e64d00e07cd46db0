import { describe, expect, it } from 'vitest';
import type { PlanOutput } from '../../functions/plan/plan.js';
import type { SnapshotInput } from '../../functions/snapshot/snapshot.js';
import type { ErrorInfo } from '../errors.js';
import type { PhaseEvent } from '../events.js';
import { newRunHeader, reduce } from './reduce.js';
import type { Transition } from './reduce.js';
import type { JobState, RunHeader } from './state.js';
import { RunSummary, formatSummary, summarize } from './summary.js';

const RUN = 'r1';
const now = new Date('2026-11-26T08:30:00Z');

function vmJob(n: number): SnapshotInput {
  return {
    runId: RUN,
    jobId: `vm.u${n}`,
    try: 1,
    vm: { uuid: `u${n}`, name: `vm${n}` },
    mode: n === 3 ? 'vdi' : 'vm',
    disks: n === 3 ? ['xvda'] : [],
    backupDir: '/b',
    folder: `vm${n}`,
    stamp: '20261126-083000',
    maxBackups: 4,
    compress: 'none',
    format: 'raw',
    spaceThreshold: 20,
    haltedWithoutSnapshot: true,
    idleTimeoutS: 300,
  };
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

  apply(event: PhaseEvent): Transition {
    const ids = [event.jobId, ...this.header.pending.slice(0, this.header.concurrency)];
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
const failed = (fn: string, jobId: string, error: Partial<ErrorInfo> = {}, tryN = 1): PhaseEvent => ({
  ...base(fn, jobId, tryN),
  outcome: 'failed',
  durationMs: 10,
  error: { name: 'E', code: 'X', message: 'boom', permanent: true, retryable: false, ...error },
  input: {},
});

function finishVm(run: Run, n: number, tryN = 1) {
  for (const fn of ['snapshot', 'export', 'meta', 'prune']) run.apply(done(fn, `vm.u${n}`, fn === 'meta' ? { files: [{ name: 'f', format: 'xva', size: 5 }], bytes: 5 } : {}, tryN));
}

describe('reduce', () => {
  it('starts VMs `concurrency` at a time and the rest as slots free', () => {
    const run = new Run();
    run.apply(done('plan', 'plan', plan(3, { poolDb: { runId: RUN, jobId: 'pool-db', try: 1, backupDir: '/b', stamp: '20261126-083000', maxBackups: 4, idleTimeoutS: 300 } })));
    expect(run.take()).toEqual(['r1:pool-db:1:pool-db', 'r1:vm.u1:1:snapshot', 'r1:vm.u2:1:snapshot']);
    expect(run.header.pending).toEqual(['vm.u3']);
    run.apply(done('snapshot', 'vm.u1'));
    expect(run.take()).toEqual(['r1:vm.u1:1:export']);
    finishVm(run, 1);
    expect(run.take()).toContain('r1:vm.u3:1:snapshot');
    expect(run.header.active).toBe(2);
  });

  it('passes each phase its predecessor’s output', () => {
    const run = new Run();
    run.apply(done('plan', 'plan', plan(1)));
    run.take();
    run.apply(done('snapshot', 'vm.u1', { marker: 42 }));
    expect(run.queued[0]).toMatchObject({ fn: 'export', data: { marker: 42 } });
  });

  it('ignores duplicate and stale events', () => {
    const run = new Run();
    run.apply(done('plan', 'plan', plan(1)));
    run.take();
    run.apply(done('snapshot', 'vm.u1'));
    expect(run.take()).toEqual(['r1:vm.u1:1:export']);
    expect(run.apply(done('snapshot', 'vm.u1')).enqueue).toEqual([]); // redelivered event
    expect(run.apply(done('export', 'vm.u1', {}, 2)).enqueue).toEqual([]); // another try
    expect(run.apply(done('plan', 'plan', plan(1))).jobs).toEqual([]); // plan twice
  });

  it('restarts a VM from a new snapshot after a retryable failure, once', () => {
    const run = new Run();
    run.apply(done('plan', 'plan', plan(1)));
    run.take();
    run.apply(done('snapshot', 'vm.u1'));
    run.take();
    run.apply(failed('export', 'vm.u1', { retryable: true, code: 'ECONNRESET' }));
    expect(run.take()).toEqual(['r1:vm.u1:2:snapshot']);
    expect(run.queued).toEqual([]);
    run.apply(done('snapshot', 'vm.u1', {}, 2));
    run.apply(failed('export', 'vm.u1', { retryable: true }, 2));
    expect(run.jobs.get('vm.u1')!.status).toBe('failed');
    expect(run.finished).toBe(true);
  });

  it('does not restart after a permanent failure, and frees the slot', () => {
    const run = new Run();
    run.apply(done('plan', 'plan', plan(3)));
    run.take();
    run.apply(failed('snapshot', 'vm.u1', { code: 'VM_GONE' }));
    expect(run.take()).toEqual(['r1:vm.u3:1:snapshot']);
    expect(run.jobs.get('vm.u1')).toMatchObject({ status: 'failed', error: { code: 'VM_GONE' } });
  });

  it('finishes when every job is final, with VmBackup counts and exit code', () => {
    const run = new Run();
    run.apply(done('plan', 'plan', plan(3, { warnings: [{ entry: 'nope', list: 'vm_exports', message: 'matches no VM' }] })));
    finishVm(run, 1);
    finishVm(run, 2);
    run.apply(failed('snapshot', 'vm.u3', { code: 'NO_DISKS', message: 'no disk xvda' }));
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
