import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { newRunHeader } from './reduce.js';
import type { JobState, RunHeader } from './state.js';
import type { RunStore } from './store.js';

/**
 * The behaviour every run store must have. store.test.ts runs it on the memory store,
 * nats-store.test.ts on the KV bucket of a real nats-server.
 */
export function storeContract(name: string, make: () => Promise<{ store: RunStore; close(): Promise<void> }>): void {
  describe(`run store contract: ${name}`, () => {
    let store: RunStore;
    let close: () => Promise<void>;
    let runId: string;
    beforeEach(async () => {
      ({ store, close } = await make());
      runId = `20261126-083000-${Math.random().toString(16).slice(2, 6)}`;
    });
    afterEach(async () => {
      await close();
    });

    it('creates a run once: a second create of the same id is refused and changes nothing', async () => {
      const header = newRunHeader(runId, new Date('2026-11-26T08:30:00Z'), { concurrency: 2, vmRetries: 1, trigger: 'cli' });
      expect(await store.create(header)).toBe(true);
      expect(await store.create({ ...header, concurrency: 9 })).toBe(false);
      const got = await store.header(runId);
      expect(got?.header).toEqual(header);
      expect(typeof got?.revision).toBe('number');
    });

    it('knows nothing of a run that was never created', async () => {
      expect(await store.header(`${runId}-nope`)).toBeUndefined();
      expect(await store.allJobs(`${runId}-nope`)).toEqual([]);
      expect(await store.jobs(`${runId}-nope`, ['vm.a'])).toEqual(new Map());
    });

    it('commits jobs and header against the revision it read; a stale revision changes nothing', async () => {
      const header = newRunHeader(runId, new Date(), { concurrency: 2, vmRetries: 1 });
      await store.create(header);
      const first = (await store.header(runId))!;
      const a = job('vm.5c1e-aa', 'web1');
      const b = job('host.0f.2', 'xcp1', 'host-backup');
      const next: RunHeader = { ...header, status: 'running', jobIds: [a.jobId, b.jobId], remaining: 2 };
      expect(await store.commit(runId, next, first.revision, [a, b])).toBe(true);
      const second = (await store.header(runId))!;
      expect(second.header).toEqual(next);
      expect(second.revision).not.toBe(first.revision);
      expect(await store.allJobs(runId)).toEqual([a, b]);

      // A commit from the old state loses, and neither its header nor its jobs land.
      const stale: JobState = { ...a, status: 'failed' };
      expect(await store.commit(runId, { ...next, remaining: 0 }, first.revision, [stale])).toBe(false);
      expect((await store.header(runId))!).toEqual(second);
      expect((await store.jobs(runId, [a.jobId])).get(a.jobId)).toEqual(a);
    });

    it('writes the header only once what the commit queues alongside is out; a failure there commits nothing', async () => {
      const header = newRunHeader(runId, new Date(), { concurrency: 2, vmRetries: 1 });
      await store.create(header);
      const first = (await store.header(runId))!;
      const a = job('vm.a', 'a');
      let release!: () => void;
      const queued = new Promise<void>((resolve) => (release = resolve));
      const committing = store.commit(runId, { ...header, status: 'running', jobIds: [a.jobId], remaining: 1 }, first.revision, [a], queued);
      // Its jobs may be written by now; its header is not, while the queueing is under way.
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect((await store.header(runId))!).toEqual(first);
      release();
      expect(await committing).toBe(true);
      expect((await store.header(runId))!.header.status).toBe('running');

      const second = (await store.header(runId))!;
      const failing = store.commit(runId, { ...second.header, remaining: 0 }, second.revision, [{ ...a, status: 'success' }], Promise.reject(new Error('the next phase was not queued')));
      await expect(failing).rejects.toThrow('the next phase was not queued');
      expect((await store.header(runId))!).toEqual(second);
    });

    it('advances one job as read, header untouched; a job changed since its read is not written', async () => {
      const header = newRunHeader(runId, new Date(), { concurrency: 2, vmRetries: 1 });
      await store.create(header);
      const a = job('vm.a', 'a');
      const next: RunHeader = { ...header, status: 'running', jobIds: [a.jobId], remaining: 1, active: 1 };
      expect(await store.commit(runId, next, (await store.header(runId))!.revision, [a])).toBe(true);
      const before = (await store.header(runId))!;

      const read = (await store.jobs(runId, [a.jobId])).get(a.jobId)!;
      const exporting: JobState = { ...read, phase: 'export', phaseMs: { snapshot: 40 } };
      let release!: () => void;
      const queued = new Promise<void>((resolve) => (release = resolve));
      const advancing = store.advance(runId, exporting, read, queued);
      // Written only once what it queues is out.
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect((await store.jobs(runId, [a.jobId])).get(a.jobId)).toEqual(a);
      release();
      expect(await advancing).toBe(true);
      expect((await store.jobs(runId, [a.jobId])).get(a.jobId)).toEqual(exporting);
      // The header, and its revision, are as they were.
      expect((await store.header(runId))!).toEqual(before);

      // A second step from the same (now old) read loses and writes nothing.
      expect(await store.advance(runId, { ...read, phase: 'meta' }, read)).toBe(false);
      expect((await store.jobs(runId, [a.jobId])).get(a.jobId)).toEqual(exporting);
      // A queueing that fails writes nothing.
      const again = (await store.jobs(runId, [a.jobId])).get(a.jobId)!;
      await expect(store.advance(runId, { ...again, phase: 'meta' }, again, Promise.reject(new Error('the next phase was not queued')))).rejects.toThrow('the next phase was not queued');
      expect((await store.jobs(runId, [a.jobId])).get(a.jobId)).toEqual(exporting);
      // A commit made after the read (a stop ending the job) wins over a step from that read.
      const current = (await store.header(runId))!;
      const stopped: JobState = { ...again, status: 'failed' };
      expect(await store.commit(runId, { ...current.header, active: 0, remaining: 0 }, current.revision, [stopped])).toBe(true);
      expect(await store.advance(runId, { ...again, phase: 'meta' }, again)).toBe(false);
      expect((await store.jobs(runId, [a.jobId])).get(a.jobId)).toEqual(stopped);
    });

    it('of two commits from the same revision, exactly one wins', async () => {
      const header = newRunHeader(runId, new Date(), { concurrency: 2, vmRetries: 1 });
      await store.create(header);
      const { revision } = (await store.header(runId))!;
      const results = await Promise.all([
        store.commit(runId, { ...header, active: 1 }, revision, []),
        store.commit(runId, { ...header, active: 2 }, revision, []),
      ]);
      expect(results.filter(Boolean)).toHaveLength(1);
      expect([1, 2]).toContain((await store.header(runId))!.header.active);
    });

    it('reads the jobs asked for (those that exist), and all jobs in the header order', async () => {
      const header = newRunHeader(runId, new Date(), { concurrency: 2, vmRetries: 1 });
      await store.create(header);
      const jobs = [job('vm.b', 'b'), job('pool-db', 'pool database', 'pool-db'), job('vm.a', 'a')];
      const { revision } = (await store.header(runId))!;
      await store.commit(runId, { ...header, jobIds: ['vm.a', 'pool-db', 'vm.b', 'vm.never-written'] }, revision, jobs);
      const some = await store.jobs(runId, ['vm.a', 'vm.zzz', 'vm.b', 'vm.a']);
      expect([...some.keys()].sort()).toEqual(['vm.a', 'vm.b']);
      expect(some.get('vm.b')).toEqual(jobs[0]);
      expect((await store.allJobs(runId)).map((j) => j.jobId)).toEqual(['vm.a', 'pool-db', 'vm.b']);
    });

    it('returns copies: changing what it returned does not change the store', async () => {
      const header = newRunHeader(runId, new Date(), { concurrency: 2, vmRetries: 1 });
      await store.create(header);
      const got = (await store.header(runId))!;
      got.header.jobIds.push('vm.x');
      expect((await store.header(runId))!.header.jobIds).toEqual([]);
    });

    it('lists runs newest first, up to the limit', async () => {
      const ids = [0, 1, 2].map((i) => `${runId}-${i}`);
      await store.create(newRunHeader(ids[0]!, new Date('2031-01-01T00:00:01Z'), { concurrency: 1, vmRetries: 0 }));
      await store.create(newRunHeader(ids[2]!, new Date('2031-01-01T00:00:03Z'), { concurrency: 1, vmRetries: 0 }));
      await store.create(newRunHeader(ids[1]!, new Date('2031-01-01T00:00:02Z'), { concurrency: 1, vmRetries: 0 }));
      const listed = (await store.list(3)).map((h) => h.runId);
      expect(listed).toEqual([ids[2], ids[1], ids[0]]);
      expect(await store.list(1)).toHaveLength(1);
    });
  });
}

function job(jobId: string, label: string, kind: JobState['kind'] = 'vm'): JobState {
  return {
    jobId,
    kind,
    category: kind === 'vm' ? 'vm-export' : kind,
    label,
    pipeline: ['snapshot', 'export'],
    phase: 'snapshot',
    status: 'running',
    try: 1,
    input: { runId: 'r', jobId, nested: { a: [1, 2] } },
    files: [{ name: 'backup_20261126-083000.xva', format: 'xva', size: 1024 }],
    bytes: 1024,
    warnings: ['a warning'],
    phaseMs: { snapshot: 12 },
    startedAt: '2026-11-26T08:30:01.000Z',
  };
}
