import http from 'node:http';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { decodeValue } from '../../runtime/formats/xmlrpc.js';
import { smallPool } from './fixtures.js';
import type { FaultAction } from './faults.js';
import { startSimulator, type Simulator } from './server.js';
import { login, waitFor, xapi, xapiError } from './test-helpers.js';

let sim: Simulator;
let session: string;

beforeAll(async () => {
  sim = await startSimulator({
    pool: smallPool({
      srs: [
        { name_label: 'NFS storage', size_gib: 100, used_gib: 10 },
        { name_label: 'Local storage b', size_gib: 50, used_gib: 1, shared: false, host: 'xcp-b' },
        { name_label: 'Tiny', size_gib: 0.01, used_gib: 0.009 },
      ],
      vms: [
        ...smallPool().vms!,
        { name_label: 'cramped', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 4, fill: 'pattern', sr: 'Tiny' }], vifs: [] },
        { name_label: 'medium', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 32, fill: 'pattern' }], vifs: [] },
      ],
    }),
  });
  session = await login(sim.url);
});
afterAll(async () => {
  await sim.close();
});
afterEach(async () => {
  sim.faults.clear();
  if (!(await xapi(sim.url, 'session.get_uuid', session, session).then(() => true, () => false))) session = await login(sim.url);
});

const ref = (name: string) => sim.state.vm(name).ref;

interface Transfer {
  status: number;
  bytes: number;
  error?: string;
  ms: number;
}

/**
 * Reads a whole GET, counting bytes. `giveUp` abandons a stalled body: `quietMs` after the
 * first `atBytes` bytes arrived (counted from there, not from the request, so a slow machine
 * does not give up before the stall is reached).
 */
function transfer(url: string, giveUp?: { atBytes: number; quietMs: number }): Promise<Transfer> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    let bytes = 0;
    let status = 0;
    let timer: NodeJS.Timeout | undefined;
    const req = http.get(url, (res) => {
      status = res.statusCode!;
      res.on('data', (c: Buffer) => {
        bytes += c.length;
        if (giveUp !== undefined && timer === undefined && bytes >= giveUp.atBytes) timer = setTimeout(() => req.destroy(new Error('gave up')), giveUp.quietMs);
      });
      res.on('end', () => resolve({ status, bytes, ms: Date.now() - t0 }));
      res.on('error', (e) => resolve({ status, bytes, error: (e as NodeJS.ErrnoException).code ?? e.message, ms: Date.now() - t0 }));
      res.on('aborted', () => resolve({ status, bytes, error: 'aborted', ms: Date.now() - t0 }));
    });
    req.on('error', (e) => resolve({ status, bytes, error: (e as NodeJS.ErrnoException).code ?? e.message, ms: Date.now() - t0 }));
    req.on('close', () => clearTimeout(timer));
  });
}

const exportUrl = (name: string, task?: string) => `${sim.url}/export?session_id=${session}&ref=${ref(name)}${task === undefined ? '' : `&task_id=${task}`}`;

async function settled(task: string): Promise<Record<string, unknown>> {
  return waitFor(async () => {
    const r = (await xapi(sim.url, 'task.get_record', session, task)) as Record<string, unknown>;
    return r.status !== 'pending' && r.status !== 'cancelling' ? r : undefined;
  });
}

