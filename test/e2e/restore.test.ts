import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { splitRestoreArgs } from '../../runtime/cli/restore.js';
import { readAll } from '../../runtime/formats/test-sources.js';
import { Manifest } from '../../runtime/storage/manifest.js';
import { XapiClient } from '../../runtime/xapi/client.js';
import { blockHolders } from '../../runtime/xapi/snapshots.js';
import type { FaultAction } from '../sim/faults.js';
import type { Simulator } from '../sim/server.js';
import type { PoolSpecInput } from '../sim/pool-spec.js';
import { VMBACKUP, httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import { waitFor } from '../sim/test-helpers.js';
import type { CliResult, Workspace } from '../helpers/cli.js';

/**
 * `vmbackup restore`, end to end: back up with the real command, restore with the real
 * command, and compare the restored disks with the originals byte for byte.
 */

const pool: PoolSpecInput = {
  credentials: { user: 'root', password: 'secret' },
  hosts: [{ name_label: 'xcp1' }, { name_label: 'xcp2' }],
  srs: [
    { name_label: 'NFS', size_gib: 100, used_gib: 10 },
    { name_label: 'Local xcp2', size_gib: 50, used_gib: 1, shared: false, host: 'xcp2' },
  ],
  vms: [
    {
      name_label: 'web1',
      power_state: 'Running',
      disks: [
        { device: 'xvda', size_mib: 6, fill: 'pattern' },
        { device: 'xvdb', size_mib: 5, fill: 'sparse' },
      ],
      vifs: [{ network: 'eth0', mac: 'aa:bb:cc:dd:ee:01' }],
      cd: true,
    },
    { name_label: 'db1', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 3, fill: 'pattern' }], vifs: [{ network: 'eth0', mac: 'aa:bb:cc:dd:ee:02' }] },
    // Large enough that a stalled upload backs up to the client (the simulator buffers 8 MiB).
    { name_label: 'big', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 48, fill: 'sparse' }], vifs: [] },
  ],
};

let sim: Simulator;
let xapi: XapiClient;
beforeAll(async () => {
  sim = await httpsSim(pool);
  xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'secret', ca: readFileSync(sim.caFile!, 'utf8') });
});
afterAll(async () => {
  await xapi.close();
  await sim.close();
});
afterEach(() => sim.faults.clear());

interface SimRecord {
  ref: string;
  uuid: string;
  [field: string]: unknown;
}

/** A VM's disks by device: VDI record and bytes. */
async function disksOf(vmRefOrUuid: string): Promise<Map<string, { vdi: SimRecord; bytes: Buffer }>> {
  const vm = sim.state.record('VM', vmRefOrUuid) as SimRecord;
  const out = new Map<string, { vdi: SimRecord; bytes: Buffer }>();
  for (const vbdRef of vm.VBDs as string[]) {
    const vbd = sim.state.record('VBD', vbdRef) as SimRecord;
    if (vbd.type !== 'Disk') continue;
    out.set(vbd.device as string, { vdi: sim.state.record('VDI', vbd.VDI as string) as SimRecord, bytes: await readAll(sim.state.disk(vbd.VDI as string)) });
  }
  return out;
}

async function originalBytes(vmName: string, device: string): Promise<Buffer> {
  return (await disksOf(sim.state.vm(vmName).ref)).get(device)!.bytes;
}

/** Everything that counts as "created on the pool". */
function census(): { vms: number; vdis: number } {
  return { vms: sim.state.vms().length, vdis: sim.state.vdis().length };
}

/** Backs up with the real command; returns the VM folder's path and its file names. */
async function backup(ws: Workspace, args: string[], folder: string): Promise<{ dir: string; names: string[] }> {
  const result = await vmbackup([...ws.args(sim), ...args]);
  expect(result.stderr).toBe('');
  expect(result.code).toBe(0);
  const dir = path.join(ws.exports, folder);
  return { dir, names: (await readdir(dir)).sort() };
}

function restoreCmd(ws: Workspace, args: string[]): Promise<CliResult> {
  return vmbackup(['restore', ...args, ...ws.args(sim)]);
}

function jsonOf(result: CliResult): { created: { vms: { uuid: string; name: string; unblocked: string[] }[]; vdis: { uuid: string; name: string; sr: string }[] }; overwritten?: { uuid: string }; warnings: string[] } {
  return JSON.parse(result.stdout) as ReturnType<typeof jsonOf>;
}

