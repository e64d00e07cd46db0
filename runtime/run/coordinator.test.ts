import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { PlanOutput } from '../../functions/plan/plan.js';
import type { SnapshotInput } from '../../functions/snapshot/snapshot.js';
import { MemoryBus } from '../bus/memory.js';
import { eventSubject, jobSubject } from '../events.js';
import type { RunStop } from '../events.js';
import { defineFunction, subject, systemClock } from '../function.js';
import type { Ctx, FunctionDef } from '../function.js';
import { silentLogger } from '../log.js';
import { serve } from '../serve.js';
import { waitFor } from '../../test/sim/test-helpers.js';
import { startCoordinator, stateBehind } from './coordinator.js';
import type { JobState, RunHeader } from './state.js';
import { startRun } from './start.js';
import { MemoryRunStore } from './store.js';
import { RunSummary } from './summary.js';
import { runOptions, vmJob as testVmJob } from '../../test/helpers/jobs.js';

/**
 * The coordinator and the runtime together on the in-process bus, as the embedded run wires
 * them (runtime/run/embedded.ts), with stand-in functions: what a stop (SIGTERM) does to the
 * jobs under way, queued and pending.
 */
const RUN = '20261126-083000-stop';
const STAMP = '20261126-083000';

const options = runOptions({ backupDir: '/b', vmExports: [], maxBackups: 4, poolBackup: true, hostBackup: true, vmRetries: 1, idleTimeoutS: 300 });

function vmJob(n: number): SnapshotInput {
  return testVmJob({ runId: RUN, vm: { uuid: `u${n}`, name: `vm${n}` }, backupDir: '/b', stamp: STAMP, maxBackups: 4, idleTimeoutS: 300 });
}

const planOutput: PlanOutput = {
  runId: RUN,
  jobId: 'plan',
  try: 1,
  pool: { uuid: 'p', name: 'pool' },
  stamp: STAMP,
  backupDir: '/b',
  vmJobs: [vmJob(1), vmJob(2), vmJob(3)],
  poolDb: { runId: RUN, jobId: 'pool-db', try: 1, backupDir: '/b', stamp: STAMP, maxBackups: 4, idleTimeoutS: 300 },
  hostJobs: [1, 2].map((n) => ({ runId: RUN, jobId: `host.h${n}`, try: 1, backupDir: '/b', stamp: STAMP, maxBackups: 4, host: { uuid: `h${n}`, name: `xcp${n}` }, idleTimeoutS: 300 })),
  excludes: [],
  warnings: [],
  cleaned: [],
  concurrency: 1,
  vmRetries: 1,
};

type Handler = (input: Record<string, unknown>, ctx: Ctx) => Promise<Record<string, unknown>>;

/** Until the handler's signal is aborted: then it throws, as an aborted transfer does. */
const untilAborted: Handler = (_input, ctx) =>
  new Promise((_resolve, reject) => {
    if (ctx.signal.aborted) reject(new Error('aborted before it began'));
    ctx.signal.addEventListener('abort', () => reject(new Error('The operation was aborted')), { once: true });
  });

/**
 * A store with a replica that is behind, as a KV bucket read from a node catching up after a
 * restart: while `lag` > 0, the job `lagging` reads as it was when `freeze()` was called.
 */
class LaggingStore extends MemoryRunStore {
  lag = 0;
  lagging = '';
  private frozen: JobState | undefined;
  async freeze(jobId: string): Promise<void> {
    this.lagging = jobId;
    this.frozen = (await super.jobs(RUN, [jobId])).get(jobId);
  }
  override async jobs(runId: string, jobIds: readonly string[]): Promise<Map<string, JobState>> {
    const out = await super.jobs(runId, jobIds);
    if (this.lag > 0 && this.frozen !== undefined && out.has(this.lagging)) {
      this.lag--;
      out.set(this.lagging, structuredClone(this.frozen));
    }
    return out;
  }
}

/** A bus on which queueing the first `failures` jobs of `subject` fails, as a publish to a stream without a leader does. */
class FailingEnqueueBus extends MemoryBus {
  constructor(
    private readonly failing: string,
    public failures: number,
  ) {
    super();
  }
  override async enqueue(subject: string, data: unknown, opts: { id: string }): Promise<void> {
    if (subject === this.failing && this.failures > 0) {
      this.failures--;
      throw new Error(`no leader for ${subject}`);
    }
    return super.enqueue(subject, data, opts);
  }
}

