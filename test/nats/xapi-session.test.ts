import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { vmbackup } from '../helpers/cli.js';
import { startRig } from './rig.js';
import { pool, vm } from '../sim/fixtures.js';
import type { Rig } from './rig.js';

/** A worker's XAPI session: made when a job needs it, made again when lost, logged out at the end. */
let rig: Rig | undefined;
afterEach(async () => {
  await rig?.close();
  rig = undefined;
});

describe('vmbackup worker and XAPI', () => {
  it('logs in when a job first needs XAPI, again after the session is lost, and out when it stops; logs to <base_dir>/logs', async () => {
    rig = await startRig(pool([vm('x1'), vm('x2', 'Halted')]));
    const worker = await rig.worker();
    expect(rig.sim.state.sessionStats().created).toBe(0);

    expect((await vmbackup(['run', ...rig.args()])).code).toBe(0);
    expect(rig.sim.state.sessionStats().created).toBe(1);

    // Every session dropped, and the next login refused once: xen-api gives the session up,
    // the job fails and is retried, and the worker logs in anew.
    rig.sim.faults.invalidateSessions();
    rig.sim.faults.add({ rpc: 'session.login_with_password', times: 1, action: { kind: 'error', code: 'HOST_STILL_BOOTING', params: [] } });
    const r = await vmbackup(['run', ...rig.args('--json')]);
    expect(r.code).toBe(0);
    expect(worker.output()).toMatch(/XAPI: the session to https:\/\/127\.0\.0\.1:\d+ was lost; logging in again/);
    expect(rig.sim.state.liveSessions()).toBe(1);

    expect(await worker.stop()).toBe(0);
    expect(worker.output()).toContain('worker stopped');
    expect(rig.sim.state.liveSessions()).toBe(0);

    const log = await readFile(path.join(rig.ws.base, 'logs', 'vmbackup.log'), 'utf8');
    const records = log.split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as { fn?: string; msg: string; pid: number });
    expect(records.filter((rec) => rec.pid === worker.pid && rec.fn === 'export').length).toBeGreaterThan(0);
    expect(records.some((rec) => rec.msg.startsWith('vmbackup') && rec.msg.includes('worker ready'))).toBe(true);
    expect(log).not.toContain(`"${'secret'}"`);
  });
});
