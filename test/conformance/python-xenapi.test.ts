import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { smallPool } from '../sim/fixtures.js';
import { startSimulator, type Simulator } from '../sim/server.js';

const run = promisify(execFile);

/** Debian's python3-os-xenapi: the official XenAPI.py, stdlib only. */
const XENAPI_DIR = '/usr/lib/python3/dist-packages/os_xenapi/client';

async function python(script: string, ...args: string[]): Promise<unknown> {
  const { stdout } = await run('/usr/bin/python3', ['-c', `import sys, json\nsys.path.insert(0, ${JSON.stringify(XENAPI_DIR)})\nimport XenAPI\n${script}`, ...args], { timeout: 30_000 });
  return JSON.parse(stdout);
}

let sim: Simulator;
beforeAll(async () => {
  sim = await startSimulator({ pool: smallPool() });
});
afterAll(async () => {
  await sim.close();
});

describe("Python's official XenAPI.py", () => {
  it('logs in, lists VMs, snapshots one, destroys the snapshot and its disks, logs out', async () => {
    const result = (await python(
      `
s = XenAPI.Session(sys.argv[1])
s.xenapi.login_with_password('root', 'secret', '2.20', 'python-test')
out = {'api_version': s.API_version}
records = s.xenapi.VM.get_all_records()
plain = [(r['name_label'], ref) for ref, r in records.items() if not r['is_a_template'] and not r['is_control_domain']]
out['vms'] = sorted(name for name, _ in plain)
vms = dict(plain)
vm = vms['web1']
out['memory'] = records[vm]['memory_static_max']
snap = s.xenapi.VM.snapshot(vm, 'VMBACKUP_web1')
s.xenapi.VM.set_is_a_template(snap, False)
snap_record = s.xenapi.VM.get_record(snap)
out['snapshot'] = {k: snap_record[k] for k in ('name_label', 'is_a_snapshot', 'is_a_template', 'power_state')}
out['snapshot_of'] = snap_record['snapshot_of'] == vm
vdis = []
for vbd in snap_record['VBDs']:
    v = s.xenapi.VBD.get_record(vbd)
    if v['type'] == 'Disk':
        vdis.append(v['VDI'])
out['disks'] = len(vdis)
s.xenapi.VM.destroy(snap)
for vdi in vdis:
    s.xenapi.VDI.destroy(vdi)
try:
    s.xenapi.VM.get_record(snap)
except XenAPI.Failure as e:
    out['after_destroy'] = e.details
out['os'] = s.xenapi.VM_guest_metrics.get_os_version(s.xenapi.VM.get_guest_metrics(vm))['distro']
s.xenapi.session.logout()
print(json.dumps(out))
`,
      sim.url,
    )) as Record<string, unknown>;
    expect(result.api_version).toBe('2.20');
    expect(result.vms).toEqual(['Café ünïcode ✓', 'db1', 'local-b', 'locked', 'twin', 'twin', 'web1'].sort());
    expect(result.memory).toBe('1073741824');
    expect(result.snapshot).toEqual({ name_label: 'VMBACKUP_web1', is_a_snapshot: true, is_a_template: false, power_state: 'Halted' });
    expect(result.snapshot_of).toBe(true);
    expect(result.disks).toBe(2);
    expect((result.after_destroy as string[])[0]).toBe('HANDLE_INVALID');
    expect(result.os).toBe('debian');
    expect(sim.state.snapshots('web1')).toEqual([]);
    expect(sim.state.liveSessions()).toBe(0);
    expect(sim.state.sessionStats().loggedOut).toBeGreaterThanOrEqual(1);
  });

  it('raises Failure SESSION_AUTHENTICATION_FAILED for bad credentials', async () => {
    const details = await python(
      `
s = XenAPI.Session(sys.argv[1])
try:
    s.xenapi.login_with_password('root', 'wrong')
    print(json.dumps('logged in'))
except XenAPI.Failure as e:
    print(json.dumps(e.details))
`,
      sim.url,
    );
    expect(details).toEqual(['SESSION_AUTHENTICATION_FAILED', 'root', 'Authentication failure']);
  });

  it('gets HOST_IS_SLAVE from a pool member, over http://host/ (POST /)', async () => {
    const details = await python(
      `
s = XenAPI.Session(sys.argv[1] + '/')
try:
    s.xenapi.login_with_password('root', 'secret')
    print(json.dumps('logged in'))
except XenAPI.Failure as e:
    print(json.dumps(e.details))
`,
      sim.hosts[1]!.url,
    );
    expect(details).toEqual(['HOST_IS_SLAVE', sim.hosts[0]!.address]);
  });

  it('refuses a non-running VM shutdown with VM_BAD_POWER_STATE', async () => {
    const details = await python(
      `
s = XenAPI.Session(sys.argv[1])
s.xenapi.login_with_password('root', 'secret')
try:
    s.xenapi.VM.clean_shutdown(s.xenapi.VM.get_by_name_label('db1')[0])
    out = 'ok'
except XenAPI.Failure as e:
    out = e.details
s.xenapi.session.logout()
print(json.dumps(out))
`,
      sim.url,
    );
    expect(details).toEqual(['VM_BAD_POWER_STATE', sim.state.vm('db1').ref, 'running', 'halted']);
  });
});
