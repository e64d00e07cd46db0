import { readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readAll } from '../../runtime/formats/test-sources.js';
import { XapiClient } from '../../runtime/xapi/client.js';
import type { PoolSpecInput } from '../sim/pool-spec.js';
import type { Simulator } from '../sim/server.js';
import { httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import type { CliResult, Workspace } from '../helpers/cli.js';

/**
 * `vmbackup restore --attach VM`, end to end: back up a disk with the real command, restore it
 * onto another VM with the real command, and look at the VBD XAPI holds.
 */

const pool: PoolSpecInput = {
  credentials: { user: 'root', password: 'secret' },
  hosts: [{ name_label: 'xcp1' }],
  srs: [{ name_label: 'NFS', size_gib: 100, used_gib: 10 }],
  vms: [
    { name_label: 'web1', power_state: 'Running', disks: [{ device: 'xvda', size_mib: 2, fill: 'pattern' }, { device: 'xvdb', size_mib: 3, fill: 'pattern' }], vifs: [] },
    { name_label: 'app', power_state: 'Running', disks: [{ device: 'xvda', size_mib: 1, fill: 'zero' }], vifs: [], cd: true },
    { name_label: 'standby', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 1, fill: 'zero' }], vifs: [], snapshots: [{ name_label: 'standby before upgrade' }] },
    // An HVM guest without PV drivers: XAPI refuses to hotplug a disk into it.
    { name_label: 'no-tools', power_state: 'Running', disks: [], vifs: [], os_version: null },
    { name_label: 'twin', power_state: 'Halted', disks: [], vifs: [] },
    { name_label: 'twin', power_state: 'Halted', disks: [], vifs: [] },
    { name_label: 'golden', power_state: 'Halted', disks: [], vifs: [], is_a_template: true },
    { name_label: 'full', power_state: 'Halted', disks: [], vifs: [] },
  ],
};

let sim: Simulator;
let xapi: XapiClient;
let ws: Workspace;
let raw: string;
let xva: string;
beforeAll(async () => {
  sim = await httpsSim(pool);
  xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'secret', ca: readFileSync(sim.caFile!, 'utf8') });
  ws = await workspace();
  const others = pool.vms.map((v) => v.name_label).filter((n) => n !== 'web1' && n !== 'standby').flatMap((n) => ['-x', n]);
  const disk = await vmbackup([...ws.args(sim), '-E', 'web1:-1:xvdb', '-x', 'standby', ...others]);
  expect(disk.code).toBe(0);
  const web1 = path.join(ws.exports, 'web1');
  raw = path.join(web1, (await readdir(web1)).find((n) => n.startsWith('backup_xvdb_') && n.endsWith('.raw'))!);
  const vm = await vmbackup([...ws.args(sim), '-e', 'standby', '-x', 'web1', ...others]);
  expect(vm.code).toBe(0);
  const standby = path.join(ws.exports, 'standby');
  xva = path.join(standby, (await readdir(standby)).find((n) => n.endsWith('.xva'))!);
  // Every device of "full" taken (by empty CD drives).
  const full = sim.state.vm('full').ref;
  for (const device of await xapi.allowedVbdDevices(full)) {
    await xapi.call('VBD.create', { VM: full, VDI: 'OpaqueRef:NULL', userdevice: device, bootable: false, mode: 'RO', type: 'CD', empty: true, other_config: {}, qos_algorithm_type: '', qos_algorithm_params: {} });
  }
}, 120_000);
afterAll(async () => {
  await xapi?.close();
  await sim?.close();
});

interface SimRecord {
  ref: string;
  uuid: string;
  [field: string]: unknown;
}

function restoreCmd(args: string[]): Promise<CliResult> {
  return vmbackup(['restore', ...args, ...ws.args(sim)]);
}

/** The VBDs of a VM that hold a VDI. */
function disksOf(vmName: string): SimRecord[] {
  const vm = sim.state.vm(vmName);
  return sim.state.records('VBD').filter((b) => b.VM === vm.ref && b.type === 'Disk') as SimRecord[];
}

function census(): { vms: number; vdis: number; vbds: number; uploads: number } {
  return { vms: sim.state.vms().length, vdis: sim.state.vdis().length, vbds: sim.state.records('VBD').length, uploads: sim.state.transfers('import_raw_vdi').length + sim.state.transfers('import').length };
}

async function originalXvdb(): Promise<Buffer> {
  const vbd = disksOf('web1').find((b) => b.device === 'xvdb')!;
  return readAll(sim.state.disk(vbd.VDI as string));
}