/** Destroys a VM the test restored, and its disks (shut down first if it runs). */
async function destroyRestored(uuid: string): Promise<void> {
  const vm = sim.state.record('VM', uuid) as SimRecord | undefined;
  if (vm === undefined) return;
  if (vm.power_state !== 'Halted') await xapi.call('VM.hard_shutdown', vm.ref);
  const vdis: string[] = [];
  for (const vbd of vm.VBDs as string[]) {
    const r = sim.state.record('VBD', vbd) as SimRecord;
    if (r.type === 'Disk' && r.VDI !== 'OpaqueRef:NULL') vdis.push(r.VDI as string);
  }
  await xapi.call('VM.destroy', vm.ref);
  for (const vdi of vdis) await xapi.call('VDI.destroy', vdi);
}

async function flipByte(file: string, at: number): Promise<void> {
  const fh = await open(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, at);
  } finally {
    await fh.close();
  }
}

describe('vmbackup restore: round trips, bit for bit', () => {
  it.each([
    ['xva', [] as string[]],
    ['xva.gz', ['-C']],
    ['xva.zst', ['--compression', 'zstd']],
  ])('%s: back up web1, restore it as a new VM; every disk is the original, byte for byte', async (ext, flags) => {
    const ws = await workspace();
    const { dir, names } = await backup(ws, ['-e', 'web1', ...flags], 'web1');
    const file = names.find((n) => n.endsWith(`.${ext}`))!;
    expect(file).toMatch(new RegExp(`^backup_\\d{8}-\\d{6}\\.${ext.replace('.', '\\.')}$`));
    const stamp = /backup_(\d{8}-\d{6})/.exec(file)![1]!;
    const before = census();

    const result = await restoreCmd(ws, [path.join(dir, file)]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const vmLine = /^ {2}VM {2}(\S+) {2}(.+)$/m.exec(result.stdout)!;
    expect(vmLine[2]).toBe(`web1 (restored ${stamp})`);
    const restored = sim.state.record('VM', vmLine[1]!) as SimRecord;
    expect(restored).toMatchObject({ name_label: `web1 (restored ${stamp})`, power_state: 'Halted', is_a_snapshot: false, is_a_template: false });
    expect(restored.uuid).not.toBe(sim.state.vm('web1').uuid);

    const disks = await disksOf(restored.ref);
    expect([...disks.keys()].sort()).toEqual(['xvda', 'xvdb']);
    for (const device of ['xvda', 'xvdb']) expect(disks.get(device)!.bytes.equals(await originalBytes('web1', device))).toBe(true);
    // Every created VDI is printed, with its SR; none looks like a snapshot of ours.
    for (const { vdi } of disks.values()) {
      expect(result.stdout).toContain(`  VDI ${vdi.uuid}  `);
      expect(vdi.is_a_snapshot).toBe(false);
      expect(Object.keys(vdi.other_config as object).filter((k) => k.startsWith('vmbackup:') && !k.startsWith('vmbackup:restore'))).toEqual([]);
      expect(vdi.other_config).toMatchObject({ 'vmbackup:restored-from': file });
    }
    expect(Object.keys(restored.other_config as object)).not.toContain('vmbackup:run');
    // One VM and its two disks, nothing else; no session left open.
    expect(census()).toEqual({ vms: before.vms + 1, vdis: before.vdis + 2 });
    expect(sim.state.liveSessions()).toBe(1); // the test's own
    const upload = sim.state.transfers('import').at(-1)!;
    expect(upload).toMatchObject({ status: 'done' });
  });

  it.each(['raw', 'vhd'])('%s: back up two disks (vdi-export), restore each into a new VDI, byte for byte', async (format) => {
    const ws = await workspace();
    const { dir, names } = await backup(ws, ['-E', 'web1:-1:xvda;xvdb', '-F', format, '-x', 'db1', '-x', 'big'], 'web1');
    const json = names.find((n) => n.endsWith('.json'))!;
    const stamp = /backup_(\d{8}-\d{6})/.exec(json)![1]!;
    for (const device of ['xvda', 'xvdb']) {
      const before = census();
      // xvda by its data file, xvdb through the set's manifest and --disk.
      const args = device === 'xvda' ? [path.join(dir, `backup_xvda_${stamp}.${format}`)] : [path.join(dir, json), '--disk', 'xvdb'];
      const result = await restoreCmd(ws, [...args, '--json']);
      expect(result.stderr).toBe('');
      expect(result.code).toBe(0);
      const out = jsonOf(result);
      expect(out.created.vms).toEqual([]);
      expect(out.created.vdis).toHaveLength(1);
      const created = out.created.vdis[0]!;
      expect(created.name).toBe(`web1 ${device === 'xvda' ? 0 : 1} (restored ${stamp})`);
      expect(created.sr).toBe(sim.state.records('SR').find((s) => s.name_label === 'NFS')!.uuid);
      const vdi = sim.state.record('VDI', created.uuid) as SimRecord;
      expect(vdi).toMatchObject({ type: 'user', virtual_size: device === 'xvda' ? 6 << 20 : 5 << 20 });
      expect((await readAll(sim.state.disk(vdi.ref))).equals(await originalBytes('web1', device))).toBe(true);
      expect(census()).toEqual({ vms: before.vms, vdis: before.vdis + 1 });
      expect(sim.state.transfers('import_raw_vdi').at(-1)).toMatchObject({ status: 'done', format, vdiUuid: created.uuid });
    }
    // As text: where the new VDI is, and how to attach it.
    const text = await restoreCmd(ws, [path.join(dir, `backup_xvda_${stamp}.${format}`)]);
    expect(text.code).toBe(0);
    const vdiLine = /^ {2}VDI (\S+) {2}web1 0 \(restored \d{8}-\d{6}\) {2}\(SR (\S+)\)$/m.exec(text.stdout)!;
    expect(vdiLine[2]).toBe(sim.state.records('SR').find((s) => s.name_label === 'NFS')!.uuid);
    expect(text.stdout).toContain(`\n      xe vbd-create vm-uuid=<VM> vdi-uuid=${vdiLine[1]} device=<N> type=Disk mode=RW bootable=false\n`);
    expect(text.stdout).toContain('xe vbd-plug uuid=');
    // Both disks in the set: without --disk the manifest is ambiguous.
    const ambiguous = await restoreCmd(ws, [path.join(dir, json)]);
    expect(ambiguous.code).toBe(2);
    expect(ambiguous.stderr).toContain('holds 2 disks (xvda, xvdb): choose one with --disk');
  }, 180_000);

  it('--vdi writes into an existing VDI, after checking it is large enough', async () => {
    const ws = await workspace();
    const { dir, names } = await backup(ws, ['-E', 'web1:-1:xvda;xvdb', '-x', 'db1', '-x', 'big'], 'web1');
    const xvda = path.join(dir, names.find((n) => n.startsWith('backup_xvda_') && n.endsWith('.raw'))!);
    const xvdb = path.join(dir, names.find((n) => n.startsWith('backup_xvdb_') && n.endsWith('.raw'))!);
    const sr = sim.state.records('SR').find((s) => s.name_label === 'NFS')!;
    const newVdi = async (mib: number) => {
      const ref = await xapi.call<string>('VDI.create', { name_label: `target ${mib}`, name_description: '', SR: sr.ref, virtual_size: mib << 20, type: 'user', sharable: false, read_only: false, other_config: {} });
      return sim.state.record('VDI', ref) as SimRecord;
    };
    const small = await newVdi(5);
    const before = census();
    const refused = await restoreCmd(ws, [xvda, '--vdi', small.uuid]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain(`--vdi ${small.uuid}: its virtual size ${5 << 20} is smaller than the backup's ${6 << 20} bytes`);
    expect(sim.state.transfers('import_raw_vdi').filter((t) => t.vdiUuid === small.uuid)).toEqual([]);

    const result = await restoreCmd(ws, [xvdb, '--vdi', small.uuid]);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain(`  VDI ${small.uuid}  target 5  (SR ${sr.uuid}, overwritten)`);
    expect((await readAll(sim.state.disk(small.ref))).equals(await originalBytes('web1', 'xvdb'))).toBe(true);
    expect(census()).toEqual(before); // nothing created
  });

  it('--sr by name onto a local SR of another host: the upload follows the 302', async () => {
    const ws = await workspace();
    const { dir, names } = await backup(ws, ['-e', 'db1'], 'db1');
    const result = await restoreCmd(ws, [path.join(dir, names.find((n) => n.endsWith('.xva'))!), '--sr', 'Local xcp2', '--name', 'db1 on xcp2', '--json']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const out = jsonOf(result);
    expect(out.created.vms.map((v) => v.name)).toEqual(['db1 on xcp2']);
    const local = sim.state.records('SR').find((s) => s.name_label === 'Local xcp2')!;
    expect(out.created.vdis.map((v) => v.sr)).toEqual([local.uuid]);
    expect(sim.state.transfers('import').at(-1)).toMatchObject({ status: 'done', host: 'xcp2' });
    expect((await disksOf(out.created.vms[0]!.uuid)).get('xvda')!.bytes.equals(await originalBytes('db1', 'xvda'))).toBe(true);
  });

  it('--preserve keeps the VM uuid, name and MAC once the original is gone (as xe requires)', async () => {
    const ws = await workspace();
    const { dir, names } = await backup(ws, ['-e', 'db1'], 'db1');
    const file = path.join(dir, names.find((n) => n.endsWith('.xva'))!);
    const original = sim.state.vm('db1');
    const originalDisk = await originalBytes('db1', 'xvda');
    const before = census();
    const imports = sim.state.transfers('import').length;
    // With the original still there, vmbackup refuses before uploading anything.
    const refused = await restoreCmd(ws, [file, '--preserve']);
    expect(refused.code).toBe(1);
    expect(refused.stdout).toBe('');
    expect(refused.stderr).toContain(`--preserve: VM "db1" (${original.uuid}), which this backup is of, still exists in the pool`);
    expect(refused.stderr).toContain('; --force restores it anyway');
    expect(sim.state.transfers('import')).toHaveLength(imports);
    expect(census()).toEqual(before);
    // With --force, vmbackup lets XAPI decide: it refuses a second VM with the same uuid.
    const forced = await restoreCmd(ws, [file, '--preserve', '--force']);
    expect(forced.code).toBe(1);
    expect(forced.stderr).toContain(`still exists in the pool`);
    expect(forced.stderr).toContain(`a VM with uuid ${original.uuid} already exists`);
    expect(census()).toEqual(before);

    const [vbd] = original.VBDs as string[];
    const vdi = (sim.state.record('VBD', vbd!) as SimRecord).VDI as string;
    await xapi.call('VM.destroy', original.ref);
    await xapi.call('VDI.destroy', vdi);
    const result = await restoreCmd(ws, [file, '--preserve']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toContain(`  VM  ${original.uuid}  db1\n`);
    const back = sim.state.vm('db1');
    expect(back.uuid).toBe(original.uuid);
    const vif = sim.state.record('VIF', (back.VIFs as string[])[0]!) as SimRecord;
    expect(vif.MAC).toBe('aa:bb:cc:dd:ee:02');
    expect((await disksOf(back.ref)).get('xvda')!.bytes.equals(originalDisk)).toBe(true);
  });

  it('--preserve while the original still runs is refused (two VMs of that name with the same MACs); --force restores it anyway', async () => {
    const ws = await workspace();
    const { dir, names } = await backup(ws, ['-e', 'web1'], 'web1');
    const web1 = sim.state.vm('web1');
    const file = path.join(dir, names.find((n) => n.endsWith('.xva'))!);
    const before = census();
    const imports = sim.state.transfers('import').length;
    try {
      for (const json of [[], ['--json']]) {
        const refused = await restoreCmd(ws, [file, '--preserve', ...json]);
        expect(refused.code).toBe(1);
        const message = `--preserve: VM "web1" (${web1.uuid}), which this backup is of, still exists in the pool`;
        if (json.length === 0) {
          expect(refused.stderr).toContain(message);
          expect(refused.stdout).toBe('');
        } else expect(JSON.parse(refused.stdout)).toMatchObject({ status: 'failed', exitCode: 1, error: { code: 'RESTORE_ORIGINAL_EXISTS' } });
      }
      expect(sim.state.transfers('import')).toHaveLength(imports);
      expect(census()).toEqual(before);
      expect(sim.state.vms().filter((v) => v.name_label === 'web1')).toHaveLength(1);

      const result = await restoreCmd(ws, [file, '--preserve', '--force', '--json']);
      expect(result.code).toBe(0);
      const [vm] = jsonOf(result).created.vms;
      expect(vm!.name).toBe('web1');
      expect(vm!.uuid).not.toBe(web1.uuid);
      expect(result.stderr).toContain(`WARNING: --preserve: VM "web1" (${web1.uuid}), which this backup is of, still exists in the pool`);
      expect(result.stderr).toContain('restoring anyway (--force)');
      expect(result.stderr).toContain(`WARNING: --preserve: the backup is of a snapshot of VM ${web1.uuid}, so XAPI kept the snapshot's uuid ${vm!.uuid}`);
      const vif = sim.state.record('VIF', (sim.state.record('VM', vm!.uuid)!.VIFs as string[])[0]!) as SimRecord;
      expect(vif.MAC).toBe('aa:bb:cc:dd:ee:01');
    } finally {
      // Two VMs named web1 would change the backup folder of the tests below.
      for (const copy of sim.state.vms().filter((v) => v.name_label === 'web1' && v.uuid !== web1.uuid)) await destroyRestored(copy.uuid as string);
    }
  });
});

describe('vmbackup restore: the backup of a halted VM (exported with its start blocked)', () => {
  it("lifts vmbackup's start block saved in the .xva, so the VM starts; an operator's own blocks stay", async () => {
    const db1 = sim.state.vm('db1');
    // The operator's own blocks: vmbackup then blocks only `start` (it never overwrites one).
    await xapi.call('VM.add_to_blocked_operations', db1.ref, 'start_on', 'maintenance');
    await xapi.call('VM.add_to_blocked_operations', db1.ref, 'suspend', 'maintenance');
    const created: string[] = [];
    try {
      const ws = await workspace();
      const { dir, names } = await backup(ws, ['-e', 'db1'], 'db1');
      const file = path.join(dir, names.find((n) => n.endsWith('.xva'))!);
      // The export ran without a snapshot, its start blocked, and ova.xml saved that block.
      expect((await readFile(file)).subarray(0, 64 << 10).toString('latin1')).toMatch(/vmbackup: export in progress \(run /);
      expect(sim.state.vm('db1').blocked_operations).toEqual({ start_on: 'maintenance', suspend: 'maintenance' });

      const result = await restoreCmd(ws, [file]);
      const uuid = /^ {2}VM {2}(\S+) {2}/m.exec(result.stdout)?.[1];
      if (uuid !== undefined) created.push(uuid);
      expect(result.stderr).toBe('');
      expect(result.code).toBe(0);
      expect(result.stdout).toContain(`  VM  ${uuid}  db1 (restored `);
      expect(result.stdout).toMatch(/^ {6}start: lifted the block vmbackup's export of the halted VM had saved in the backup$/m);
      const restored = sim.state.record('VM', uuid!) as SimRecord;
      expect(restored.blocked_operations).toEqual({ start_on: 'maintenance', suspend: 'maintenance' });
      // The export's hold on that block, saved with it, is gone too.
      expect(blockHolders(restored.other_config as Record<string, string>)).toEqual([]);
      await xapi.call('VM.start', restored.ref, false, false);
      expect(sim.state.record('VM', uuid!)).toMatchObject({ power_state: 'Running' });

      // --json says the same.
      const json = await restoreCmd(ws, [file, '--json']);
      expect(json.code).toBe(0);
      const out = jsonOf(json);
      created.push(...out.created.vms.map((v) => v.uuid));
      expect(out.created.vms.map((v) => v.unblocked)).toEqual([['start']]);
      expect((sim.state.record('VM', out.created.vms[0]!.uuid) as SimRecord).blocked_operations).toEqual({ start_on: 'maintenance', suspend: 'maintenance' });
    } finally {
      await xapi.call('VM.remove_from_blocked_operations', db1.ref, 'start_on');
      await xapi.call('VM.remove_from_blocked_operations', db1.ref, 'suspend');
      for (const uuid of created) await destroyRestored(uuid);
    }
  });
});

describe('vmbackup restore: nothing half-created', () => {
  let ws: Workspace;
  let xvaFile: string;
  let rawFile: string;
  let rawDir: string;
  beforeAll(async () => {
    ws = await workspace();
    const vm = await backup(ws, ['-e', 'web1'], 'web1');
    xvaFile = path.join(vm.dir, vm.names.find((n) => n.endsWith('.xva'))!);
    const ws2 = await workspace();
    const disks = await backup(ws2, ['-E', 'web1:-1:xvda', '-x', 'db1', '-x', 'big'], 'web1');
    rawDir = disks.dir;
    rawFile = path.join(disks.dir, disks.names.find((n) => n.endsWith('.raw'))!);
  });

  it.each([
    ['a reset mid-upload', { kind: 'reset', after_bytes: 3 << 20 }, 'IMPORT_ERROR_PREMATURE_EOF'],
    ['HTTP 500', { kind: 'http-500' }, 'INTERNAL_ERROR'],
    ['a task failure after the upload', { kind: 'task-failure', code: 'VDI_IO_ERROR', params: ['simulated'] }, 'VDI_IO_ERROR'],
  ] satisfies [string, FaultAction, string][])('/import with %s: exit 1, no VM or VDI left', async (_name, action, code) => {
    const before = census();
    sim.faults.add({ http: 'import', action });
    const result = await restoreCmd(ws, [xvaFile]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`vmbackup restore: restore of ${xvaFile} failed: `);
    expect(result.stderr).toContain(code);
    expect(result.stdout).toBe('');
    expect(census()).toEqual(before);
    expect(sim.state.transfers('import').at(-1)).toMatchObject({ status: 'failed' });
  });

  it.each([
    ['a reset mid-upload', { kind: 'reset', after_bytes: 1 << 20 }, 'VDI_IO_ERROR'],
    ['HTTP 500', { kind: 'http-500' }, 'INTERNAL_ERROR'],
    ['a task failure once written', { kind: 'task-failure', code: 'VDI_IO_ERROR', params: ['simulated'] }, 'VDI_IO_ERROR'],
  ] satisfies [string, FaultAction, string][])('/import_raw_vdi with %s: exit 1, the new VDI is destroyed', async (_name, action, code) => {
    const before = census();
    sim.faults.add({ http: 'import_raw_vdi', action });
    const result = await restoreCmd(ws, [rawFile]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(code);
    expect(census()).toEqual(before);
    const vdi = sim.state.transfers('import_raw_vdi').at(-1)!.vdiUuid!;
    expect(sim.state.record('VDI', vdi)).toBeUndefined();
  });

  describe('a stalled upload', () => {
    let bigRaw: string;
    let bigWs: Workspace;
    beforeAll(async () => {
      bigWs = await workspace();
      const set = await backup(bigWs, ['-E', 'big:-1:xvda', '-x', 'web1', '-x', 'db1'], 'big');
      bigRaw = path.join(set.dir, set.names.find((n) => n.endsWith('.raw'))!);
    });

    it('is given up after export_idle_timeout: exit 1, the new VDI is destroyed', async () => {
      const before = census();
      // The stall has no end (no `ms`; it lasts until the task is cancelled): the restore ending,
      // with the idle timeout's reason, proves export_idle_timeout gave it up.
      sim.faults.add({ http: 'import_raw_vdi', action: { kind: 'stall', after_bytes: 1 << 20 } });
      const result = await vmbackup(['restore', bigRaw, ...bigWs.args(sim)], { env: { VMBACKUP_EXPORT_IDLE_TIMEOUT: '5' } });
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/PUT \/import_raw_vdi: no progress for 5 s after \d+(\.\d)? [KMG]?i?B of 48\.0 MiB$/m);
      expect(census()).toEqual(before);
    });

    it('SIGTERM mid-upload: exit 1, the new VDI is destroyed', async () => {
      const before = census();
      sim.faults.add({ http: 'import_raw_vdi', action: { kind: 'stall', after_bytes: 1 << 20 } });
      const child = spawn(process.execPath, [VMBACKUP, 'restore', bigRaw, ...bigWs.args(sim)], { env: { PATH: process.env.PATH ?? '', HOME: bigWs.base }, stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
      await waitFor(async () => (sim.state.transfers('import_raw_vdi').some((t) => t.status === 'running') ? true : undefined), 20_000);
      child.kill('SIGTERM');
      expect(await exited).toBe(1);
      expect(stderr).toContain('SIGTERM received');
      expect(stderr).toMatch(/restore of .* failed: PUT \/import_raw_vdi aborted/);
      expect(census()).toEqual(before);
    });
  });

  it('a flipped byte in an XVA chunk: XAPI refuses the checksum, nothing is left', async () => {
    const bad = path.join(path.dirname(xvaFile), '..', 'corrupt');
    await rm(bad, { recursive: true, force: true });
    await (await import('node:fs/promises')).cp(path.dirname(xvaFile), bad, { recursive: true });
    const file = path.join(bad, path.basename(xvaFile));
    // ova.xml's header and data, then the first chunk's header: its data starts after them.
    const head = await readFile(file);
    const ovaSize = parseInt(head.subarray(124, 135).toString('latin1'), 8);
    await flipByte(file, 512 + Math.ceil(ovaSize / 512) * 512 + 512 + 1000);
    const before = census();
    const result = await restoreCmd(ws, [file]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('IMPORT_ERROR_SOME_CHECKSUMS_FAILED');
    expect(census()).toEqual(before);
  });

  it('a flipped byte in a raw disk: the manifest checksum refuses it, the new VDI is destroyed', async () => {
    const bad = path.join(rawDir, '..', 'corrupt-raw');
    await (await import('node:fs/promises')).cp(rawDir, bad, { recursive: true });
    const file = path.join(bad, path.basename(rawFile));
    await flipByte(file, 12345);
    const before = census();
    const result = await restoreCmd(ws, [file]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/BACKUP_CORRUPT|XXH64 is [0-9A-F]{16}, the manifest recorded [0-9A-F]{16}/);
    expect(census()).toEqual(before);
  });

  it('an incomplete set (no manifest) or one that failed verification is refused, unless --force', async () => {
    const copy = path.join(rawDir, '..', 'sets');
    await (await import('node:fs/promises')).cp(rawDir, copy, { recursive: true });
    const file = path.join(copy, path.basename(rawFile));
    const manifestPath = path.join(copy, (await readdir(copy)).find((n) => n.endsWith('.json'))!);
    const manifest = Manifest.parse(JSON.parse(await readFile(manifestPath, 'utf8')));
    const before = census();

    await writeFile(manifestPath, JSON.stringify({ ...manifest, verify: { at: '2026-11-26T09:00:00Z', ok: false, error: 'xvda: 4 bytes differ from the recorded XXH64' } }));
    const failed = await restoreCmd(ws, [file]);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain('failed verification at 2026-11-26T09:00:00Z: xvda: 4 bytes differ from the recorded XXH64; --force restores it anyway');
    expect(census()).toEqual(before);
    const forced = await restoreCmd(ws, [file, '--force']);
    expect(forced.code).toBe(0);
    expect(forced.stderr).toContain('WARNING: the backup set');

    await rm(manifestPath);
    const incomplete = await restoreCmd(ws, [file]);
    expect(incomplete.code).toBe(1);
    expect(incomplete.stderr).toContain('is incomplete (');
    expect(incomplete.stderr).toContain('no manifest');
    const forced2 = await restoreCmd(ws, [file, '--force', '--json']);
    expect(forced2.code).toBe(0);
    const vdi = jsonOf(forced2).created.vdis[0]!;
    expect((await readAll(sim.state.disk(vdi.uuid))).equals(await originalBytes('web1', 'xvda'))).toBe(true);
  });
});

describe('vmbackup restore: a VmBackup set (no manifest)', () => {
  it('is refused without --force; with it, restored under the imported name', async () => {
    const ws = await workspace();
    const { dir, names } = await backup(ws, ['-e', 'db1'], 'db1');
    const legacy = path.join(ws.exports, 'legacy-db1');
    await (await import('node:fs/promises')).mkdir(legacy);
    const file = path.join(legacy, 'backup_01022024-030405.xva');
    await (await import('node:fs/promises')).copyFile(path.join(dir, names.find((n) => n.endsWith('.xva'))!), file);
    const before = census();
    const refused = await restoreCmd(ws, [file]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('backup_01022024-030405.xva is a VmBackup backup: it has no manifest, so nothing says it is complete; --force restores it anyway');
    expect(census()).toEqual(before);
    const forced = await restoreCmd(ws, [file, '--force', '--json']);
    expect(forced.code).toBe(0);
    expect(forced.stderr).toContain('backup_01022024-030405.meta: missing');
    expect(jsonOf(forced).created.vms.map((v) => v.name)).toEqual(['db1 (restored 01022024-030405)']);
  });
});

describe('vmbackup restore: usage, config and connection errors exit 2', () => {
  it.each([
    [[] as string[], 'FILE is missing'],
    [['/tmp/x/notes.txt'], '/tmp/x/notes.txt: no such file'],
    [['/tmp/x/backup_20240102-030405.xva'], '/tmp/x/backup_20240102-030405.xva: no such file'],
    [['/tmp/x/backup_20240102-030405.json'], '/tmp/x/backup_20240102-030405.json: no such file'],
    [['/tmp/x/backup_20240102-030405.xva', '-e', 'web1'], 'option -e (--vm-export) does not apply to restore'],
    [['/tmp/x/backup_20240102-030405.xva', '--srr', 'x'], 'unrecognized option --srr (did you mean --sr?)'],
    [['/tmp/x/backup_20240102-030405.xva', '--sr'], 'option --sr needs a value'],
    [['a', 'b'], 'takes one FILE'],
  ])('%j', async (args, message) => {
    const ws = await workspace();
    const result = await restoreCmd(ws, args);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain(message);
  });

  it('an existing file that is not part of a backup set', async () => {
    const ws = await workspace();
    const notes = path.join(ws.base, 'notes.txt');
    await writeFile(notes, 'hello\n');
    const result = await restoreCmd(ws, [notes]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain(`${notes}: not a file of a backup set`);
  });

  describe('options that do not fit the backup or the pool: exit 2, nothing created', () => {
    let ws: Workspace;
    let xva: string;
    let vdiSet: { dir: string; json: string; raw: string };
    beforeAll(async () => {
      ws = await workspace();
      const vm = await backup(ws, ['-e', 'db1'], 'db1');
      xva = path.join(vm.dir, vm.names.find((n) => n.endsWith('.xva'))!);
      const ws2 = await workspace();
      const disks = await backup(ws2, ['-E', 'web1:-1:xvda;xvdb', '-x', 'db1', '-x', 'big'], 'web1');
      vdiSet = { dir: disks.dir, json: disks.names.find((n) => n.endsWith('.json'))!, raw: disks.names.find((n) => n.startsWith('backup_xvda_') && n.endsWith('.raw'))! };
    });

    it.each([
      ['an unknown --sr', () => [xva, '--sr', 'nosuchsr'], '--sr nosuchsr: no SR has this uuid or name'],
      ['--sr of an ISO SR', () => [xva, '--sr', 'XCP-ng Tools'], 'holds ISO images: choose another with --sr'],
      ['a set of two disks without --disk', () => [path.join(vdiSet.dir, vdiSet.json)], 'holds 2 disks (xvda, xvdb): choose one with --disk'],
      ['--disk the set does not hold', () => [path.join(vdiSet.dir, vdiSet.json), '--disk', 'xvdc'], '--disk xvdc: the set'],
      ['--disk with a VM export', () => [xva, '--disk', 'xvda'], '--disk xvda: '],
      ['--vdi with a VM export', () => [xva, '--vdi', '00000000-0000-4000-8000-000000000000'], '--vdi: '],
      ['--vdi that does not exist', () => [path.join(vdiSet.dir, vdiSet.raw), '--vdi', '00000000-0000-4000-8000-000000000000'], '--vdi 00000000-0000-4000-8000-000000000000: no such VDI'],
      ['--preserve with a disk', () => [path.join(vdiSet.dir, vdiSet.raw), '--preserve'], '--preserve: '],
    ])('%s', async (_name, args, message) => {
      const before = census();
      const transfers = sim.state.transfers('import').length + sim.state.transfers('import_raw_vdi').length;
      const result = await restoreCmd(ws, args());
      expect(result.stderr).toContain(message);
      expect(result.code).toBe(2);
      expect(result.stdout).toBe('');
      expect(census()).toEqual(before);
      expect(sim.state.transfers('import').length + sim.state.transfers('import_raw_vdi').length).toBe(transfers);
    });

    it('--json: the error as JSON, exit 2', async () => {
      const result = await restoreCmd(ws, [xva, '--sr', 'nosuchsr', '--json']);
      expect(result.code).toBe(2);
      expect(JSON.parse(result.stdout)).toMatchObject({ status: 'fatal', exitCode: 2, error: { code: 'SR_NOT_FOUND', message: '--sr nosuchsr: no SR has this uuid or name' } });
    });
  });

  it('--help prints the usage', async () => {
    const result = await vmbackup(['restore', '--help']);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('usage: vmbackup restore FILE [--sr SR] [--name NAME] [--preserve] [--vdi UUID]\n                        [--disk DEV] [--attach VM] [--force] [--json]');
    // Every option it accepts is in the usage, and no line is wider than a terminal.
    for (const option of ['-c FILE', '-b PATH', '-d PATH', '-l LEVEL', '[-v]', '--xapi URL', '--user NAME', '--password-file FILE', '--tls-ca-file FILE', '--insecure | --no-insecure']) {
      expect(result.stdout).toContain(option);
    }
    for (const line of result.stdout.split('\n')) expect(line.length).toBeLessThanOrEqual(100);
  });

  it('bad credentials', async () => {
    const ws = await workspace('wrong');
    const good = await workspace();
    const { dir, names } = await backup(good, ['-e', 'db1'], 'db1');
    const result = await restoreCmd(ws, [path.join(dir, names.find((n) => n.endsWith('.xva'))!)]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('SESSION_AUTHENTICATION_FAILED');
  });
});

describe('splitRestoreArgs: the restore options and FILE out, the settings options through', () => {
  it.each([
    [['/b/f.xva', '--sr', 'NFS', '--xapi', 'h', '-l', 'debug'], { file: '/b/f.xva', sr: 'NFS', rest: ['--xapi', 'h', '-l', 'debug'] }],
    [['--name=web copy', '--preserve', '--force', '--json', '-c', 'cfg', 'f'], { file: 'f', name: 'web copy', preserve: true, force: true, rest: ['--json', '-c', 'cfg'] }],
    [['--password-file', 'pw', 'f', '--tls-ca-file=ca.pem', '-ldebug'], { file: 'f', rest: ['--password-file', 'pw', '--tls-ca-file=ca.pem', '-ldebug'] }],
    [['--disk', 'xvdb', 'f.json', '--vdi=0b1c'], { file: 'f.json', disk: 'xvdb', vdi: '0b1c', rest: [] }],
    [['--', '-odd name.xva'], { file: '-odd name.xva', rest: [] }],
    [['-h'], { help: true }],
    [['--help'], { help: true }],
  ])('%j', (argv, expected) => {
    expect(splitRestoreArgs(argv)).toMatchObject({ preserve: false, force: false, help: false, ...expected });
  });

  it.each([
    [['--preserve=yes'], 'option --preserve takes no value'],
    [['--vdi', '--force'], 'option --vdi needs a value'],
    [['-p'], 'option -p (--pool-backup) does not apply to restore'],
    [['--preview'], 'option does not apply to restore: --preview'],
    [['--max-backups', '3'], 'option does not apply to restore: --max-backups'],
    [['f', 'g'], 'takes one FILE'],
  ])('refuses %j', (argv, message) => {
    expect(() => splitRestoreArgs(argv)).toThrow(message);
  });
});
