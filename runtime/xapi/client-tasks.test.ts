import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSimulator } from '../../test/sim/server.js';
import type { Simulator } from '../../test/sim/server.js';
import { silentLogger } from '../log.js';
import { XapiClient } from './client.js';
import { pool, vm } from '../../test/sim/fixtures.js';

/**
 * A task's end is not lost when xen-api's event loop stops seeing events (as after its
 * re-login on a toolstack restart): the client also asks XAPI for the task, so a snapshot or
 * a transfer never waits forever. Real simulator, real xen-api.
 */
describe('tasks waited for while the event loop sees nothing', () => {
  let sim: Simulator;
  let xapi: XapiClient;
  beforeAll(async () => {
    sim = await startSimulator({
      pool: pool([vm('web1', 'Running', 1)]),
    });
    xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'secret', log: silentLogger() });
    // From now on every event.from fails: xen-api's loop waits and tries again, seeing no task end.
    sim.faults.add({ rpc: 'event.from', always: true, action: { kind: 'error', code: 'INTERNAL_ERROR', params: ['event loop down'] } });
    // Let the long poll under way return (a task changes), so the next one meets the fault.
    const t = await xapi.call<string>('task.create', 'nudge', '');
    await xapi.call('task.destroy', t);
    await delay(1_000);
  });
  afterAll(async () => {
    sim?.faults.clear();
    await xapi?.close();
    await sim?.close();
  });

  it('Async.VM.snapshot resolves with the snapshot, from the task asked after directly', async () => {
    const vm = await xapi.call<string>('VM.get_by_uuid', sim.state.vm('web1').uuid);
    const snapshot = await xapi.callAsync<string>('VM.snapshot', vm, 'nightly');
    expect(snapshot).toMatch(/^OpaqueRef:/);
    expect(await xapi.call('VM.get_is_a_snapshot', snapshot)).toBe(true);
  }, 30_000);

  it('a task that fails rejects with its XAPI error, named by the call', async () => {
    sim.faults.add({ rpc: 'VM.snapshot', vm: 'web1', action: { kind: 'task-failure', code: 'SR_FULL', params: ['4294967296', '1073741824'] } });
    const vm = await xapi.call<string>('VM.get_by_uuid', sim.state.vm('web1').uuid);
    await expect(xapi.callAsync('VM.snapshot', vm, 'nightly')).rejects.toMatchObject({ message: 'VM.snapshot: SR_FULL(4.0 GiB requested, 1.0 GiB maximum)' });
  }, 30_000);
});