describe('vmbackup restore --attach', () => {
  it('a running VM: the new VDI is plugged in on its first free device, read-write, not bootable', async () => {
    const before = disksOf('app').length;
    const result = await restoreCmd([raw, '--attach', 'app']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const vdiUuid = /^ {2}VDI (\S+) {2}web1 1 \(restored \d{8}-\d{6}\)/m.exec(result.stdout)![1]!;
    const vdi = sim.state.record('VDI', vdiUuid) as SimRecord;
    const vbd = sim.state.record('VBD', (vdi.VBDs as string[])[0]!) as SimRecord;
    // app has xvda (0) and a CD drive on 3: the first free device is 1.
    expect(vbd).toMatchObject({ VM: sim.state.vm('app').ref, userdevice: '1', device: 'xvdb', mode: 'RW', type: 'Disk', bootable: false, empty: false, currently_attached: true });
    expect(disksOf('app')).toHaveLength(before + 1);
    expect(result.stdout).toContain(`      attached to VM ${sim.state.vm('app').uuid}  app  as device 1 (VBD ${vbd.uuid}), plugged into the running VM\n`);
    expect(result.stdout).not.toContain('xe vbd-create');
    expect((await readAll(sim.state.disk(vdi.ref))).equals(await originalXvdb())).toBe(true);
  });

  it('a halted VM, by uuid: the VBD is made, left unplugged until the VM starts', async () => {
    const standby = sim.state.vm('standby') as SimRecord;
    const result = await restoreCmd([raw, '--attach', standby.uuid, '--json']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const out = JSON.parse(result.stdout) as { created: { vdis: { uuid: string }[] }; attached: Record<string, unknown> };
    const vbd = sim.state.records('VBD').find((b) => b.VM === standby.ref && b.VDI === sim.state.record('VDI', out.created.vdis[0]!.uuid)!.ref) as SimRecord | undefined;
    if (vbd === undefined) throw new Error('no VBD on standby for the restored VDI');
    expect(out.attached).toEqual({ vm: { uuid: standby.uuid, name: 'standby' }, vbd: vbd.uuid, device: '1', plugged: false, powerState: 'Halted' });
    expect(vbd).toMatchObject({ userdevice: '1', mode: 'RW', bootable: false, currently_attached: false });
    // XAPI plugs it when the VM starts.
    await xapi.call('VM.start', standby.ref, false, false);
    expect(sim.state.record('VBD', vbd.ref)).toMatchObject({ currently_attached: true });
    await xapi.call('VM.hard_shutdown', standby.ref);
    // As text, on the next free device.
    const text = await restoreCmd([raw, '--attach', 'standby']);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/ {6}attached to VM \S+ {2}standby {2}as device 2 \(VBD \S+\), not plugged: the VM is halted \(XAPI plugs it when the VM starts\)\n/);
  });

  describe('refused before anything is uploaded: exit 2, nothing created', () => {
    it.each([
      ['a VM that does not exist', () => [raw, '--attach', 'nosuchvm'], '--attach nosuchvm: no VM has this uuid or name'],
      ['a uuid no VM has', () => [raw, '--attach', '00000000-0000-4000-8000-000000000000'], '--attach 00000000-0000-4000-8000-000000000000: no VM has this uuid or name'],
      ['a name several VMs have', () => [raw, '--attach', 'twin'], '--attach twin: 2 VMs have this name ('],
      ['a snapshot', () => [raw, '--attach', 'standby before upgrade'], 'is a snapshot, not a VM a disk can be given to'],
      ['a template', () => [raw, '--attach', 'golden'], '"golden" ('],
      ['a VM without a free device', () => [raw, '--attach', 'full'], '--attach full: VM "full" ('],
      ['a VM export', () => [xva, '--attach', 'app'], '--attach: '],
      ['with --vdi', () => [raw, '--attach', 'app', '--vdi', sim.state.vdis()[0]!.uuid as string], '--attach and --vdi: '],
    ])('%s', async (_name, args, message) => {
      const before = census();
      const result = await restoreCmd(args());
      expect(result.stderr).toContain(message);
      expect(result.code).toBe(2);
      expect(result.stdout).toBe('');
      expect(census()).toEqual(before);
    });

    it('names what is wrong: the template and the full VM', async () => {
      expect((await restoreCmd([raw, '--attach', 'golden'])).stderr).toContain(`"golden" (${sim.state.records('VM').find((v) => v.name_label === 'golden')!.uuid}) is a template`);
      expect((await restoreCmd([raw, '--attach', 'full'])).stderr).toContain('has no free device for another disk');
    });
  });

  it('an attach XAPI refuses after the upload: exit 1, the VDI is kept and the command says how to attach it by hand', async () => {
    const before = census();
    const result = await restoreCmd([raw, '--attach', 'no-tools']);
    expect(result.code).toBe(1);
    const noTools = sim.state.vm('no-tools');
    expect(result.stderr).toContain(`could not attach it to VM "no-tools" (${noTools.uuid}): VBD.plug: VM_MISSING_PV_DRIVERS(${noTools.ref}); the VDI is kept`);
    const vdiUuid = /^ {2}VDI (\S+) {2}web1 1 \(restored \d{8}-\d{6}\) {2}\(SR \S+\)$/m.exec(result.stdout)![1]!;
    expect(result.stderr).toContain(`into VDI "`);
    expect(result.stderr).toContain(`(${vdiUuid})`);
    expect(result.stdout).toContain(`      xe vbd-create vm-uuid=<VM> vdi-uuid=${vdiUuid} device=<N> type=Disk mode=RW bootable=false\n`);
    // The data is there, on a VDI attached to nothing (the VBD that could not be plugged is gone).
    const vdi = sim.state.record('VDI', vdiUuid) as SimRecord;
    expect(vdi.VBDs).toEqual([]);
    expect((await readAll(sim.state.disk(vdi.ref))).equals(await originalXvdb())).toBe(true);
    expect(disksOf('no-tools')).toEqual([]);
    expect(census()).toMatchObject({ vdis: before.vdis + 1, vbds: before.vbds });

    const json = await restoreCmd([raw, '--attach', 'no-tools', '--json']);
    expect(json.code).toBe(1);
    const out = JSON.parse(json.stdout) as { status: string; error: { code: string }; created: { vdis: { uuid: string }[] } };
    expect(out).toMatchObject({ status: 'failed', exitCode: 1, error: { code: 'RESTORE_ATTACH_FAILED' } });
    expect(sim.state.record('VDI', out.created.vdis[0]!.uuid)).toMatchObject({ VBDs: [] });
  });
});
