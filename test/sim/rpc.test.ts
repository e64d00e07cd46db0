import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeValue } from '../../runtime/formats/xmlrpc.js';
import { smallPool } from './fixtures.js';
import { startSimulator, type Simulator } from './server.js';
import { jsonCall, login, waitFor, xapi, xapiError, xmlCall } from './test-helpers.js';

let sim: Simulator;
let url: string;
let session: string;

beforeAll(async () => {
  sim = await startSimulator({ pool: smallPool() });
  url = sim.url;
  session = await login(url);
});
afterAll(async () => {
  await sim.close();
});

const vm = (name: string) => sim.state.vm(name).ref;

describe('wire protocol', () => {
  it('answers XML-RPC on /, /RPC2 and /xmlrpc with text/xml and a Status/Value struct', async () => {
    for (const path of ['/', '/RPC2', '/xmlrpc']) {
      const r = await xmlCall(url, 'pool.get_all', [session], path);
      expect(r.status).toBe(200);
      expect(r.contentType).toBe('text/xml');
      expect(r.body.startsWith('<?xml version="1.0"?><methodResponse><params><param><value><struct><member><name>Status</name><value>Success</value>')).toBe(true);
      expect(r.value).toEqual({ Status: 'Success', Value: [expect.stringMatching(/^OpaqueRef:/)] });
    }
  });

  it('returns system.listMethods as a bare array listing every get_all_records', async () => {
    const r = await xmlCall(url, 'system.listMethods', []);
    expect(r.body).toMatch(/^<\?xml version="1.0"\?><methodResponse><params><param><value><array>/);
    const methods = r.value as string[];
    for (const cls of ['pool', 'host', 'SR', 'VM', 'VBD', 'VDI', 'VIF', 'network', 'task', 'VM_guest_metrics']) {
      expect(methods).toContain(`${cls}.get_all_records`);
    }
    expect(methods).toContain('VM.snapshot');
    expect(methods).not.toContain('session.get_all_records');
    const json = await jsonCall(url, 'system.listMethods', []);
    expect((json.value as { result: string[] }).result).toEqual(methods);
  });

  it('answers JSON-RPC 2.0 with application/json, result without error, error with code/message/data', async () => {
    const ok = await jsonCall(url, 'VM.get_name_label', [session, vm('web1')]);
    expect(ok.contentType).toBe('application/json');
    expect(ok.value).toEqual({ jsonrpc: '2.0', result: 'web1', id: 7 });
    const bad = await jsonCall(url, 'VM.get_name_label', [session, 'OpaqueRef:nope']);
    expect(bad.value).toEqual({ jsonrpc: '2.0', error: { code: 1, message: 'HANDLE_INVALID', data: ['VM', 'OpaqueRef:nope'] }, id: 7 });
    const v1 = await jsonCall(url, 'VM.get_name_label', [session, 'OpaqueRef:nope'], '1.0');
    expect(v1.value).toEqual({ result: null, error: ['HANDLE_INVALID', 'VM', 'OpaqueRef:nope'], id: 'x' });
  });

  it('types values as XAPI does: int64 strings in XML-RPC, numbers in JSON, doubles, booleans, dates', async () => {
    const xml = await xmlCall(url, 'VM.get_record', [session, vm('web1')]);
    expect(xml.body).toContain('<member><name>memory_static_max</name><value>1073741824</value></member>');
    expect(xml.body).toContain('<member><name>HVM_shadow_multiplier</name><value><double>1</double></value></member>');
    expect(xml.body).toContain('<member><name>is_a_template</name><value><boolean>0</boolean></value></member>');
    expect(xml.body).toContain('<member><name>snapshot_time</name><value><dateTime.iso8601>19700101T00:00:00Z</dateTime.iso8601></value></member>');
    const json = (await jsonCall(url, 'VM.get_record', [session, vm('web1')])).value as { result: Record<string, unknown> };
    expect(json.result.memory_static_max).toBe(1073741824);
    expect(json.result.HVM_shadow_multiplier).toBe(1);
    expect(json.result.snapshot_time).toBe('19700101T00:00:00Z');
    expect(json.result.other_config).toEqual({ base_template_name: 'Debian Bookworm 12', 'xo:owner': 'ops' });
  });

  it('accepts Class_method and untyped request values', async () => {
    expect(await xapi(url, 'VM_get_name_label', session, vm('db1'))).toBe('db1');
    expect(await xapi(url, 'VM_guest_metrics_get_all', session)).toHaveLength(sim.state.records('VM_guest_metrics').length);
    const body = `<?xml version="1.0"?><methodCall><methodName>VM.get_power_state</methodName><params><param><value>${session}</value></param><param><value>${vm('web1')}</value></param></params></methodCall>`;
    const res = await fetch(`${url}/`, { method: 'POST', body });
    expect(decodeValue((await res.text()).replace(/^.*?<param>|<\/param>.*$/g, ''))).toEqual({ Status: 'Success', Value: 'Running' });
  });

  it('answers malformed requests with HTTP 500 text/html', async () => {
    const xml = await fetch(`${url}/`, { method: 'POST', body: '<methodCall><methodName>x</methodName>' });
    expect(xml.status).toBe(500);
    expect(xml.headers.get('content-type')).toBe('text/html');
    const json = await fetch(`${url}/jsonrpc`, { method: 'POST', body: '{"jsonrpc":"2.0","method":"session.login_with_password","id":0,' });
    expect(json.status).toBe(500);
  });
});

