import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer } from '../../test/helpers/nats-server.js';
import type { NatsServer } from '../../test/helpers/nats-server.js';
import { z } from 'zod';
import { JobBase } from '../../functions/job.js';
import type { PhaseEvent } from '../events.js';
import { defineFunction, subject as subjectOf, systemClock } from '../function.js';
import { silentLogger } from '../log.js';
import { serve } from '../serve.js';
import type { Settle } from './bus.js';
import { busContract, deferred, sleep, waitFor } from './contract.js';
import type { NatsRuntime } from './nats-connect.js';
import { openNats } from './nats-connect.js';
import { JOBS_STREAM, jobConsumerName } from '../../infra/nats/jetstream.js';
import { waitFor as waitUntil } from '../../test/sim/test-helpers.js';

let server: NatsServer;
beforeAll(async () => {
  server = await startNatsServer();
});
afterAll(async () => {
  await server?.stop();
});

const settings = () => ({ nats_url: server.url, concurrency: 2 });
const open = (opts: Parameters<typeof openNats>[2] = {}): Promise<NatsRuntime> => openNats(settings(), silentLogger(), opts);

busContract('nats', async () => (await open()).bus);

describe('NatsBus beyond the contract', () => {
  it('redelivers the job of a worker that died (connection gone, nothing settled) to another', async () => {
    const a = await open({ bus: { ackWaitMs: 1_000 } });
    const b = await open({ bus: { ackWaitMs: 1_000 } });
    const subject = `vmbackup.jobs.t${Math.random().toString(36).slice(2, 8)}`;
    try {
      const gotA = deferred();
      await a.bus.work(subject, { concurrency: 1, maxDeliver: 3, ackWaitMs: 1_000 }, async () => {
        gotA.resolve();
        return new Promise<Settle>(() => {}); // never settles: this worker "dies"
      });
      await a.bus.enqueue(subject, { n: 1 }, { id: `${subject}-1` });
      await gotA.promise;
      a.nc.close().catch(() => {}); // SIGKILL-like: the connection goes, the job is not acked
      const seen: number[] = [];
      await b.bus.work(subject, { concurrency: 1, maxDeliver: 3, ackWaitMs: 1_000 }, async (job) => {
        seen.push(job.attempt);
        return { kind: 'ack' };
      });
      await waitFor(() => seen.length === 1, 15_000);
      await sleep(1_500);
      expect(seen).toEqual([2]);
    } finally {
      await b.close();
    }
  });

  it('runs a job delivered again while its first delivery still runs only once: the copy stands by, then is dropped', async () => {
    // A consumer's new leader may not know of a delivery made just before the old one died,
    // and delivers the job again at once. Deleting the consumer and making it anew does the same
    // on one server: the job, not acked, goes to the next worker while the first still runs it.
    const a = await open({ bus: { ackWaitMs: 1_000 } });
    const b = await open({ bus: { ackWaitMs: 1_000 } });
    const subject = `vmbackup.jobs.t${Math.random().toString(36).slice(2, 8)}`;
    const jsm = await a.nc.jetstreamManager();
    try {
      const ran: string[] = [];
      const startedA = deferred();
      const releaseA = deferred();
      await a.bus.work(subject, { concurrency: 1, maxDeliver: 3, ackWaitMs: 1_000 }, async () => {
        ran.push('a');
        startedA.resolve();
        await releaseA.promise;
        return { kind: 'ack' };
      });
      await a.bus.enqueue(subject, { n: 1 }, { id: `${subject}-1` });
      await startedA.promise;
      await jsm.consumers.delete(JOBS_STREAM, jobConsumerName(subject));
      await b.bus.work(subject, { concurrency: 1, maxDeliver: 3, ackWaitMs: 1_000 }, async () => {
        ran.push('b');
        return { kind: 'ack' };
      });
      // The copy is out, to b, and held there: three leases pass and only a runs it.
      await waitUntil(async () => ((await jsm.consumers.info(JOBS_STREAM, jobConsumerName(subject))).num_ack_pending === 1 ? true : undefined), 10_000, 'the job delivered again');
      await sleep(3_000);
      expect(ran).toEqual(['a']);
      releaseA.resolve();
      // a settles it; the copy is dropped, not run; the queue is empty.
      await waitUntil(async () => ((await jsm.streams.info(JOBS_STREAM, { subjects_filter: subject })).state.subjects?.[subject] === undefined ? true : undefined), 10_000, 'the job gone from the queue');
      await waitUntil(async () => ((await jsm.consumers.info(JOBS_STREAM, jobConsumerName(subject))).num_ack_pending === 0 ? true : undefined), 10_000, 'no delivery outstanding');
      expect(ran).toEqual(['a']);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('keeps a running job leased past ack_wait: a slow live worker is not duplicated', async () => {
    const nats = await open();
    const subject = `vmbackup.jobs.t${Math.random().toString(36).slice(2, 8)}`;
    try {
      const attempts: number[] = [];
      await nats.bus.work(subject, { concurrency: 2, maxDeliver: 3, ackWaitMs: 500 }, async (job) => {
        attempts.push(job.attempt);
        await sleep(2_000); // four ack_waits, no heartbeat from the handler
        return { kind: 'ack' };
      });
      await nats.bus.enqueue(subject, {}, { id: `${subject}-1` });
      await waitFor(() => attempts.length === 1);
      await sleep(3_000);
      expect(attempts).toEqual([1]);
    } finally {
      await nats.close();
    }
  });

  it('an idle worker keeps one pull request out per subject, whatever its concurrency; a burst still runs all its slots at once', async () => {
    const nats = await open();
    const subject = `vmbackup.jobs.t${Math.random().toString(36).slice(2, 8)}`;
    try {
      let running = 0;
      let peak = 0;
      let finished = 0;
      const release = deferred();
      await nats.bus.work(subject, { concurrency: 4 }, async () => {
        running++;
        peak = Math.max(peak, running);
        await release.promise;
        running--;
        finished++;
        return { kind: 'ack' };
      });
      const jsm = await nats.nc.jetstreamManager();
      const waiting = async () => (await jsm.consumers.info(JOBS_STREAM, jobConsumerName(subject))).num_waiting;
      // Four free slots, one request on the consumer's leader (it was four, each renewed every 5 s).
      await waitUntil(async () => (await waiting()) === 1, 10_000, 'one pull request waiting');
      await sleep(300);
      expect(await waiting()).toBe(1);
      for (let i = 0; i < 4; i++) await nats.bus.enqueue(subject, { i }, { id: `${subject}-${i}` });
      await waitFor(() => running === 4);
      expect(peak).toBe(4);
      // Every slot busy: nothing is pulled that could not be run.
      await sleep(300);
      expect(await waiting()).toBe(0);
      release.resolve();
      await waitFor(() => finished === 4);
      await waitUntil(async () => (await waiting()) === 1, 10_000, 'one pull request waiting');
    } finally {
      await nats.close();
    }
  });

  it('delivers one more time past maxDeliver when the last attempt never settled (for the runtime to fail it)', async () => {
    const subject = `vmbackup.jobs.t${Math.random().toString(36).slice(2, 8)}`;
    const attempts: number[] = [];
    // Each "worker" takes the job and dies without settling it.
    for (let i = 0; i < 2; i++) {
      const dying = await open();
      const got = deferred();
      await dying.bus.work(subject, { concurrency: 1, maxDeliver: 2, ackWaitMs: 500 }, async (job) => {
        attempts.push(job.attempt);
        got.resolve();
        return new Promise<Settle>(() => {});
      });
      if (i === 0) await dying.bus.enqueue(subject, {}, { id: `${subject}-1` });
      await got.promise;
      await dying.nc.close();
    }
    const last = await open();
    try {
      await last.bus.work(subject, { concurrency: 1, maxDeliver: 2, ackWaitMs: 500 }, async (job) => {
        attempts.push(job.attempt);
        return { kind: 'retry', delayMs: 10 };
      });
      await waitFor(() => attempts.length === 3, 10_000);
      await sleep(1_500);
      // The third delivery is the one past maxDeliver; retrying it terminates the job.
      expect(attempts).toEqual([1, 2, 3]);
    } finally {
      await last.close();
    }
  });

  it('serve() reports a job whose every attempt died with its worker as failed (GAVE_UP), without running it again', async () => {
    const name = `t${Math.random().toString(36).slice(2, 8)}`;
    const fn = (handle: () => Promise<Record<string, never>>) =>
      defineFunction({ name, description: 'test', subject: subjectOf(`vmbackup.jobs.${name}`, JobBase), output: z.object({}), retry: { maxDeliver: 2, backoffMs: [10] }, handle });
    const deps = (bus: NatsRuntime['bus']) => ({ bus, log: silentLogger(), xapi: () => Promise.reject(new Error('no XAPI here')), clock: systemClock, origin: { hostname: 'test', pid: 1 } });
    const events: PhaseEvent[] = [];
    const watcher = await open();
    await watcher.bus.subscribe(`vmbackup.events.r-${name}.>`, {}, async (_s, data) => void events.push(data as PhaseEvent));
    for (let i = 0; i < 2; i++) {
      const dying = await open();
      await serve([fn(() => new Promise(() => {}))], deps(dying.bus), { concurrency: () => 1, ackWaitMs: 500 });
      if (i === 0) await dying.bus.enqueue(`vmbackup.jobs.${name}`, { runId: `r-${name}`, jobId: 'j1' }, { id: `${name}-1` });
      await waitFor(() => events.filter((e) => e.outcome === 'started').length === i + 1, 10_000);
      await dying.nc.close();
    }
    const last = await open();
    let ran = 0;
    try {
      await serve([fn(async () => (ran++, {}))], deps(last.bus), { concurrency: () => 1, ackWaitMs: 500 });
      await waitFor(() => events.some((e) => e.outcome === 'failed'), 10_000);
      const failed = events.find((e) => e.outcome === 'failed') as Extract<PhaseEvent, { outcome: 'failed' }>;
      expect(failed).toMatchObject({ attempt: 3, jobId: 'j1', error: { code: 'GAVE_UP', permanent: true } });
      expect(failed.error.message).toBe(`${name} given up: 2 deliveries ended without an outcome (the worker died or lost NATS each time)`);
      expect(ran).toBe(0);
    } finally {
      await Promise.all([last.close(), watcher.close()]);
    }
  });

  it('serve() stores a phase event once per delivery, however often its publish is repeated (a PubAck lost)', async () => {
    const name = `t${Math.random().toString(36).slice(2, 8)}`;
    const runId = `r-${name}`;
    const worker = await open();
    const watcher = await open();
    // What jsPublish does when a PubAck is lost: the same publish again.
    const publishTwice: NatsRuntime['bus']['publish'] = async (subject, data, opts) => {
      await worker.bus.publish(subject, data, opts);
      await worker.bus.publish(subject, data, opts);
    };
    const twice = new Proxy(worker.bus, {
      get: (bus, key) => (key === 'publish' ? publishTwice : typeof Reflect.get(bus, key) === 'function' ? (Reflect.get(bus, key) as Function).bind(bus) : Reflect.get(bus, key)),
    });
    let calls = 0;
    const fn = defineFunction({
      name,
      description: 'test',
      subject: subjectOf(`vmbackup.jobs.${name}`, JobBase),
      output: z.object({}),
      retry: { maxDeliver: 3, backoffMs: [10] },
      handle: async () => {
        if (++calls === 1) throw new Error('transient');
        return {};
      },
    });
    try {
      await serve([fn], { bus: twice, log: silentLogger(), xapi: () => Promise.reject(new Error('no XAPI here')), clock: systemClock, origin: { hostname: 'test', pid: 1 } }, { concurrency: () => 1 });
      await worker.bus.enqueue(`vmbackup.jobs.${name}`, { runId, jobId: 'j1' }, { id: `${name}-1` });
      const jsm = await worker.nc.jetstreamManager();
      const stored = (): Promise<string[]> =>
        jsm.streams.info('VMBACKUP_EVENTS', { subjects_filter: `vmbackup.events.${runId}.>` }).then((i) => Object.entries(i.state.subjects ?? {}).flatMap(([s, n]) => Array<string>(n).fill(s.split('.').pop()!)));
      await waitUntil(async () => ((await stored()).includes('done') ? true : undefined), 10_000, 'the phase done');
      // Started by each of its two deliveries (the first failed and was retried), done once.
      expect((await stored()).sort()).toEqual(['done', 'started', 'started']);
      expect(calls).toBe(2);
    } finally {
      await Promise.all([worker.close(), watcher.close()]);
    }
  });

  it('a durable subscription keeps what was published while nobody listened, and several subscribers share it in order', async () => {
    const prefix = `t${Math.random().toString(36).slice(2, 8)}`;
    const first = await open();
    const seen: string[] = [];
    const closer = await first.bus.subscribe(`vmbackup.events.${prefix}.>`, { durable: `d-${prefix}` }, async (s) => void seen.push(s));
    await first.bus.publish(`vmbackup.events.${prefix}.1`, {});
    await waitFor(() => seen.length === 1);
    await closer.close();
    for (let i = 2; i <= 6; i++) await first.bus.publish(`vmbackup.events.${prefix}.${i}`, {});
    const a = await open();
    const b = await open();
    try {
      let inHandler = 0;
      let overlap = false;
      const handler = async (s: string) => {
        if (inHandler++ > 0) overlap = true;
        await sleep(20);
        seen.push(s);
        inHandler--;
      };
      await a.bus.subscribe(`vmbackup.events.${prefix}.>`, { durable: `d-${prefix}` }, handler);
      await b.bus.subscribe(`vmbackup.events.${prefix}.>`, { durable: `d-${prefix}` }, handler);
      for (let i = 7; i <= 10; i++) await first.bus.publish(`vmbackup.events.${prefix}.${i}`, {});
      await waitFor(() => seen.length === 10);
      expect(seen.map((s) => Number(s.split('.').pop()))).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      expect(overlap).toBe(false);
    } finally {
      await Promise.all([first.close(), a.close(), b.close()]);
    }
  });

  it('gathers every reply within the timeout, or maxReplies', async () => {
    const nats = await open();
    const other = await open();
    const subject = `vmbackup.hooks.t${Math.random().toString(36).slice(2, 8)}`;
    try {
      await nats.bus.reply(subject, async (d) => ({ from: 'a', d }));
      await other.bus.reply(subject, async (d) => ({ from: 'b', d }));
      await nats.nc.flush();
      await other.nc.flush();
      const all = (await nats.bus.request(subject, 1, { timeoutMs: 500 })) as { from: string }[];
      expect(all.map((r) => r.from).sort()).toEqual(['a', 'b']);
      const one = await nats.bus.request(subject, 1, { timeoutMs: 2_000, maxReplies: 1 });
      expect(one).toHaveLength(1);
    } finally {
      await Promise.all([nats.close(), other.close()]);
    }
  });

  it('enqueue waits out a nats-server restart', async () => {
    const nats = await open();
    const subject = `vmbackup.jobs.t${Math.random().toString(36).slice(2, 8)}`;
    try {
      const seen: unknown[] = [];
      await nats.bus.work(subject, { concurrency: 1 }, async (job) => {
        seen.push(job.data);
        return { kind: 'ack' };
      });
      const restarted = server.restart({ downMs: 1_000 });
      await sleep(200);
      await nats.bus.enqueue(subject, { during: 'restart' }, { id: `${subject}-1` });
      await restarted;
      await waitFor(() => seen.length === 1, 20_000);
      expect(seen).toEqual([{ during: 'restart' }]);
    } finally {
      await nats.close();
    }
  });
});
