import { connect } from 'nats';
import type { NatsConnection } from 'nats';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startNatsServer } from '../../test/helpers/nats-server.js';
import type { NatsServer } from '../../test/helpers/nats-server.js';
import { MemoryBus } from '../bus/memory.js';
import { NatsBus } from '../bus/nats.js';
import type { PreVmEvent } from './event.js';
import { askNats, hookSubject } from './nats.js';

const event: PreVmEvent = {
  point: 'pre-vm',
  runId: 'r1',
  at: '2026-11-26T08:30:02.000Z',
  jobId: 'vm.u1',
  try: 1,
  vm: { uuid: 'u1', name: 'db1' },
  backupDir: '/b',
  folder: 'db1',
  mode: 'vm',
  stamp: '20261126-083000',
};

let bus: MemoryBus;
beforeEach(() => {
  bus = new MemoryBus();
});
afterEach(async () => bus.close());

describe('askNats', () => {
  it('asks on vmbackup.hooks.<point> with the event', async () => {
    const asked: unknown[] = [];
    await bus.reply('vmbackup.hooks.pre-vm', async (data) => {
      asked.push(data);
      return { decision: 'continue' };
    });
    expect(hookSubject('pre-vm')).toBe('vmbackup.hooks.pre-vm');
    expect(await askNats(bus, event, { timeoutMs: 2_000, replies: 1 })).toEqual({ kind: 'nats', outcome: 'continue', reason: '' });
    expect(asked).toEqual([event]);
  });

  // "At once": the answer is the bus's no-subscriber reply, not the timeout's (which would say
  // `no reply … within`), so it is told by the reason, not by a clock.
  it('nobody listening is a continue, at once', async () => {
    expect(await askNats(bus, event, { timeoutMs: 30_000, replies: 1 })).toEqual({ kind: 'nats', outcome: 'continue', reason: 'no subscriber on vmbackup.hooks.pre-vm' });
  });

  const replies: [string, string, (data: unknown) => Promise<unknown>, string | RegExp][] = [
    ['abort with a reason', 'abort', async () => ({ decision: 'abort', reason: 'replica lagging' }), 'replica lagging'],
    ['abort without a reason', 'abort', async () => ({ decision: 'abort' }), 'a subscriber answered abort'],
    ['not a decision', 'failed', async () => ({ ok: true }), /1 reply on vmbackup.hooks.pre-vm not \{"decision"/],
    ['a replier that throws', 'failed', async () => Promise.reject(new Error('no db')), /request on vmbackup.hooks.pre-vm failed: no db/],
    ['no answer in time', 'timeout', () => new Promise(() => {}), 'no reply on vmbackup.hooks.pre-vm within 0.3 s'],
  ];
  it.each(replies)('%s → %s', async (_name, outcome, replier, reason) => {
    await bus.reply('vmbackup.hooks.pre-vm', replier);
    const r = await askNats(bus, event, { timeoutMs: 300, replies: 1 });
    expect(r.outcome).toBe(outcome);
    expect(r.reason).toMatch(reason);
  });
});

describe('askNats on a real nats-server', () => {
  let server: NatsServer;
  let nc: NatsConnection;
  let natsBus: NatsBus;
  beforeAll(async () => {
    server = await startNatsServer();
    nc = await connect({ servers: server.url });
    natsBus = await NatsBus.create(nc);
  });
  afterAll(async () => {
    await natsBus.close();
    await server.stop();
  });

  it('nobody listening is a continue at once (no responders, not the timeout)', async () => {
    expect(await askNats(natsBus, { ...event, point: 'pre-vm' }, { timeoutMs: 30_000, replies: 1 })).toMatchObject({ outcome: 'continue', reason: 'no subscriber on vmbackup.hooks.pre-vm' });
  });

  it('returns as soon as the expected replies came; gathers them all with replies = 0; any abort wins', async () => {
    // The aborting subscriber holds its first answer until the first ask has returned, and that
    // ask's timeout is far beyond this test's own: returning at all, with `continue`, proves it
    // did not wait for the timeout (or for the abort) once one reply came.
    let release = (): void => {};
    const held = new Promise<void>((r) => (release = r));
    const a = await natsBus.reply('vmbackup.hooks.pre-vm', async () => ({ decision: 'continue' }));
    const b = await natsBus.reply('vmbackup.hooks.pre-vm', async () => {
      await held;
      return { decision: 'abort', reason: 'replica lagging' };
    });
    try {
      expect(await askNats(natsBus, event, { timeoutMs: 3_600_000, replies: 1 })).toEqual({ kind: 'nats', outcome: 'continue', reason: '' });
      release();
      expect(await askNats(natsBus, event, { timeoutMs: 1_000, replies: 0 })).toEqual({ kind: 'nats', outcome: 'abort', reason: 'replica lagging' });
      expect(await askNats(natsBus, event, { timeoutMs: 5_000, replies: 2 })).toEqual({ kind: 'nats', outcome: 'abort', reason: 'replica lagging' });
      expect(await askNats(natsBus, event, { timeoutMs: 1_000, replies: 3 })).toMatchObject({ outcome: 'abort' });
    } finally {
      release();
      await a.close();
      await b.close();
    }
  });

  it('fewer replies than expected within the timeout is a timeout', async () => {
    const a = await natsBus.reply('vmbackup.hooks.post-vm', async () => ({ decision: 'continue' }));
    try {
      const post = { ...event, point: 'post-vm' as const, outcome: { status: 'success' as const, files: [], bytes: 0, warnings: [] } };
      expect(await askNats(natsBus, post, { timeoutMs: 800, replies: 2 })).toEqual({ kind: 'nats', outcome: 'timeout', reason: '1 of 2 replies on vmbackup.hooks.post-vm within 0.8 s' });
    } finally {
      await a.close();
    }
  });
});