describe('RPC faults', () => {
  it('error: fails the named call N times, only for the matching VM', async () => {
    sim.faults.add({ rpc: 'VM.snapshot', vm: 'db1', times: 2, action: { kind: 'error', code: 'SR_BACKEND_FAILURE_44', params: ['', 'There is insufficient space', ''] } });
    expect(await xapiError(sim.url, 'VM.snapshot', session, ref('db1'), 'a')).toEqual(['SR_BACKEND_FAILURE_44', '', 'There is insufficient space', '']);
    const other = (await xapi(sim.url, 'VM.snapshot', session, ref('web1'), 'unaffected')) as string;
    expect(await xapiError(sim.url, 'VM_snapshot', session, ref('db1'), 'b')).toEqual(['SR_BACKEND_FAILURE_44', '', 'There is insufficient space', '']);
    const third = (await xapi(sim.url, 'VM.snapshot', session, ref('db1'), 'c')) as string;
    expect(sim.faults.list()).toEqual([]);
    for (const s of [other, third]) await xapi(sim.url, 'VM.destroy', session, s);
  });

  it('error: matches snapshots of the named VM, and `always` keeps firing until removed', async () => {
    const snap = (await xapi(sim.url, 'VM.snapshot', session, ref('db1'), 'to-destroy')) as string;
    const id = sim.faults.add({ rpc: 'VM.destroy', vm: 'db1', always: true, action: { kind: 'error', code: 'OTHER_OPERATION_IN_PROGRESS', params: ['VM', snap, 'export', 'OpaqueRef:x'] } });
    for (let i = 0; i < 3; i++) expect((await xapiError(sim.url, 'VM.destroy', session, snap))[0]).toBe('OTHER_OPERATION_IN_PROGRESS');
    expect(sim.faults.list()[0]).toMatchObject({ id, fired: 3, remaining: Infinity });
    expect(sim.faults.remove(id)).toBe(true);
    await xapi(sim.url, 'VM.destroy', session, snap);
  });

  it('task-failure: the Async task fails with the error and nothing is created', async () => {
    const before = sim.state.snapshots('db1').length;
    sim.faults.add({ rpc: 'VM.snapshot', action: { kind: 'task-failure', code: 'VDI_IO_ERROR', params: ['Device I/O errors'] } });
    const task = (await xapi(sim.url, 'Async.VM.snapshot', session, ref('db1'), 'x')) as string;
    expect(await settled(task)).toMatchObject({ status: 'failure', error_info: ['VDI_IO_ERROR', 'Device I/O errors'] });
    expect(sim.state.snapshots('db1')).toHaveLength(before);
  });

  it('sr-full: VM.snapshot and VDI.snapshot fail with SR_FULL [requested, maximum]', async () => {
    sim.faults.add({ rpc: 'VM.snapshot', action: { kind: 'sr-full' } });
    const e = await xapiError(sim.url, 'VM.snapshot', session, ref('db1'), 'x');
    expect(e).toEqual(['SR_FULL', String(2 << 20), String(100 * 2 ** 30)]);
    sim.faults.add({ rpc: 'VDI.snapshot', action: { kind: 'sr-full' } });
    const vdi = sim.state.vdis().find((v) => v.name_label === 'db1 0')!.ref;
    expect((await xapiError(sim.url, 'VDI.snapshot', session, vdi, {}))[0]).toBe('SR_FULL');
  });

  it('a full SR refuses a snapshot by itself, and leaves no half snapshot behind', async () => {
    const vdis = sim.state.vdis().length;
    expect((await xapiError(sim.url, 'VM.snapshot', session, ref('cramped'), 'x'))[0]).toBe('SR_FULL');
    expect(sim.state.vdis()).toHaveLength(vdis);
    expect(sim.state.snapshots('cramped')).toEqual([]);
  });

  it('invalidate-sessions: every session is dropped and the call gets SESSION_INVALID', async () => {
    const other = await login(sim.url);
    sim.faults.add({ rpc: 'VM.get_record', action: { kind: 'invalidate-sessions' } });
    expect(await xapiError(sim.url, 'VM.get_record', session, ref('db1'))).toEqual(['SESSION_INVALID', session]);
    expect(sim.state.liveSessions()).toBe(0);
    expect(await xapiError(sim.url, 'VM.get_all', other)).toEqual(['SESSION_INVALID', other]);
    expect(sim.state.sessionStats().invalidated).toBeGreaterThanOrEqual(2);
  });

  it('reset: the connection drops without an answer', async () => {
    sim.faults.add({ rpc: 'pool.get_all', action: { kind: 'reset' } });
    await expect(xapi(sim.url, 'pool.get_all', session)).rejects.toThrow();
    expect(await xapi(sim.url, 'pool.get_all', session)).toHaveLength(1);
  });

  it('http-500: the RPC answers HTTP 500', async () => {
    sim.faults.add({ rpc: 'pool.get_all', action: { kind: 'http-500' } });
    const res = await fetch(`${sim.url}/`, { method: 'POST', body: `<methodCall><methodName>pool.get_all</methodName><params><param><value>${session}</value></param></params></methodCall>` });
    expect(res.status).toBe(500);
  });

  it('stall: a sync call answers late; a stalled Async task can be cancelled', async () => {
    sim.faults.add({ rpc: 'VM.get_name_label', action: { kind: 'stall', ms: 300 } });
    const t0 = Date.now();
    expect(await xapi(sim.url, 'VM.get_name_label', session, ref('db1'))).toBe('db1');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(280);

    sim.faults.add({ rpc: 'VM.snapshot', action: { kind: 'stall' } });
    const task = (await xapi(sim.url, 'Async.VM.snapshot', session, ref('db1'), 'never')) as string;
    await new Promise((r) => setTimeout(r, 100));
    expect(await xapi(sim.url, 'task.get_status', session, task)).toBe('pending');
    await xapi(sim.url, 'task.cancel', session, task);
    expect(await settled(task)).toMatchObject({ status: 'cancelled', error_info: ['TASK_CANCELLED', task] });
    expect(sim.state.snapshots('db1').some((s) => s.name_label === 'never')).toBe(false);
  });
});