/** A rig: stand-in functions that record their calls, the coordinator, and a stop like embedded.ts's. */
async function rig(handlers: Record<string, Handler>, store: MemoryRunStore = new MemoryRunStore(), bus: MemoryBus = new MemoryBus()) {
  const calls: string[] = [];
  const inputs = new Map<string, Record<string, unknown>>();
  const passThrough: Handler = async (input) => input;
  const fns: FunctionDef[] = ['plan', 'pre-hook', 'snapshot', 'export', 'meta', 'verify', 'prune', 'post-hook', 'pool-db', 'host-backup'].map((name) =>
    defineFunction({
      name,
      description: 'stand-in',
      subject: subject(jobSubject(name), z.looseObject({ runId: z.string(), jobId: z.string(), try: z.number() })),
      output: z.record(z.string(), z.unknown()),
      retry: { maxDeliver: 3, backoffMs: [10] },
      async handle(input, ctx) {
        const key = `${name}:${input.jobId}:${input.try}`;
        calls.push(ctx.signal.aborted ? `${key} (aborted)` : key);
        inputs.set(key, input);
        if (name === 'plan') return planOutput;
        return (handlers[name] ?? passThrough)(input, ctx);
      },
    }),
  );
  const abort = new AbortController();
  const afterStop: Record<string, 'aborted' | 'finish'> = { export: 'aborted', 'post-hook': 'finish' };
  let summary: RunSummary | undefined;
  await bus.subscribe(eventSubject(RUN, 'run', 'finished'), {}, async (_s, data) => void (summary = RunSummary.parse(data)));
  await startCoordinator(store, bus, systemClock, silentLogger());
  await serve(
    fns,
    { bus, log: silentLogger(), xapi: () => Promise.reject(new Error('no XAPI here')), clock: systemClock, origin: { hostname: 'test', pid: 1 }, signal: abort.signal },
    { concurrency: () => 1, shutdown: { mode: 'stop', afterStop: (fn) => afterStop[fn.name] ?? 'skip' } },
  );
  await startRun(store, bus, { runId: RUN, options, startedAt: new Date('2026-11-26T08:30:00Z') });
  return {
    calls,
    inputs,
    bus,
    /** As runEmbedded on SIGTERM: the stop request, then the handlers' signals. */
    stop() {
      const stop: RunStop = { outcome: 'stop', runId: RUN, reason: 'SIGTERM', at: new Date().toISOString() };
      void bus.publish(eventSubject(RUN, 'run', 'stop'), stop, { id: `${RUN}:run:stop` });
      abort.abort(new Error('SIGTERM'));
    },
    summary: () => waitFor(() => summary, 5_000, 'the run summary'),
  };
}

describe('coordinator and runtime: a stopped run', () => {
  it('aborts the export and the pool-db under way, starts nothing else (no retry, next VM, host backup, prune), ends everything as STOPPED', async () => {
    const r = await rig({ export: untilAborted, 'pool-db': untilAborted, 'host-backup': untilAborted });
    try {
      await waitFor(() => ['export:vm.u1:1', 'pool-db:pool-db:1', 'host-backup:host.h1:1'].every((c) => r.calls.includes(c)), 5_000, 'export, pool-db and host backup under way');
      r.stop();
      const summary = await r.summary();

      expect(summary).toMatchObject({ status: 'error', exitCode: 1 });
      const byName = Object.fromEntries(summary.jobs.map((j) => [j.name, { status: j.status, code: j.error?.code, message: j.error?.message, tries: j.tries }]));
      expect(byName).toEqual({
        vm1: { status: 'error', code: 'STOPPED', message: 'export stopped by SIGTERM', tries: 1 },
        vm2: { status: 'error', code: 'STOPPED', message: 'not backed up: the run was stopped by SIGTERM', tries: 1 },
        vm3: { status: 'error', code: 'STOPPED', message: 'not backed up: the run was stopped by SIGTERM', tries: 1 },
        'pool database': { status: 'error', code: 'STOPPED', message: 'pool-db stopped by SIGTERM', tries: 1 },
        xcp1: { status: 'error', code: 'STOPPED', message: 'host-backup stopped by SIGTERM', tries: 1 },
        // queued behind xcp1 (one at a time here), delivered after the signal: not run
        xcp2: { status: 'error', code: 'STOPPED', message: 'host-backup not started: the run was stopped by SIGTERM', tries: 1 },
      });
      expect(summary.warnings).toEqual([]);
      expect(summary.stopped).toMatchObject({ reason: 'SIGTERM', notStarted: 2 });

      // Ran: the plan, vm1 up to its export, its post-vm hooks (told it failed, not retried),
      // the pool-db and the first host backup.
      expect(r.calls.filter((c) => c.includes('vm.u') || c.startsWith('plan'))).toEqual(['plan:plan:1', 'pre-hook:vm.u1:1', 'snapshot:vm.u1:1', 'export:vm.u1:1', 'post-hook:vm.u1:1']);
      expect(r.calls.filter((c) => !c.includes('vm.u') && !c.startsWith('plan')).sort()).toEqual(['host-backup:host.h1:1', 'pool-db:pool-db:1']);
      expect(r.inputs.get('post-hook:vm.u1:1')).toMatchObject({ failed: { fn: 'export', retrying: false, error: { code: 'STOPPED' } } });
      // Nothing is running or queued afterwards.
      await r.bus.idle();
      expect(r.calls).toHaveLength(7);
    } finally {
      await r.bus.close();
    }
  });

  it('a snapshot that ends after the signal goes to an export that only cleans up; the post-vm hooks run to the end', async () => {
    let finishSnapshot!: () => void;
    const snapshotting = new Promise<void>((resolve) => (finishSnapshot = resolve));
    let postHookSignal: AbortSignal | undefined;
    const r = await rig({
      // A snapshot cannot be cancelled half-way: it ends, whatever the signal.
      snapshot: async (input) => (await snapshotting, { ...input, snapshot: 'made' }),
      export: untilAborted,
      'post-hook': async (input, ctx) => ((postHookSignal = ctx.signal), input),
    });
    try {
      await waitFor(() => r.calls.includes('snapshot:vm.u1:1'), 5_000, 'snapshot under way');
      r.stop();
      finishSnapshot();
      const summary = await r.summary();
      expect(r.calls.filter((c) => c.includes('vm.u'))).toEqual(['pre-hook:vm.u1:1', 'snapshot:vm.u1:1', 'export:vm.u1:1 (aborted)', 'post-hook:vm.u1:1']);
      expect(r.inputs.get('export:vm.u1:1')).toMatchObject({ snapshot: 'made' });
      expect(postHookSignal?.aborted).toBe(false);
      expect(summary.jobs.find((j) => j.name === 'vm1')).toMatchObject({ status: 'error', error: { code: 'STOPPED', message: 'export stopped by SIGTERM' } });
    } finally {
      await r.bus.close();
    }
  });
});

