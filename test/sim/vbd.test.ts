import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { XapiClient } from '../../runtime/xapi/client.js';
import type { PoolSpecInput } from './pool-spec.js';
import { startSimulator, type Simulator } from './server.js';

/**
 * Giving a VM a disk, as xapi_vbd.ml does it: VM.get_allowed_VBD_devices, VBD.create,
 * VBD.plug / unplug / destroy, through vmbackup's client (the real xen-api client underneath).
 */

const pool: PoolSpecInput = {
  credentials: { user: 'root', password: 'secret' },
  hosts: [{ name_label: 'h1' }],
  srs: [{ name_label: 'sr', size_gib: 10, used_gib: 1 }],
  vms: [
    { name_label: 'app', power_state: 'Running', disks: [{ device: 'xvda', size_mib: 1, fill: 'zero' }, { device: 'xvdb', size_mib: 1, fill: 'zero' }], vifs: [], cd: true },
    { name_label: 'idle', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 1, fill: 'zero' }], vifs: [] },
    { name_label: 'no-tools', power_state: 'Running', disks: [], vifs: [], os_version: null },
    { name_label: 'pv', power_state: 'Running', disks: [], vifs: [], os_version: null, domain_type: 'pv' },
  ],
};

let sim: Simulator;
let xapi: XapiClient;
beforeAll(async () => {
  sim = await startSimulator({ pool });
  xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'secret' });
});
afterAll(async () => {
  await xapi.close();
  await sim.close();
});

const vm = (name: string) => sim.state.vm(name).ref;
const srRef = () => sim.state.records('SR').find((s) => s.name_label === 'sr')!.ref;
const vbd = (ref: string) => sim.state.record('VBD', ref)!;

/** A new empty VDI on the SR. */
async function newVdi(fields: Record<string, unknown> = {}): Promise<string> {
  return xapi.call<string>('VDI.create', { name_label: 'scratch', name_description: '', SR: srRef(), virtual_size: 1 << 20, type: 'user', sharable: false, read_only: false, other_config: {}, ...fields });
}

/** The XAPI error of a call that must fail: [code, ...params]. */
async function refusal(call: Promise<unknown>): Promise<string[]> {
  const error = await call.then(
    () => undefined,
    (e: unknown) => e as { data?: { xapiCode?: string; params?: string[] } },
  );
  if (error === undefined) throw new Error('the call succeeded');
  return [error.data!.xapiCode!, ...error.data!.params!];
}

/** Cleans up what a test attached: unplug, destroy the VBDs it made, and their VDIs. */
const made: string[] = [];
afterEach(async () => {
  for (const ref of made.splice(0)) {
    const r = sim.state.record('VBD', ref);
    if (r === undefined) continue;
    if (r.currently_attached === true) await xapi.unplugVbd(ref);
    await xapi.destroyVbd(ref);
    await xapi.call('VDI.destroy', r.VDI);
  }
});

describe('VM.get_allowed_VBD_devices', () => {
  it('lists the disk numbers 0-254 that no VBD of the VM names by device or userdevice', async () => {
    // app: xvda (0), xvdb (1), an empty CD drive on 3.
    const app = await xapi.allowedVbdDevices(vm('app'));
    expect(app.slice(0, 3)).toEqual(['2', '4', '5']);
    expect(app).toHaveLength(255 - 3);
    expect(app.at(-1)).toBe('254');
    expect(await xapi.allowedVbdDevices(vm('no-tools'))).toHaveLength(255);
    // A PV control domain has one more (0-255).
    const dom0 = sim.state.vms().find((v) => v.is_control_domain === true)!;
    expect(await xapi.allowedVbdDevices(dom0.ref)).toHaveLength(256);
  });
});