describe('HTTP handler faults', () => {
  it('reset after N bytes: the client gets at most N bytes; the task fails', async () => {
    sim.faults.add({ http: 'export', vm: 'medium', action: { kind: 'reset', after_bytes: 3 << 20 } });
    const task = (await xapi(sim.url, 'task.create', session, 'export', '')) as string;
    const got = await transfer(exportUrl('medium', task));
    expect(got.status).toBe(200);
    // The body (close-delimited, as XAPI sends it) stops at N bytes. Whether the client also
    // sees ECONNRESET depends on timing: when the RST arrives while data is still unread,
    // libuv reports a clean end (a partial read and POLLHUP) — which is why a client must
    // judge an export by its task, as vmbackup does, never by how the connection ended.
    expect(got.bytes).toBeLessThanOrEqual(3 << 20);
    expect(await settled(task)).toMatchObject({ status: 'failure', error_info: ['INTERNAL_ERROR', 'Unix.Unix_error(Unix.ECONNRESET, "write", "")'] });
    expect(sim.state.transfers('export').at(-1)).toMatchObject({ status: 'failed', bytes: 3 << 20 });
    // The fault was used up: the next export is whole.
    expect((await transfer(exportUrl('medium'))).error).toBeUndefined();
  });

  it('task-failure after N bytes: cut, task failed with the given error', async () => {
    sim.faults.add({ http: 'export', action: { kind: 'task-failure', code: 'VDI_IO_ERROR', params: ['Device I/O errors'], after_bytes: 1 << 20 } });
    const task = (await xapi(sim.url, 'task.create', session, 'export', '')) as string;
    const got = await transfer(exportUrl('medium', task));
    expect(got.bytes).toBeLessThanOrEqual(1 << 20);
    expect(await settled(task)).toMatchObject({ status: 'failure', error_info: ['VDI_IO_ERROR', 'Device I/O errors'] });
  });

  it('task-failure without after_bytes: the stream completes, then the task fails', async () => {
    sim.faults.add({ http: 'export_raw_vdi', vdi: 'db1 0', action: { kind: 'task-failure', code: 'VDI_IO_ERROR', params: ['late'] } });
    const vdi = sim.state.vdis().find((v) => v.name_label === 'db1 0')!;
    const task = (await xapi(sim.url, 'task.create', session, 'raw', '')) as string;
    const got = await transfer(`${sim.url}/export_raw_vdi?session_id=${session}&vdi=${vdi.ref}&task_id=${task}`);
    expect(got).toMatchObject({ status: 200, bytes: 2 << 20 });
    expect(await settled(task)).toMatchObject({ status: 'failure', error_info: ['VDI_IO_ERROR', 'late'] });
  });

  it('error and http-500: answered 500 before any byte, task failed', async () => {
    sim.faults.add({ http: 'export', action: { kind: 'error', code: 'SR_BACKEND_FAILURE_46', params: ['', 'The VDI is not available', ''] } });
    const task = (await xapi(sim.url, 'task.create', session, 'export', '')) as string;
    expect((await transfer(exportUrl('db1', task))).status).toBe(500);
    expect((await settled(task)).error_info).toEqual(['SR_BACKEND_FAILURE_46', '', 'The VDI is not available', '']);
    sim.faults.add({ http: 'host_backup', action: { kind: 'http-500' } });
    expect((await transfer(`${sim.url}/host_backup?session_id=${session}`)).status).toBe(500);
  });

  it('stall for a while after N bytes, then the rest', async () => {
    sim.faults.add({ http: 'export', vm: 'medium', action: { kind: 'stall', after_bytes: 1 << 20, ms: 400 } });
    const got = await transfer(exportUrl('medium'));
    expect(got.error).toBeUndefined();
    expect(got.bytes).toBeGreaterThan(32 << 20);
    expect(got.ms).toBeGreaterThanOrEqual(380);
  });

  it('stall forever: the reader sees N bytes then nothing; giving up fails the task', async () => {
    sim.faults.add({ http: 'export', vm: 'medium', action: { kind: 'stall', after_bytes: 65536 } });
    const task = (await xapi(sim.url, 'task.create', session, 'export', '')) as string;
    const got = await transfer(exportUrl('medium', task), { atBytes: 65536, quietMs: 500 });
    expect(got.bytes).toBe(65536);
    expect(got.error).toBeDefined();
    expect((await settled(task)).status).toBe('failure');
    await waitFor(() => Object.keys(sim.state.vm('medium').current_operations as object).length === 0, 5000, 'VM unlocked');
  });

  it('slow: the transfer takes as long as its rate says', async () => {
    sim.faults.add({ http: 'export_raw_vdi', action: { kind: 'slow', bytes_per_second: 4 << 20 } });
    const vdi = sim.state.vdis().find((v) => v.name_label === 'db1 0')!;
    const got = await transfer(`${sim.url}/export_raw_vdi?session_id=${session}&vdi=${vdi.ref}`);
    expect(got.bytes).toBe(2 << 20);
    expect(got.ms).toBeGreaterThanOrEqual(450);
  });

  it('corrupt: one byte flipped on the way, the transfer and its task succeed', async () => {
    const vdi = sim.state.vdis().find((v) => v.name_label === 'db1 0')!;
    const url = `${sim.url}/export_raw_vdi?session_id=${session}&vdi=${vdi.ref}&format=raw`;
    const read = () =>
      new Promise<Buffer>((resolve, reject) => {
        http.get(url, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve(Buffer.concat(chunks)));
          res.on('error', reject);
        });
      });
    const clean = await read();
    sim.faults.add({ http: 'export_raw_vdi', action: { kind: 'corrupt', at_byte: 1_000_003 } });
    const bad = await read();
    expect(bad.length).toBe(clean.length);
    const differ = [...bad.keys()].filter((i) => bad[i] !== clean[i]);
    expect(differ).toEqual([1_000_003]);
    expect(bad[1_000_003]).toBe(clean[1_000_003]! ^ 0xff);
  });

  it('invalidate-sessions on a handler: 401 and every session gone', async () => {
    sim.faults.add({ http: 'xmldbdump', action: { kind: 'invalidate-sessions' } });
    expect((await transfer(`${sim.url}/pool/xmldbdump?session_id=${session}`)).status).toBe(401);
    expect(sim.state.liveSessions()).toBe(0);
  });

  it('task cancellation stops an export', async () => {
    sim.faults.add({ http: 'export', vm: 'medium', action: { kind: 'slow', bytes_per_second: 8 << 20 } });
    const task = (await xapi(sim.url, 'task.create', session, 'export', '')) as string;
    const pending = transfer(exportUrl('medium', task));
    await new Promise((r) => setTimeout(r, 200));
    await xapi(sim.url, 'task.cancel', session, task);
    const got = await pending;
    expect(got.bytes).toBeLessThan(32 << 20);
    expect(await settled(task)).toMatchObject({ status: 'cancelled' });
  });
});

