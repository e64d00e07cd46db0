import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer } from '../../test/helpers/nats-server.js';
import type { NatsServer } from '../../test/helpers/nats-server.js';
import { openNats } from '../bus/nats-connect.js';
import { silentLogger } from '../log.js';
import { fromKvToken, jobKey, kvToken, pendingRanges } from './nats-store.js';
import type { RunHeader } from './state.js';
import { newRunHeader } from './reduce.js';
import { storeContract } from './store-contract.js';

let server: NatsServer;
beforeAll(async () => {
  server = await startNatsServer();
});
afterAll(async () => {
  await server?.stop();
});

storeContract('nats kv', async () => {
  const nats = await openNats({ nats_url: server.url, concurrency: 2 }, silentLogger());
  return { store: nats.store, close: () => nats.close() };
});

describe('NatsRunStore keys', () => {
  it.each([
    [['a', 'b', 'c', 'd'], ['c', 'd'], [[2, 4]]],
    [['a', 'b', 'c', 'd'], [], []],
    [['a', 'b', 'c', 'd'], ['d', 'a', 'b'], [[3, 4], [0, 2]]],
    [['a', 'b'], ['a', 'x'], undefined],
  ])('pendingRanges(%j, %j) → %j', (ids, pending, ranges) => {
    expect(pendingRanges(ids, pending)).toEqual(ranges);
  });

  it.each([
    ['20261126-083000-7f3a', '20261126-083000-7f3a'],
    ['vm.5c1e0f', 'vm/5c1e0f'],
    ['host.a.b', 'host/a/b'],
    ['pool-db', 'pool-db'],
    ['a/b=c', 'a=2Fb=3Dc'],
    ['..', '//'],
    ['café', 'caf=C3=A9'],
  ])('%s ↔ %s', (id, token) => {
    expect(kvToken(id)).toBe(token);
    expect(fromKvToken(token)).toBe(id);
  });

  it('stores the header under <runId> and each job under <runId>.<jobId>', async () => {
    const nats = await openNats({ nats_url: server.url, concurrency: 2 }, silentLogger());
    try {
      const header = newRunHeader('r-keys', new Date(), { concurrency: 1, vmRetries: 0 });
      await nats.store.create(header);
      const { revision } = (await nats.store.header('r-keys'))!;
      const job = { jobId: 'vm.x1', kind: 'vm' as const, category: 'vm-export' as const, label: 'x', pipeline: ['snapshot'], phase: 'snapshot', status: 'running' as const, try: 1, input: {}, files: [], bytes: 0, warnings: [], phaseMs: {} };
      await nats.store.commit('r-keys', { ...header, jobIds: ['vm.x1'] }, revision, [job]);
      const keys: string[] = [];
      for await (const k of await nats.store.kv.keys('r-keys.>')) keys.push(k);
      const idsKey = keys.find((k) => k.startsWith('r-keys.=ids-'));
      expect(keys.filter((k) => k !== idsKey)).toEqual([jobKey('r-keys', 'vm.x1')]);
      expect(keys.filter((k) => k !== idsKey)).toEqual(['r-keys.vm/x1']);
      expect((await nats.store.kv.get('r-keys'))?.json()).toMatchObject({ runId: 'r-keys', ids: { key: idsKey, count: 1 }, pendingRanges: [] });
      expect((await nats.store.kv.get(idsKey!))?.json()).toEqual(['vm.x1']);
    } finally {
      await nats.close();
    }
  });

  it("keeps a 1,000-job header small: the ids once under their own key, pending as ranges; another process reads it whole", async () => {
    const nats = await openNats({ nats_url: server.url, concurrency: 2 }, silentLogger());
    const other = await openNats({ nats_url: server.url, concurrency: 2 }, silentLogger());
    try {
      const header = newRunHeader('r-big', new Date(), { concurrency: 4, vmRetries: 0 });
      await nats.store.create(header);
      const jobIds = Array.from({ length: 1000 }, (_, i) => `vm.${String(i).padStart(4, '0')}-5c1e0f2a-9b7d-4c3e-8f1a-2b3c4d5e6f70`);
      // Started 0–9; 10–19 pending again after a retry; the tail never started.
      const pending = [...jobIds.slice(500), ...jobIds.slice(10, 20)];
      const planned: RunHeader = { ...header, status: 'running', jobIds, pending, remaining: 1000 };
      let { revision } = (await nats.store.header('r-big'))!;
      expect(await nats.store.commit('r-big', planned, revision, [])).toBe(true);
      for (let i = 0; i < 5; i++) {
        ({ revision } = (await nats.store.header('r-big'))!);
        expect(await nats.store.commit('r-big', { ...planned, pending: pending.slice(i + 1), active: i }, revision, [])).toBe(true);
      }
      const raw = await nats.store.kv.get('r-big');
      expect(raw!.length).toBeLessThan(1024);
      expect(raw!.json()).toMatchObject({ pendingRanges: [[505, 1000], [10, 20]], ids: { count: 1000 } });
      const keys: string[] = [];
      for await (const k of await nats.store.kv.keys('r-big.>')) keys.push(k);
      expect(keys.filter((k) => k.startsWith('r-big.=ids-'))).toHaveLength(1);
      expect((await other.store.header('r-big'))!.header).toEqual({ ...planned, pending: pending.slice(5), active: 4 });
      expect((await other.store.list()).find((h) => h.runId === 'r-big')?.jobIds).toEqual(jobIds);
    } finally {
      await nats.close();
      await other.close();
    }
  });

  it('reads a header written with its ids inline (before they had their own key)', async () => {
    const nats = await openNats({ nats_url: server.url, concurrency: 2 }, silentLogger());
    try {
      const header: RunHeader = { ...newRunHeader('r-inline', new Date(), { concurrency: 1, vmRetries: 0 }), status: 'running', jobIds: ['vm.a', 'vm.b'], pending: ['vm.b'], remaining: 2 };
      await nats.store.kv.create('r-inline', JSON.stringify(header));
      const got = await nats.store.header('r-inline');
      expect(got!.header).toEqual(header);
      expect(await nats.store.commit('r-inline', { ...header, pending: [] }, got!.revision, [])).toBe(true);
      expect((await nats.store.header('r-inline'))!.header.pending).toEqual([]);
    } finally {
      await nats.close();
    }
  });

  it('lists each run once, also while its header is written meanwhile (the status page lists running runs)', async () => {
    const nats = await openNats({ nats_url: server.url, concurrency: 2 }, silentLogger());
    try {
      const ids = Array.from({ length: 20 }, (_, i) => `r-list-${i}`);
      for (const id of ids) await nats.store.create(newRunHeader(id, new Date(), { concurrency: 1, vmRetries: 0 }));
      // A coordinator committing runs while a reader lists them.
      let writing = true;
      const writer = (async () => {
        for (let n = 0; writing; n++) {
          const id = ids[n % ids.length]!;
          const current = (await nats.store.header(id))!;
          await nats.store.commit(id, { ...current.header, active: n }, current.revision, []);
        }
      })();
      for (let round = 0; round < 10; round++) {
        const listed = (await nats.store.list(1000)).map((h) => h.runId).filter((id) => id.startsWith('r-list-'));
        expect(new Set(listed).size).toBe(listed.length);
        expect(listed.sort()).toEqual([...ids].sort());
      }
      writing = false;
      await writer;
    } finally {
      await nats.close();
    }
  });
});