describe('coordinator: a state read from a store that is behind', () => {
  it('an event of a later phase than its job state is read again, not dropped as stale (the run would wait for ever)', async () => {
    const store = new LaggingStore();
    const r = await rig(
      {
        // vm1's state says `snapshot` now: keep that view.
        snapshot: async (input) => (input.jobId === 'vm.u1' && (await store.freeze('vm.u1')), input),
        // Its export ends while reads still see `snapshot` (twice): export.done must wait.
        export: async (input) => (input.jobId === 'vm.u1' && (store.lag = 2), input),
      },
      store,
    );
    try {
      const summary = await r.summary();
      expect(store.lag).toBe(0);
      expect(summary).toMatchObject({ status: 'success', exitCode: 0 });
      expect(summary.jobs.map((j) => [j.name, j.status])).toEqual(expect.arrayContaining([['vm1', 'success'], ['vm2', 'success'], ['vm3', 'success']]));
      // Each phase ran once: nothing was queued again from the old view.
      expect(r.calls.filter((c) => c.includes('vm.u1'))).toEqual(['pre-hook:vm.u1:1', 'snapshot:vm.u1:1', 'export:vm.u1:1', 'meta:vm.u1:1', 'verify:vm.u1:1', 'prune:vm.u1:1', 'post-hook:vm.u1:1']);
    } finally {
      await r.bus.close();
    }
  });

  it('stateBehind: later phase or try, a job not started, a run still planning; not a repeat of an earlier phase', async () => {
    const header = { status: 'running' } as Parameters<typeof stateBehind>[0];
    const job = { jobId: 'vm.a', status: 'running', phase: 'snapshot', try: 1, pipeline: ['pre-hook', 'snapshot', 'export', 'meta'] } as unknown as JobState;
    const jobs = new Map([['vm.a', job]]);
    const ev = (fn: string, tryN = 1, outcome: 'done' | 'started' = 'done') =>
      ({ outcome, runId: RUN, jobId: 'vm.a', fn, try: tryN, attempt: 1, at: '', durationMs: 1, output: {} }) as Parameters<typeof stateBehind>[2];
    expect(stateBehind(header, jobs, ev('export'))).toBe('its job is at snapshot, try 1');
    expect(stateBehind(header, jobs, ev('snapshot', 2))).toBe('its job is at try 1');
    expect(stateBehind(header, new Map([['vm.a', { ...job, status: 'pending' }]]), ev('pre-hook'))).toBe('its job has not started');
    expect(stateBehind({ status: 'planning' } as typeof header, new Map(), ev('pre-hook'))).toBe('the run is still planning');
    // Repeats and stale events are the reducer's to ignore; a start changes nothing.
    expect(stateBehind(header, jobs, ev('snapshot'))).toBeUndefined();
    expect(stateBehind(header, jobs, ev('pre-hook'))).toBeUndefined();
    expect(stateBehind(header, new Map([['vm.a', { ...job, status: 'success' }]]), ev('meta'))).toBeUndefined();
    expect(stateBehind(header, jobs, ev('export', 1, 'started'))).toBeUndefined();
  });
});

