import { describe, expect, it } from 'vitest';
import { runOptions } from '../../test/helpers/jobs.js';
import type { Bus } from '../bus/bus.js';
import { MemoryBus } from '../bus/memory.js';
import { RequestConflictError } from '../errors.js';
import { jobSubject } from '../events.js';
import { newRunHeader } from './reduce.js';
import { startRun } from './start.js';
import { MemoryRunStore } from './store.js';

const options = runOptions({ backupDir: '/b', maxBackups: 4, concurrency: 2, vmRetries: 1 });

/** A bus that records what is queued (through the real in-process bus's dedup). */
function recording(): { bus: Bus; plans: unknown[] } {
  const inner = new MemoryBus();
  const plans: unknown[] = [];
  void inner.work(jobSubject('plan'), { concurrency: 1 }, async (job) => {
    plans.push(job.data);
    return { kind: 'ack' };
  });
  return { bus: inner, plans };
}

describe('startRun', () => {
  it('records the run and queues its plan once, however often it is submitted', async () => {
    const store = new MemoryRunStore();
    const { bus, plans } = recording();
    const at = new Date('2026-11-26T08:30:00Z');
    expect(await startRun(store, bus, { runId: 'r1', options, startedAt: at })).toBe(true);
    expect(await startRun(store, bus, { runId: 'r1', options, startedAt: new Date('2026-11-26T08:31:00Z') })).toBe(false);
    await new Promise((r) => setTimeout(r, 20));
    expect(plans).toEqual([{ runId: 'r1', jobId: 'plan', try: 1, options, startedAt: at.toISOString() }]);
    expect((await store.header('r1'))!.header.status).toBe('planning');
  });

  it('a repeat of a run recorded without its plan (bus lost in between) queues the plan', async () => {
    const store = new MemoryRunStore();
    const at = new Date('2026-11-26T08:30:00Z');
    await store.create(newRunHeader('r2', at, { concurrency: 2, vmRetries: 1 })); // and then nothing
    const { bus, plans } = recording();
    expect(await startRun(store, bus, { runId: 'r2', options, startedAt: new Date('2026-11-26T09:00:00Z') })).toBe(false);
    await new Promise((r) => setTimeout(r, 20));
    // The run keeps its own start time: its files are named after it.
    expect(plans).toEqual([{ runId: 'r2', jobId: 'plan', try: 1, options, startedAt: at.toISOString() }]);
  });

  it('a repeat with other options is refused (RequestConflictError); nothing queued again', async () => {
    const store = new MemoryRunStore();
    const { bus, plans } = recording();
    const at = new Date('2026-11-26T08:30:00Z');
    expect(await startRun(store, bus, { runId: 'r4', options, startedAt: at })).toBe(true);
    await expect(startRun(store, bus, { runId: 'r4', options: { ...options, vmExports: ['web1'] }, startedAt: at })).rejects.toThrow(RequestConflictError);
    await expect(startRun(store, bus, { runId: 'r4', options: { ...options, vmExports: ['web1'] }, startedAt: at })).rejects.toThrow(/run r4 was asked for with other options/);
    expect(await startRun(store, bus, { runId: 'r4', options: { ...options }, startedAt: at })).toBe(false);
    await new Promise((r) => setTimeout(r, 20));
    expect(plans).toHaveLength(1);
  });

  it('a repeat of a run past planning queues nothing', async () => {
    const store = new MemoryRunStore();
    const at = new Date('2026-11-26T08:30:00Z');
    await store.create({ ...newRunHeader('r3', at, { concurrency: 2, vmRetries: 1 }), status: 'finished' });
    const { bus, plans } = recording();
    expect(await startRun(store, bus, { runId: 'r3', options, startedAt: at })).toBe(false);
    await new Promise((r) => setTimeout(r, 20));
    expect(plans).toEqual([]);
  });
});