describe('VBD.create', () => {
  it('makes an unplugged VBD with the record fields XAPI gives it, on a halted VM; VM.start plugs it', async () => {
    const vdi = await newVdi();
    const ref = await xapi.createVbd({ vm: vm('idle'), vdi, userdevice: '1', otherConfig: { owner: '' } });
    made.push(ref);
    expect(vbd(ref)).toMatchObject({
      VM: vm('idle'),
      VDI: vdi,
      userdevice: '1',
      device: '',
      bootable: false,
      mode: 'RW',
      type: 'Disk',
      unpluggable: true,
      empty: false,
      currently_attached: false,
      other_config: { owner: '' },
      qos_algorithm_type: '',
      qos_algorithm_params: {},
    });
    expect(sim.state.record('VM', vm('idle'))!.VBDs).toContain(ref);
    expect(sim.state.record('VDI', vdi)!.VBDs).toEqual([ref]);
    expect(await xapi.allowedVbdDevices(vm('idle'))).not.toContain('1');
    // Halted: VBD.plug is refused as XAPI refuses it; starting the VM attaches the disk.
    expect(await refusal(xapi.plugVbd(ref))).toEqual(['VM_BAD_POWER_STATE', vm('idle'), 'running', 'halted']);
    await xapi.call('VM.start', vm('idle'), false, false);
    expect(vbd(ref).currently_attached).toBe(true);
    await xapi.call('VM.hard_shutdown', vm('idle'));
    expect(vbd(ref).currently_attached).toBe(false);
  });

  it('refuses a device already in use, by number or by name (DEVICE_ALREADY_EXISTS), and a malformed one', async () => {
    const vdi = await newVdi();
    try {
      expect(await refusal(xapi.createVbd({ vm: vm('app'), vdi, userdevice: '1' }))).toEqual(['DEVICE_ALREADY_EXISTS', '1']);
      expect(await refusal(xapi.createVbd({ vm: vm('app'), vdi, userdevice: 'xvdb' }))).toEqual(['DEVICE_ALREADY_EXISTS', 'xvdb']);
      expect(await refusal(xapi.createVbd({ vm: vm('app'), vdi, userdevice: '3' }))).toEqual(['DEVICE_ALREADY_EXISTS', '3']);
      expect(await refusal(xapi.createVbd({ vm: vm('app'), vdi, userdevice: 'disk two' }))).toEqual(['INVALID_DEVICE', 'disk two']);
      expect(sim.state.record('VDI', vdi)!.VBDs).toEqual([]);
      // "autodetect" takes the first free device.
      const ref = await xapi.createVbd({ vm: vm('app'), vdi, userdevice: 'autodetect' });
      made.push(ref);
      expect(vbd(ref).userdevice).toBe('2');
    } finally {
      if ((sim.state.record('VDI', vdi)!.VBDs as string[]).length === 0) await xapi.call('VDI.destroy', vdi);
    }
  });

  it('refuses what XAPI refuses in the constructor', async () => {
    const vdi = await newVdi();
    const readOnly = await newVdi({ read_only: true });
    const odd = await newVdi({ type: 'ha_statefile' });
    const base = { VM: vm('idle'), VDI: vdi, userdevice: '2', bootable: false, mode: 'RW', type: 'Disk', empty: false, other_config: {}, qos_algorithm_type: '', qos_algorithm_params: {} };
    const create = (fields: Record<string, unknown>) => refusal(xapi.call('VBD.create', { ...base, ...fields }));
    expect(await create({ VDI: readOnly })).toEqual(['VDI_READONLY', readOnly]);
    expect(await create({ VDI: odd })).toEqual(['VDI_INCOMPATIBLE_TYPE', odd, 'ha_statefile']);
    expect(await create({ empty: true })).toEqual(['VBD_NOT_REMOVABLE_MEDIA', 'in constructor']);
    expect(await create({ type: 'CD' })).toEqual(['VBD_CDS_MUST_BE_READONLY']);
    expect(await create({ VM: 'OpaqueRef:nope' })).toEqual(['HANDLE_INVALID', 'VM', 'OpaqueRef:nope']);
    expect(await create({ mode: 'RWX' })).toEqual(['FIELD_TYPE_ERROR', 'mode']);
    const { qos_algorithm_params: _, ...withoutQos } = base;
    expect(await refusal(xapi.call('VBD.create', withoutQos))).toEqual(['FIELD_TYPE_ERROR', 'qos_algorithm_params']);
    // A read-only VDI goes in read-only.
    const ro = await xapi.createVbd({ vm: vm('idle'), vdi: readOnly, userdevice: '2', mode: 'RO' });
    made.push(ro);
    expect(vbd(ro).mode).toBe('RO');
    for (const v of [vdi, odd]) await xapi.call('VDI.destroy', v);
  });
});