describe('errors', () => {
  it.each([
    ['unknown method', 'VM.frobnicate', () => [session], () => ['MESSAGE_METHOD_UNKNOWN', 'VM.frobnicate']],
    ['Async of a getter', 'Async.VM.get_name_label', () => [session, vm('web1')], () => ['Fault', 'No async mode for this operation (rpc: VM.get_name_label)']],
    ['too few arguments', 'VM.get_record', () => [session], () => ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.get_record', '1', '0']],
    ['too many arguments', 'VM.get_record', () => [session, vm('web1'), 'x'], () => ['MESSAGE_PARAMETER_COUNT_MISMATCH', 'VM.get_record', '1', '2']],
    ['stale session', 'VM.get_all', () => ['OpaqueRef:dead'], () => ['SESSION_INVALID', 'OpaqueRef:dead']],
    ['bad reference', 'VM.get_record', () => [session, 'OpaqueRef:nope'], () => ['HANDLE_INVALID', 'VM', 'OpaqueRef:nope']],
    ['bad uuid', 'VDI.get_by_uuid', () => [session, '00000000-0000-0000-0000-000000000000'], () => ['UUID_INVALID', 'VDI', '00000000-0000-0000-0000-000000000000']],
    ['destroy a running VM', 'VM.destroy', () => [session, vm('web1')], () => ['VM_BAD_POWER_STATE', vm('web1'), 'halted, suspended', 'running']],
    ['blocked operation', 'VM.destroy', () => [session, vm('locked')], () => ['OPERATION_BLOCKED', vm('locked'), 'protected']],
    ['start a running VM', 'VM.start', () => [session, vm('web1'), false, false], () => ['VM_BAD_POWER_STATE', vm('web1'), 'halted', 'running']],
    ['operation on dom0', 'VM.snapshot', () => [session, sim.state.vms().find((v) => v.is_control_domain === true)!.ref, 'x'], () => ['OPERATION_NOT_ALLOWED', 'Operations on domain 0 are not allowed']],
    ['destroy an attached VDI', 'VDI.destroy', () => [session, sim.state.vdis().find((v) => v.name_label === 'web1 0')!.ref], () => ['VDI_IN_USE', sim.state.vdis().find((v) => v.name_label === 'web1 0')!.ref, 'destroy']],
    ['wrong argument type', 'VM.set_name_label', () => [session, vm('db1'), 5], () => ['FIELD_TYPE_ERROR', 'value']],
    ['removed method', 'VM.snapshot_with_quiesce', () => [session, vm('web1'), 'x'], () => ['MESSAGE_REMOVED']],
    ['bad event token', 'event.from', () => [session, ['vm'], 'garbage', 1.0], () => ['EVENT_FROM_TOKEN_PARSE_FAILURE', 'garbage']],
  ] as [string, string, () => unknown[], () => string[]][])('%s', async (_label, method, args, expected) => {
    expect(await xapiError(url, method, ...(args() as never[]))).toEqual(expected());
  });

  it('refuses bad credentials with SESSION_AUTHENTICATION_FAILED [user, message]', async () => {
    expect(await xapiError(url, 'session.login_with_password', 'root', 'wrong')).toEqual(['SESSION_AUTHENTICATION_FAILED', 'root', 'Authentication failure']);
    expect(await xapiError(url, 'session.login_with_password', 'root')).toEqual(['MESSAGE_PARAMETER_COUNT_MISMATCH', 'session.login_with_password', '2', '1']);
  });

  it('accepts login with 2 or 4 arguments and counts sessions', async () => {
    const before = sim.state.liveSessions();
    const s2 = await login(url);
    const s4 = (await xapi(url, 'session.login_with_password', 'root', 'secret', '2.20', 'vmbackup-test')) as string;
    expect(sim.state.liveSessions()).toBe(before + 2);
    expect(sim.state.sessions().find((s) => s.ref === s4)?.originator).toBe('vmbackup-test');
    expect(await xapi(url, 'session.get_this_host', s2, s2)).toBe(sim.hosts[0]!.ref);
    await xapi(url, 'session.logout', s2);
    await xapi(url, 'session.logout', s4);
    expect(sim.state.liveSessions()).toBe(before);
    expect(await xapiError(url, 'session.logout', s2)).toEqual(['SESSION_INVALID', s2]);
  });

  it('answers HOST_IS_SLAVE [master address] on a pool member', async () => {
    expect(await xapiError(sim.hosts[1]!.url, 'session.login_with_password', 'root', 'secret')).toEqual(['HOST_IS_SLAVE', '127.0.0.1']);
    const json = await jsonCall(sim.hosts[1]!.url, 'session.login_with_password', ['root', 'secret']);
    expect((json.value as { error: unknown }).error).toEqual({ code: 1, message: 'HOST_IS_SLAVE', data: ['127.0.0.1'] });
  });
});

describe('fields, setters and map editors', () => {
  it('edits other_config, blocked_operations and tags, and refuses a duplicate key', async () => {
    const db1 = vm('db1');
    await xapi(url, 'VM.add_to_other_config', session, db1, 'k', 'v');
    expect(await xapiError(url, 'VM.add_to_other_config', session, db1, 'k', 'w')).toEqual(['MAP_DUPLICATE_KEY', 'VM', 'other_config', db1, 'k']);
    await xapi(url, 'VM.remove_from_other_config', session, db1, 'k');
    await xapi(url, 'VM.remove_from_other_config', session, db1, 'absent');
    await xapi(url, 'VM.add_to_blocked_operations', session, db1, 'start', 'maintenance');
    // Two vmbackup runs block one halted VM at once: the second meets the first's block so.
    expect(await xapiError(url, 'VM.add_to_blocked_operations', session, db1, 'start', 'other')).toEqual(['MAP_DUPLICATE_KEY', 'VM', 'blocked_operations', db1, 'start']);
    await xapi(url, 'VM.remove_from_blocked_operations', session, db1, 'start_on');
    expect(await xapiError(url, 'VM.start', session, db1, false, false)).toEqual(['OPERATION_BLOCKED', db1, 'maintenance']);
    await xapi(url, 'VM.set_blocked_operations', session, db1, {});
    await xapi(url, 'VM.add_tags', session, db1, 'a');
    await xapi(url, 'VM.add_tags', session, db1, 'a');
    expect(await xapi(url, 'VM.get_tags', session, db1)).toEqual(['a']);
    await xapi(url, 'VM.remove_tags', session, db1, 'a');
    await xapi(url, 'VM.set_name_description', session, db1, 'desc');
    expect(sim.state.vm('db1').name_description).toBe('desc');
    expect(await xapi(url, 'VM.get_by_name_label', session, 'twin')).toHaveLength(2);
  });

  it('power operations change power state, residence and attachment', async () => {
    const db1 = vm('db1');
    await xapi(url, 'VM.start', session, db1, false, false);
    expect(sim.state.vm('db1')).toMatchObject({ power_state: 'Running', resident_on: sim.hosts[0]!.ref });
    const vbds = sim.state.records('VBD').filter((b) => b.VM === db1);
    expect(vbds.filter((b) => b.type === 'Disk').every((b) => b.currently_attached === true)).toBe(true);
    await xapi(url, 'VM.clean_shutdown', session, db1);
    expect(sim.state.vm('db1')).toMatchObject({ power_state: 'Halted', resident_on: 'OpaqueRef:NULL' });
    expect(await xapiError(url, 'VM.clean_shutdown', session, db1)).toEqual(['VM_BAD_POWER_STATE', db1, 'running', 'halted']);
  });
});

describe('VM.snapshot and destroy', () => {
  it('makes a halted template snapshot with its own VDI snapshots, VBDs and VIFs', async () => {
    const web1 = vm('web1');
    const srBefore = sim.state.records('SR').find((s) => s.name_label === 'NFS storage')!.physical_utilisation as number;
    const snap = (await xapi(url, 'VM.snapshot', session, web1, 'backup-1')) as string;
    const s = sim.state.record('VM', snap)!;
    expect(s).toMatchObject({
      name_label: 'backup-1',
      is_a_snapshot: true,
      is_a_template: true,
      power_state: 'Halted',
      snapshot_of: web1,
      other_config: sim.state.vm('web1').other_config,
      tags: ['prod'],
      blocked_operations: {},
      resident_on: 'OpaqueRef:NULL',
    });
    expect(s.snapshot_info).toEqual({ 'power-state-at-snapshot': 'Running', 'disk-snapshot-type': 'crash_consistent' });
    expect(sim.state.vm('web1').snapshots).toContain(snap);
    expect(sim.state.vm('web1').parent).toBe(snap);
    const vbds = (s.VBDs as string[]).map((r) => sim.state.record('VBD', r)!);
    expect(vbds.map((b) => [b.device, b.type])).toEqual([['xvda', 'Disk'], ['xvdb', 'Disk'], ['xvdd', 'CD']]);
    const original = sim.state.vm('web1').VBDs as string[];
    for (const [i, b] of vbds.entries()) {
      const source = sim.state.record('VBD', original[i]!)!;
      if (b.type === 'CD') {
        expect(b.VDI).toBe(source.VDI);
        continue;
      }
      const vdi = sim.state.record('VDI', b.VDI as string)!;
      expect(vdi).toMatchObject({ is_a_snapshot: true, snapshot_of: source.VDI, name_label: sim.state.record('VDI', source.VDI as string)!.name_label });
      expect(b.other_config).toMatchObject({ owner: '' });
    }
    const vifs = (s.VIFs as string[]).map((r) => sim.state.record('VIF', r)!);
    expect(vifs.map((v) => v.MAC)).toEqual(['de:ad:be:ef:00:01']);
    const srAfter = sim.state.records('SR').find((x) => x.name_label === 'NFS storage')!.physical_utilisation as number;
    expect(srAfter).toBeGreaterThan(srBefore);

    // VM.destroy removes the record, VBDs and VIFs, never the disks.
    const snapVdis = vbds.filter((b) => b.type === 'Disk').map((b) => b.VDI as string);
    await xapi(url, 'VM.destroy', session, snap);
    expect(sim.state.record('VM', snap)).toBeUndefined();
    expect(sim.state.vm('web1').parent).toBe('OpaqueRef:NULL');
    for (const vdi of snapVdis) {
      expect(sim.state.record('VDI', vdi)).toBeDefined();
      await xapi(url, 'VDI.destroy', session, vdi);
      expect(sim.state.record('VDI', vdi)).toBeUndefined();
    }
    expect(sim.state.records('SR').find((x) => x.name_label === 'NFS storage')!.physical_utilisation).toBe(srBefore);
  });

  it('skips ignore_vdis, and refuses to snapshot a snapshot or a template', async () => {
    const web1 = vm('web1');
    const xvdb = sim.state.vdis().find((v) => v.name_label === 'web1 1')!.ref;
    const snap = (await xapi(url, 'VM.snapshot', session, web1, 'partial', [xvdb])) as string;
    expect((sim.state.record('VM', snap)!.VBDs as string[]).map((b) => sim.state.record('VBD', b)!.device)).toEqual(['xvda', 'xvdd']);
    expect(await xapiError(url, 'VM.snapshot', session, snap, 'again')).toEqual(['VM_IS_SNAPSHOT', snap, 'snapshot']);
    const template = sim.state.vms().find((v) => v.name_label === 'Other install media')!.ref;
    expect(await xapiError(url, 'VM.snapshot', session, template, 'x')).toEqual(['VM_IS_TEMPLATE', template, 'snapshot']);
    await xapi(url, 'VM.set_is_a_template', session, snap, false);
    expect(sim.state.record('VM', snap)!.is_a_template).toBe(false);
    await xapi(url, 'VM.destroy', session, snap);
  });

  it('VDI.snapshot makes a snapshot VDI with the same bytes', async () => {
    const vdi = sim.state.vdis().find((v) => v.name_label === 'web1 0')!;
    const snap = (await xapi(url, 'VDI.snapshot', session, vdi.ref, {})) as string;
    expect(sim.state.record('VDI', snap)).toMatchObject({ snapshot_of: vdi.ref, is_a_snapshot: true, virtual_size: vdi.virtual_size });
    const a = await sim.state.disk(vdi.ref).read(0, 1 << 20);
    const b = await sim.state.disk(snap).read(0, 1 << 20);
    expect(Buffer.compare(a!, b!)).toBe(0);
    await xapi(url, 'VDI.destroy', session, snap);
  });
});

describe('tasks', () => {
  it('Async calls return a task whose result is an XML-RPC value', async () => {
    const task = (await xapi(url, 'Async.VM.snapshot', session, vm('db1'), 'async-snap')) as string;
    expect(task).toMatch(/^OpaqueRef:/);
    const record = await waitFor(async () => {
      const r = (await xapi(url, 'task.get_record', session, task)) as Record<string, unknown>;
      return r.status !== 'pending' ? r : undefined;
    });
    expect(record.status).toBe('success');
    expect(record.progress).toBe(1);
    expect(record.name_label).toBe('Async.VM.snapshot');
    expect(record.result).toMatch(/^<value>OpaqueRef:[^<]+<\/value>$/);
    const snap = decodeValue(record.result as string) as string;
    expect(sim.state.record('VM', snap)?.name_label).toBe('async-snap');
    const failed = (await xapi(url, 'Async.VM.destroy', session, vm('web1'))) as string;
    const f = await waitFor(async () => {
      const r = (await xapi(url, 'task.get_record', session, failed)) as Record<string, unknown>;
      return r.status !== 'pending' ? r : undefined;
    });
    expect(f).toMatchObject({ status: 'failure', error_info: ['VM_BAD_POWER_STATE', vm('web1'), 'halted, suspended', 'running'] });
    await xapi(url, 'task.destroy', session, failed);
    await xapi(url, 'task.destroy', session, task);
    await xapi(url, 'VM.destroy', session, snap);
  });

  it('task.create / cancel / destroy', async () => {
    const task = (await xapi(url, 'task.create', session, 'mine', 'a task')) as string;
    expect(await xapi(url, 'task.get_status', session, task)).toBe('pending');
    expect(await xapi(url, 'task.get_allowed_operations', session, task)).toEqual(['cancel']);
    await xapi(url, 'task.cancel', session, task);
    expect(await xapi(url, 'task.get_status', session, task)).toBe('cancelling');
    await xapi(url, 'task.destroy', session, task);
    expect(await xapiError(url, 'task.get_status', session, task)).toEqual(['HANDLE_INVALID', 'task', task]);
  });
});

describe('events', () => {
  type From = { events: { id: string; class: string; operation: string; ref: string; snapshot?: Record<string, unknown> }[]; valid_ref_counts: Record<string, unknown>; token: string };

  it('returns everything as add for an empty token, with valid_ref_counts and a token', async () => {
    const r = (await xapi(url, 'event.from', session, ['vm', 'pool'], '', 0.0)) as From;
    expect(r.token).toMatch(/^\d{20},\d{20}$/);
    const vms = r.events.filter((e) => e.class === 'vm');
    expect(vms.length).toBe(sim.state.vms().length);
    expect(vms.every((e) => e.operation === 'add' && e.snapshot !== undefined)).toBe(true);
    expect(r.events.some((e) => e.class === 'pool')).toBe(true);
    expect(r.events.some((e) => e.class === 'vdi')).toBe(false);
    expect(r.valid_ref_counts.vm).toBe(sim.state.vms().length);
    expect(r.valid_ref_counts.task).toBe(sim.state.tasks().length);
  });

  it('blocks until a change, reports mod for other_config edits, filters by object, times out empty', async () => {
    const { token } = (await xapi(url, 'event.from', session, ['*'], '', 0.0)) as From;
    const started = Date.now();
    const pending = xapi(url, 'event.from', session, [`vm/${vm('db1')}`], token, 10.0) as Promise<From>;
    await new Promise((r) => setTimeout(r, 200));
    await xapi(url, 'VM.add_to_other_config', session, vm('web1'), 'ignored', 'x');
    await xapi(url, 'VM.add_to_other_config', session, vm('db1'), 'xo:barrier:1', 'x');
    const r = await pending;
    expect(Date.now() - started).toBeGreaterThanOrEqual(200);
    expect(r.events.map((e) => [e.class, e.operation, e.ref])).toEqual([['vm', 'mod', vm('db1')]]);
    expect((r.events[0]!.snapshot!.other_config as Record<string, string>)['xo:barrier:1']).toBe('x');
    const t0 = Date.now();
    const empty = (await xapi(url, 'event.from', session, ['vm'], r.token, 0.3)) as From;
    expect(empty.events).toEqual([]);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    await xapi(url, 'VM.remove_from_other_config', session, vm('web1'), 'ignored');
    await xapi(url, 'VM.remove_from_other_config', session, vm('db1'), 'xo:barrier:1');
  });

  it('reports del without snapshot, and event.inject returns a token just before a touch', async () => {
    const task = (await xapi(url, 'task.create', session, 'tmp', '')) as string;
    const { token } = (await xapi(url, 'event.from', session, ['task'], '', 0.0)) as From;
    await xapi(url, 'task.destroy', session, task);
    const r = (await xapi(url, 'event.from', session, ['task'], token, 1.0)) as From;
    expect(r.events).toEqual([{ id: expect.any(String), timestamp: expect.any(String), class: 'task', operation: 'del', ref: task }]);
    const pool = sim.state.records('pool')[0]!.ref;
    const injected = (await xapi(url, 'event.inject', session, 'pool', pool)) as string;
    const after = (await xapi(url, 'event.from', session, ['pool'], injected, 1.0)) as From;
    expect(after.events.map((e) => [e.class, e.operation])).toEqual([['pool', 'mod']]);
    expect(await xapiError(url, 'event.inject', session, 'pool', 'OpaqueRef:x')).toEqual(['HANDLE_INVALID', 'pool', 'OpaqueRef:x']);
  });

  it('wakes a blocked event.from with SESSION_INVALID when its session ends', async () => {
    const other = await login(url);
    const { token } = (await xapi(url, 'event.from', other, ['vm'], '', 0.0)) as From;
    const pending = xapiError(url, 'event.from', other, ['vm'], token, 30.0);
    await new Promise((r) => setTimeout(r, 100));
    await xapi(url, 'session.logout', other);
    expect(await pending).toEqual(['SESSION_INVALID', other]);
  });
});

describe('bind', () => {
  it('serves the hosts on the given addresses, which the pool reports', async () => {
    const other = await startSimulator({ pool: smallPool(), bind: ['127.0.0.5', '127.0.0.6'] });
    try {
      expect(other.hosts.map((h) => h.address)).toEqual(['127.0.0.5', '127.0.0.6']);
      expect(other.url).toBe(`http://127.0.0.5:${other.port}`);
      expect(await xapiError(other.hosts[1]!.url, 'session.login_with_password', 'root', 'secret')).toEqual(['HOST_IS_SLAVE', '127.0.0.5']);
      const s = await login(other.url);
      expect(await xapi(other.url, 'host.get_address', s, other.hosts[1]!.ref)).toBe('127.0.0.6');
    } finally {
      await other.close();
    }
  });
});

describe('inspection', () => {
  it('counts mutations of pool objects apart from sessions, tasks and event.inject', async () => {
    const before = sim.state.mutations();
    const generation = sim.state.generation();
    const s = await login(url);
    const task = (await xapi(url, 'task.create', s, 't', '')) as string;
    await xapi(url, 'event.inject', s, 'pool', sim.state.records('pool')[0]!.ref);
    await xapi(url, 'VM.get_all_records', s);
    await xapi(url, 'task.destroy', s, task);
    await xapi(url, 'session.logout', s);
    expect(sim.state.mutations()).toBe(before);
    expect(sim.state.generation()).toBeGreaterThan(generation);
    await xapi(url, 'VM.set_name_description', session, vm('db1'), 'changed');
    expect(sim.state.mutations()).toBe(before + 1);
  });
});
