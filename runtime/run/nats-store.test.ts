import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer } from '../../test/helpers/nats-server.js';
import type { NatsServer } from '../../test/helpers/nats-server.js';
import { openNats } from '../bus/nats-connect.js';
import { silentLogger } from '../log.js';
import { fromKvToken, jobKey, kvToken } from './nats-store.js';
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
      expect(keys).toEqual([jobKey('r-keys', 'vm.x1')]);
      expect(keys).toEqual(['r-keys.vm/x1']);
      expect((await nats.store.kv.get('r-keys'))?.json()).toMatchObject({ runId: 'r-keys', jobIds: ['vm.x1'] });
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