describe('the vm filter on every export handler', () => {
  const fail: FaultAction = { kind: 'error', code: 'VDI_IO_ERROR', params: ['injected'] };
  const diskOf = (vm: string) => {
    const vbd = sim.state.records('VBD').find((b) => b.VM === sim.state.vm(vm).ref && b.type === 'Disk')!;
    return vbd.VDI as string;
  };
  /** Each export endpoint, with the thing it exports: the VM, a snapshot of it, or one of their disks. */
  const cases: { name: string; url: () => Promise<string> }[] = [
    { name: '/export of the VM', url: async () => exportUrl('medium') },
    {
      name: '/export of a snapshot of the VM',
      url: async () => `${sim.url}/export?session_id=${session}&ref=${(await xapi(sim.url, 'VM.snapshot', session, ref('medium'), 'filter-snap')) as string}`,
    },
    { name: '/export_metadata of the VM', url: async () => `${sim.url}/export_metadata?session_id=${session}&ref=${ref('medium')}` },
    { name: '/export_raw_vdi of a disk of the VM', url: async () => `${sim.url}/export_raw_vdi?session_id=${session}&vdi=${diskOf('medium')}` },
    {
      name: '/export_raw_vdi of a disk of a VM snapshot',
      url: async () => {
        const snap = (await xapi(sim.url, 'VM.snapshot', session, ref('medium'), 'filter-snap-disk')) as string;
        const vbd = sim.state.records('VBD').find((b) => b.VM === snap && b.type === 'Disk')!;
        return `${sim.url}/export_raw_vdi?session_id=${session}&vdi=${vbd.VDI as string}`;
      },
    },
    {
      name: '/export_raw_vdi of a VDI snapshot (no VBD holds it)',
      url: async () => `${sim.url}/export_raw_vdi?session_id=${session}&vdi=${(await xapi(sim.url, 'VDI.snapshot', session, diskOf('medium'), {})) as string}`,
    },
  ];

  it.each(cases)('$name: a fault for that VM fires, one for another VM does not', async ({ url }) => {
    const target = await url();
    const other = sim.faults.add({ http: 'export', vm: 'db1', action: fail });
    const otherRaw = sim.faults.add({ http: 'export_raw_vdi', vm: 'db1', action: fail });
    const otherMeta = sim.faults.add({ http: 'export_metadata', vm: 'db1', action: fail });
    expect((await transfer(target)).status).toBe(200);
    expect(sim.faults.list().map((f) => [f.id, f.fired])).toEqual([[other, 0], [otherRaw, 0], [otherMeta, 0]]);
    sim.faults.clear();
    const handler = new URL(target).pathname.slice(1) as 'export' | 'export_raw_vdi' | 'export_metadata';
    const id = sim.faults.add({ http: handler, vm: 'medium', times: 2, action: fail });
    expect((await transfer(target)).status).toBe(500);
    expect(sim.faults.list().map((f) => [f.id, f.fired])).toEqual([[id, 1]]);
  });

  it('an RPC on a VDI snapshot matches the VM of the disk it was taken from', async () => {
    const snap = (await xapi(sim.url, 'VDI.snapshot', session, diskOf('medium'), {})) as string;
    sim.faults.add({ rpc: 'VDI.destroy', vm: 'medium', action: fail });
    expect(await xapiError(sim.url, 'VDI.destroy', session, snap)).toEqual(['VDI_IO_ERROR', 'injected']);
    expect(await xapi(sim.url, 'VDI.destroy', session, snap)).toBe('');
  });
});

