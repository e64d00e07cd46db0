import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Bus, Settle } from './bus.js';

/**
 * The behaviour every bus binding must have. memory.test.ts runs it on the in-process bus;
 * the NATS binding's test runs the same suite against a real nats-server.
 */
export function busContract(name: string, make: () => Promise<Bus>, opts: { retryDelayMs?: number } = {}): void {
  const delay = opts.retryDelayMs ?? 20;
  describe(`bus contract: ${name}`, () => {
    let bus: Bus;
    let prefix: string;
    beforeEach(async () => {
      bus = await make();
      prefix = `t${Math.random().toString(36).slice(2, 8)}`;
    });
    afterEach(async () => {
      await bus.close();
    });

    it('delivers a job once, and drops a second job with the same id', async () => {
      const seen: unknown[] = [];
      const done = deferred();
      await bus.work(`vmbackup.jobs.${prefix}`, { concurrency: 1 }, async (job) => {
        seen.push(job.data);
        if (seen.length === 2) done.resolve();
        return { kind: 'ack' };
      });
      await bus.enqueue(`vmbackup.jobs.${prefix}`, { n: 1 }, { id: `${prefix}-a` });
      await bus.enqueue(`vmbackup.jobs.${prefix}`, { n: 1 }, { id: `${prefix}-a` });
      await bus.enqueue(`vmbackup.jobs.${prefix}`, { n: 2 }, { id: `${prefix}-b` });
      await done.promise;
      await sleep(100);
      expect(seen).toEqual([{ n: 1 }, { n: 2 }]);
    });

    it('never runs more than `concurrency` jobs at once', async () => {
      let running = 0;
      let peak = 0;
      let finished = 0;
      const done = deferred();
      await bus.work(`vmbackup.jobs.${prefix}`, { concurrency: 2 }, async () => {
        running++;
        peak = Math.max(peak, running);
        await sleep(30);
        running--;
        if (++finished === 6) done.resolve();
        return { kind: 'ack' };
      });
      for (let i = 0; i < 6; i++) await bus.enqueue(`vmbackup.jobs.${prefix}`, { i }, { id: `${prefix}-${i}` });
      await done.promise;
      expect(peak).toBe(2);
    });

    it('redelivers after `retry` with attempt + 1, up to maxDeliver', async () => {
      const attempts: number[] = [];
      await bus.work(`vmbackup.jobs.${prefix}`, { concurrency: 1, maxDeliver: 3 }, async (job): Promise<Settle> => {
        attempts.push(job.attempt);
        return { kind: 'retry', delayMs: delay };
      });
      await bus.enqueue(`vmbackup.jobs.${prefix}`, {}, { id: `${prefix}-r` });
      await waitFor(() => attempts.length >= 3);
      await sleep(delay * 10 + 200);
      expect(attempts).toEqual([1, 2, 3]);
    });

    it('does not redeliver a terminated job', async () => {
      let calls = 0;
      await bus.work(`vmbackup.jobs.${prefix}`, { concurrency: 1, maxDeliver: 5 }, async () => {
        calls++;
        return { kind: 'term' };
      });
      await bus.enqueue(`vmbackup.jobs.${prefix}`, {}, { id: `${prefix}-t` });
      await waitFor(() => calls === 1);
      await sleep(delay * 10 + 200);
      expect(calls).toBe(1);
    });

    it('delivers events to matching subscribers, in order, one at a time', async () => {
      const got: string[] = [];
      let inHandler = 0;
      let overlap = false;
      await bus.subscribe(`vmbackup.events.${prefix}.>`, {}, async (subject) => {
        if (inHandler++ > 0) overlap = true;
        await sleep(5);
        got.push(subject);
        inHandler--;
      });
      const other: string[] = [];
      await bus.subscribe(`vmbackup.events.${prefix}.*.done`, {}, async (subject) => void other.push(subject));
      for (const s of ['a.started', 'a.done', 'b.failed', 'b.done']) await bus.publish(`vmbackup.events.${prefix}.${s}`, { s });
      await waitFor(() => got.length === 4 && other.length === 2);
      expect(got).toEqual(['a.started', 'a.done', 'b.failed', 'b.done'].map((s) => `vmbackup.events.${prefix}.${s}`));
      expect(other).toEqual([`vmbackup.events.${prefix}.a.done`, `vmbackup.events.${prefix}.b.done`]);
      expect(overlap).toBe(false);
    });

    it('keeps a job until a worker serves its subject; a closed worker takes no more', async () => {
      const subject = `vmbackup.jobs.${prefix}`;
      const first: unknown[] = [];
      const closer = await bus.work(subject, { concurrency: 1 }, async (job) => {
        first.push(job.data);
        return { kind: 'ack' };
      });
      await bus.enqueue(subject, { n: 1 }, { id: `${prefix}-1` });
      await waitFor(() => first.length === 1);
      await closer.close();
      await bus.enqueue(subject, { n: 2 }, { id: `${prefix}-2` });
      await sleep(200);
      expect(first).toEqual([{ n: 1 }]);
      const second: unknown[] = [];
      await bus.work(subject, { concurrency: 1 }, async (job) => {
        second.push(job.data);
        return { kind: 'ack' };
      });
      await waitFor(() => second.length === 1);
      expect(second).toEqual([{ n: 2 }]);
    });

    it('a durable subscriber that throws gets the event again, and the next event waits behind it', async () => {
      const got: string[] = [];
      let failures = 0;
      await bus.subscribe(`vmbackup.events.${prefix}.>`, { durable: `d-${prefix}` }, async (subject) => {
        const last = subject.split('.').pop()!;
        if (last === 'a' && failures++ < 2) throw new Error('not yet');
        got.push(last);
      });
      for (const s of ['a', 'b', 'c']) await bus.publish(`vmbackup.events.${prefix}.${s}`, {});
      await waitFor(() => got.length === 3);
      expect(got).toEqual(['a', 'b', 'c']);
      expect(failures).toBe(3);
    });

    it('passes signals to the listeners there when they are sent, and keeps none', async () => {
      bus.notify(`vmbackup.progress.${prefix}.early`, { n: 0 });
      const got: { subject: string; data: unknown }[] = [];
      const sub = await bus.listen(`vmbackup.progress.${prefix}.>`, (subject, data) => void got.push({ subject, data }));
      await bus.request(`vmbackup.hooks.${prefix}-flush`, {}, { timeoutMs: 100 });
      bus.notify(`vmbackup.progress.${prefix}.a`, { n: 1 });
      bus.notify(`vmbackup.progress.other.a`, { n: 2 });
      bus.notify(`vmbackup.progress.${prefix}.b`, { n: 3 });
      await waitFor(() => got.length >= 2);
      await sleep(50);
      expect(got).toEqual([
        { subject: `vmbackup.progress.${prefix}.a`, data: { n: 1 } },
        { subject: `vmbackup.progress.${prefix}.b`, data: { n: 3 } },
      ]);
      await sub.close();
      bus.notify(`vmbackup.progress.${prefix}.c`, { n: 4 });
      await sleep(50);
      expect(got).toHaveLength(2);
    });

    it('answers requests, and returns no reply when nobody listens', async () => {
      await bus.reply(`vmbackup.hooks.${prefix}`, async (data) => ({ echo: data }));
      expect(await bus.request(`vmbackup.hooks.${prefix}`, { x: 1 }, { timeoutMs: 2000 })).toEqual([{ echo: { x: 1 } }]);
      expect(await bus.request(`vmbackup.hooks.${prefix}-nobody`, {}, { timeoutMs: 200 })).toEqual([]);
    });
  });
}

export function deferred(): { promise: Promise<void>; resolve(): void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function waitFor(cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error('condition not met in time');
    await sleep(10);
  }
}