describe('faults', () => {
  it("a fault's vm filter matches VBD.create through the record's VM", async () => {
    const vdi = await newVdi();
    const id = sim.faults.add({ rpc: 'VBD.create', vm: 'idle', always: true, action: { kind: 'error', code: 'SR_BACKEND_FAILURE_46', params: ['', 'simulated', ''] } });
    try {
      expect(await refusal(xapi.createVbd({ vm: vm('idle'), vdi, userdevice: '3' }))).toEqual(['SR_BACKEND_FAILURE_46', '', 'simulated', '']);
      const ref = await xapi.createVbd({ vm: vm('app'), vdi, userdevice: '2' });
      made.push(ref);
    } finally {
      sim.faults.remove(id);
    }
  });
});

describe('VBD.plug / unplug / destroy', () => {
  it('hotplugs into a running VM, and back out; destroy waits for the unplug and keeps the VDI', async () => {
    const vdi = await newVdi();
    const ref = await xapi.createVbd({ vm: vm('app'), vdi, userdevice: '2' });
    made.push(ref);
    expect(vbd(ref).currently_attached).toBe(false);
    await xapi.plugVbd(ref);
    expect(vbd(ref)).toMatchObject({ currently_attached: true, device: 'xvdc' });
    expect(await refusal(xapi.plugVbd(ref))).toEqual(['DEVICE_ALREADY_ATTACHED', ref]);
    // Attached: the VDI cannot be destroyed, nor the VBD.
    expect(await refusal(xapi.call('VDI.destroy', vdi))).toEqual(['VDI_IN_USE', vdi, 'destroy']);
    const [code, detail] = await refusal(xapi.destroyVbd(ref));
    expect([code, detail]).toEqual(['OPERATION_NOT_ALLOWED', `VBD '${vbd(ref).uuid}' still attached to '${sim.state.vm('app').uuid}'`]);
    await xapi.unplugVbd(ref);
    expect(vbd(ref).currently_attached).toBe(false);
    expect(await refusal(xapi.unplugVbd(ref))).toEqual(['DEVICE_ALREADY_DETACHED', ref]);
    // As an Async call too (a task), as xen-api's callAsync makes it.
    await xapi.callAsync('VBD.plug', ref);
    expect(vbd(ref).currently_attached).toBe(true);
    await xapi.unplugVbd(ref);
    await xapi.destroyVbd(ref);
    expect(sim.state.record('VBD', ref)).toBeUndefined();
    expect(sim.state.record('VDI', vdi)).toMatchObject({ VBDs: [] });
    await xapi.call('VDI.destroy', vdi);
  });

  it('refuses what XAPI refuses: no PV drivers in an HVM guest, a disk another running VM writes, a fixed disk', async () => {
    const vdi = await newVdi();
    const onApp = await xapi.createVbd({ vm: vm('app'), vdi, userdevice: '2' });
    made.push(onApp);
    await xapi.plugVbd(onApp);
    // HVM without guest tools: no hotplug.
    const noTools = await xapi.createVbd({ vm: vm('no-tools'), vdi, userdevice: '1' });
    expect(await refusal(xapi.plugVbd(noTools))).toEqual(['VM_MISSING_PV_DRIVERS', vm('no-tools')]);
    await xapi.destroyVbd(noTools);
    // PV guests need no drivers, but the disk is written by app.
    const onPv = await xapi.createVbd({ vm: vm('pv'), vdi, userdevice: '1' });
    expect(await refusal(xapi.plugVbd(onPv))).toEqual(['VDI_IN_USE', vdi]);
    await xapi.unplugVbd(onApp);
    await xapi.plugVbd(onPv);
    expect(vbd(onPv)).toMatchObject({ currently_attached: true, device: 'xvdb' });
    await xapi.unplugVbd(onPv);
    await xapi.destroyVbd(onPv);
    // The disks a VM was made with are not unpluggable.
    const xvda = sim.state.records('VBD').find((b) => b.VM === vm('app') && b.device === 'xvda')!;
    expect(await refusal(xapi.unplugVbd(xvda.ref))).toEqual(['VBD_NOT_UNPLUGGABLE', xvda.ref]);
  });
});