describe('control endpoint', () => {
  it('adds, lists and removes faults over HTTP, and reports the state', async () => {
    const bad = await fetch(`${sim.url}/_sim/faults`, { method: 'POST', body: JSON.stringify({ rpc: 'VM.snapshot', action: { kind: 'error' } }) });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: string }).error).toMatch(/action\.code/);
    const both = await fetch(`${sim.url}/_sim/faults`, { method: 'POST', body: JSON.stringify({ action: { kind: 'http-500' } }) });
    expect(((await both.json()) as { error: string }).error).toMatch(/exactly one of rpc or http/);
    const ok = await fetch(`${sim.url}/_sim/faults`, { method: 'POST', body: JSON.stringify([{ rpc: 'VM.get_record', action: { kind: 'error', code: 'X' } }, { http: 'export', action: { kind: 'http-500' } }]) });
    expect(ok.status).toBe(201);
    const { ids } = (await ok.json()) as { ids: string[] };
    expect(ids).toHaveLength(2);
    expect(((await (await fetch(`${sim.url}/_sim/faults`)).json()) as unknown[]).length).toBe(2);
    expect(await xapiError(sim.url, 'VM.get_record', session, ref('db1'))).toEqual(['X']);
    expect((await fetch(`${sim.url}/_sim/faults/${ids[1]}`, { method: 'DELETE' })).status).toBe(200);
    expect((await fetch(`${sim.url}/_sim/faults`, { method: 'DELETE' })).status).toBe(200);
    expect(sim.faults.list()).toEqual([]);
    const state = (await (await fetch(`${sim.url}/_sim/state`)).json()) as { sessions: { live: number }; vms: { name_label: string }[] };
    expect(state.sessions.live).toBe(sim.state.liveSessions());
    expect(state.vms.map((v) => v.name_label)).toContain('web1');
    const inval = (await (await fetch(`${sim.url}/_sim/sessions/invalidate`, { method: 'POST' })).json()) as { invalidated: number };
    expect(inval.invalidated).toBeGreaterThanOrEqual(1);
    expect(sim.state.liveSessions()).toBe(0);
  });

  it('decodes the task result of an Async call made through a fault-free path', async () => {
    const task = (await xapi(sim.url, 'Async.VM.snapshot', session, ref('db1'), 'ok')) as string;
    const rec = await settled(task);
    const snap = decodeValue(rec.result as string) as string;
    await xapi(sim.url, 'VM.destroy', session, snap);
  });
});