describe('coordinator: the next phase is queued before the state that queued it is committed', () => {
  it('a queueing that fails commits nothing: the event comes again, the phase is queued then, once, and the run ends as without the failure', async () => {
    const store = new MemoryRunStore();
    const bus = new FailingEnqueueBus(jobSubject('export'), 2);
    const r = await rig({}, store, bus);
    try {
      const summary = await r.summary();
      expect(bus.failures).toBe(0);
      expect(summary).toMatchObject({ status: 'success', exitCode: 0 });
      expect(summary.jobs.map((j) => [j.name, j.status, j.tries])).toEqual(expect.arrayContaining([['vm1', 'success', 1], ['vm2', 'success', 1], ['vm3', 'success', 1]]));
      expect(r.calls.filter((c) => c.startsWith('export:'))).toEqual(['export:vm.u1:1', 'export:vm.u2:1', 'export:vm.u3:1']);
    } finally {
      await r.bus.close();
    }
  });
});

/** Counts how the coordinator writes: whole commits (header and jobs) and single-job steps. */
class CountingStore extends MemoryRunStore {
  commits = 0;
  steps: string[] = [];
  override async commit(...args: Parameters<MemoryRunStore['commit']>): Promise<boolean> {
    this.commits++;
    return super.commit(...args);
  }
  override async advance(runId: string, job: JobState, from: JobState, alongside?: Promise<void>): Promise<boolean> {
    const ok = await super.advance(runId, job, from, alongside);
    if (ok) this.steps.push(`${job.jobId}:${from.phase}>${job.phase}`);
    return ok;
  }
}

describe('coordinator: a phase that only moves its job on writes that job alone', () => {
  it('each VM goes through its pipeline by single-job steps; the header is written when jobs start and end', async () => {
    const store = new CountingStore();
    const r = await rig({}, store);
    try {
      const summary = await r.summary();
      expect(summary).toMatchObject({ status: 'success', exitCode: 0 });
      const pipeline = ['pre-hook', 'snapshot', 'export', 'meta', 'verify', 'prune', 'post-hook'];
      for (const vm of ['vm.u1', 'vm.u2', 'vm.u3']) {
        expect(store.steps.filter((s) => s.startsWith(`${vm}:`))).toEqual(pipeline.slice(1).map((to, i) => `${vm}:${pipeline[i]}>${to}`));
      }
      // The plan, then one commit as each of the 3 VMs and 3 other jobs ends (a VM's end
      // also starts the next one), the last one finishing the run: never one per phase.
      expect(store.commits).toBeLessThanOrEqual(1 + 6);
      expect(store.steps).toHaveLength(18);
    } finally {
      await r.bus.close();
    }
  });
});

/** Dies once in the middle of the commit that ends vm.u1: its jobs are written, its header is not. */
class DyingStore extends MemoryRunStore {
  died = false;
  override async commit(runId: string, header: RunHeader, revision: number, jobs: readonly JobState[], alongside?: Promise<void>): Promise<boolean> {
    if (!this.died && jobs.some((j) => j.jobId === 'vm.u1' && j.status === 'success')) {
      this.died = true;
      await alongside;
      const stored = (this as unknown as { jobStates: Map<string, Map<string, JobState>> }).jobStates.get(runId)!;
      for (const job of jobs) stored.set(job.jobId, structuredClone(job));
      throw new Error('the coordinator died between its jobs and its header');
    }
    return super.commit(runId, header, revision, jobs, alongside);
  }
}

describe('coordinator: a commit cut between its jobs and its header', () => {
  it('the event comes again, finds its job ended, and the header is set from the jobs: the run ends instead of waiting for ever', async () => {
    const store = new DyingStore();
    const r = await rig({}, store);
    try {
      const summary = await r.summary();
      expect(store.died).toBe(true);
      expect(summary).toMatchObject({ status: 'success', exitCode: 0 });
      expect(summary.jobs.map((j) => [j.name, j.status, j.tries])).toEqual(expect.arrayContaining([['vm1', 'success', 1], ['vm2', 'success', 1], ['vm3', 'success', 1]]));
      // vm2 was started by the commit that was cut: its first phase ran once.
      expect(r.calls.filter((c) => c.startsWith('pre-hook:vm.u2'))).toEqual(['pre-hook:vm.u2:1']);
    } finally {
      await r.bus.close();
    }
  });
});
