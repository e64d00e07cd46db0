import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, readFile, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ChunkStore, IndexReader, collectGarbage, removePoint } from '../../runtime/chunkstore/chunkstore.js';
import { readAll } from '../../runtime/formats/test-sources.js';
import { XapiClient } from '../../runtime/xapi/client.js';
import type { PoolSpecInput } from '../sim/pool-spec.js';
import type { Simulator } from '../sim/server.js';
import { httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import type { CliResult, Workspace } from '../helpers/cli.js';
import { pointOfVm } from '../helpers/points.js';
import type { MadePoint } from '../helpers/points.js';

/**
 * `vmbackup restore POINT`, end to end: points written into the chunk store as the backup
 * writes them (PointWriter, the simulator's /export_metadata, the VDIs' bytes), restored with
 * the real command, to a file or into the simulated pool, and compared byte for byte.
 * Needs qemu-img (Debian qemu-utils) and vhdiinfo (libvhdi-utils).
 */

const MiB = 1 << 20;
// web1 with a snapshot and a CD drive, neither of which a point holds; app to attach a disk to.
const web1Disks = [
  { device: 'xvda', size_mib: 6, fill: 'pattern' as const },
  { device: 'xvdb', size_mib: 5, fill: 'sparse' as const },
];
const pool: PoolSpecInput = {
  credentials: { user: 'root', password: 'secret' },
  hosts: [{ name_label: 'xcp1' }],
  srs: [{ name_label: 'NFS', size_gib: 100, used_gib: 10 }],
  vms: [
    { name_label: 'web1', power_state: 'Running', disks: web1Disks, vifs: [{ network: 'eth0', mac: 'aa:bb:cc:dd:ee:01' }], cd: true, snapshots: [{ name_label: 'web1 before upgrade' }] },
    { name_label: 'app', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 1, fill: 'zero' }], vifs: [] },
  ],
};

let sim: Simulator;
let xapi: XapiClient;
let ws: Workspace;
let web1: MadePoint;
beforeAll(async () => {
  sim = await httpsSim(pool);
  xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'secret', ca: readFileSync(sim.caFile!, 'utf8') });
  ws = await workspace();
  web1 = await pointOfVm(sim, xapi, ws.exports, 'web1', { stamp: '20261206-080000' });
}, 60_000);
afterAll(async () => {
  await xapi?.close();
  await sim?.close();
  if (ws !== undefined) await rm(ws.base, { recursive: true, force: true });
});
afterEach(() => sim.faults.clear());

function restoreCmd(args: string[]): Promise<CliResult> {
  return vmbackup(['restore', ...args, ...ws.args(sim)]);
}

/** What a folder holds, to prove nothing (no partial file) was left behind. */
async function names(dir: string): Promise<string[]> {
  return (await readdir(dir)).sort();
}

/** The first non-zero chunk of a point's disk: its digest and its file in the store. */
async function firstChunk(point: MadePoint, disk: string): Promise<{ digest: string; file: string }> {
  const store = await ChunkStore.open(ws.exports);
  const index = await IndexReader.open(path.join(point.dir, `${disk}.cidx`));
  try {
    for (let i = 0; i < index.chunkCount; i++) {
      const digest = (await index.digest(i)).toString('hex');
      if (!/^0+$/.test(digest)) return { digest, file: store.chunkPath(digest) };
    }
  } finally {
    await index.close();
  }
  throw new Error(`disk ${disk} has no data`);
}

describe('vmbackup restore POINT --to-file: a disk of a point to a local file, no pool', () => {
  it('raw: the disk byte for byte, addressed by the point folder or its manifest.json', async () => {
    const out = path.join(ws.base, 'files');
    for (const [disk, point] of [['xvda', web1.dir], ['xvdb', path.join(web1.dir, 'manifest.json')]] as const) {
      const to = path.join(out, `${disk}.raw`);
      // No pool: the connection options are not given at all.
      const result = await vmbackup(['restore', point, '--disk', disk, '--to-file', to, '-b', ws.base]);
      expect(result.stderr).toBe('');
      expect(result.code).toBe(0);
      expect(result.stdout).toContain(`Wrote disk ${disk} of point web1/point_20261206-080000 to ${to} (raw`);
      expect((await readFile(to)).equals(web1.disks.get(disk)!)).toBe(true);
    }
    expect(await names(out)).toEqual(['xvda.raw', 'xvdb.raw']);
  });

  it('vhd: qemu-img converts it back to the raw bytes and vhdiinfo reads it as a dynamic VHD', async () => {
    for (const disk of ['xvda', 'xvdb']) {
      const to = path.join(ws.base, `web1-${disk}.vhd`);
      const result = await vmbackup(['restore', web1.dir, '--disk', disk, '--to-file', to, '--format', 'vhd', '-b', ws.base, '--json']);
      expect(result.code).toBe(0);
      expect(JSON.parse(result.stdout)).toMatchObject({ status: 'success', disk, format: 'vhd', diskSize: web1.disks.get(disk)!.length });
      const raw = path.join(ws.base, `web1-${disk}.from-vhd.raw`);
      execFileSync('qemu-img', ['convert', '--image-opts', `driver=vpc,force_size_calc=current_size,file.filename=${to}`, '-O', 'raw', raw]);
      expect((await readFile(raw)).equals(web1.disks.get(disk)!)).toBe(true);
      const info = execFileSync('vhdiinfo', [to], { encoding: 'utf8' });
      expect(info).toMatch(/Disk type\s*:\s*Dynamic/);
      expect(info).toContain(`(${web1.disks.get(disk)!.length} bytes)`);
    }
  });

  it('refuses what does not fit: exit 2, nothing written', async () => {
    const to = path.join(ws.base, 'refused.raw');
    const cases: [string[], string][] = [
      [[web1.dir, '--to-file', to], 'holds 2 disks (xvda, xvdb): choose one with --disk'],
      [[web1.dir, '--disk', 'xvdz', '--to-file', to], 'has no such disk (disks: xvda, xvdb)'],
      [[web1.dir, '--disk', 'xvda', '--to-file', to, '--format', 'qcow2'], '--format qcow2: raw or vhd'],
      [[web1.dir, '--disk', 'xvda', '--to-file', to, '--sr', 'NFS'], '--sr does not apply to --to-file'],
      [[web1.dir, '--disk', 'xvda', '--format', 'vhd'], '--format goes with --to-file'],
      [[path.join(web1.dir, '..', 'point_20991231-000000'), '--disk', 'xvda', '--to-file', to], 'no such file'],
      [[web1.dir, '--disk', 'xvda', '--to-file', path.join(web1.dir, 'manifest.json')], 'the file exists'],
    ];
    for (const [args, message] of cases) {
      const result = await vmbackup(['restore', ...args, '-b', ws.base]);
      expect(result.stderr).toContain(message);
      expect(result.code).toBe(2);
    }
    expect(await names(ws.base)).not.toContain('refused.raw');
  }, 120_000);
});

interface SimRecord {
  ref: string;
  uuid: string;
  [field: string]: unknown;
}

/** A VM's disks by device: their bytes. */
async function disksOf(vmUuid: string): Promise<Map<string, Buffer>> {
  const vm = sim.state.record('VM', vmUuid) as SimRecord;
  const out = new Map<string, Buffer>();
  for (const vbdRef of vm.VBDs as string[]) {
    const vbd = sim.state.record('VBD', vbdRef) as SimRecord;
    if (vbd.type === 'Disk') out.set(vbd.device as string, await readAll(sim.state.disk(vbd.VDI as string)));
  }
  return out;
}

/** Everything that counts as "created on the pool". */
function census(): { vms: number; vdis: number; vbds: number } {
  return { vms: sim.state.records('VM').length, vdis: sim.state.records('VDI').length, vbds: sim.state.records('VBD').length };
}

/** Destroys a VM the test restored, and its disks. */
async function destroyRestored(uuid: string): Promise<void> {
  const vm = sim.state.record('VM', uuid) as SimRecord;
  const vdis = (vm.VBDs as string[]).map((v) => sim.state.record('VBD', v) as SimRecord).filter((v) => v.type === 'Disk').map((v) => v.VDI as string);
  await xapi.call('VM.destroy', vm.ref);
  for (const vdi of vdis) await xapi.call('VDI.destroy', vdi);
}

type Restored = { format: string; created: { vms: { uuid: string; name: string }[]; vdis: { uuid: string; name: string }[] }; attached?: { vm: { name: string }; device: string } };

describe('vmbackup restore POINT into the pool', () => {
  it('the whole VM: an XVA made from its metadata and chunks goes to /import; every disk is the point\'s, byte for byte', async () => {
    const before = census();
    const result = await restoreCmd([web1.dir, '--json']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const out = JSON.parse(result.stdout) as Restored;
    expect(out.format).toBe('point');
    expect(out.created.vms).toHaveLength(1);
    const vm = out.created.vms[0]!;
    expect(vm.name).toBe('web1 (restored 20261206-080000)');
    const disks = await disksOf(vm.uuid);
    expect([...disks.keys()].sort()).toEqual(['xvda', 'xvdb']);
    for (const [device, bytes] of web1.disks) expect(disks.get(device)!.equals(bytes)).toBe(true);
    // The VM alone: not its snapshot, not the ISO of its CD drive (left empty), its VIF with its MAC.
    expect(census()).toEqual({ vms: before.vms + 1, vdis: before.vdis + 2, vbds: before.vbds + 3 });
    const rec = sim.state.record('VM', vm.uuid) as SimRecord;
    expect(rec.power_state).toBe('Halted');
    expect((rec.VIFs as string[]).map((v) => (sim.state.record('VIF', v) as SimRecord).MAC)).toEqual(['aa:bb:cc:dd:ee:01']);
    const cd = (rec.VBDs as string[]).map((v) => sim.state.record('VBD', v) as SimRecord).find((v) => v.type === 'CD')!;
    expect(cd.empty).toBe(true);
    expect((sim.state.record('VDI', out.created.vdis[0]!.uuid) as SimRecord).other_config).toMatchObject({ 'vmbackup:restored-from': 'web1/point_20261206-080000' });
    await destroyRestored(vm.uuid);
  }, 120_000);

  it('one disk (--disk) through /import_raw_vdi, given to another VM with --attach', async () => {
    const result = await restoreCmd([path.join(web1.dir, 'manifest.json'), '--disk', 'xvdb', '--attach', 'app', '--json']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const out = JSON.parse(result.stdout) as Restored;
    expect(out.created.vms).toEqual([]);
    expect(out.created.vdis).toHaveLength(1);
    expect(out.attached).toMatchObject({ vm: { name: 'app' } });
    const vdi = sim.state.record('VDI', out.created.vdis[0]!.uuid) as SimRecord;
    expect((await readAll(sim.state.disk(vdi.ref))).equals(web1.disks.get('xvdb')!)).toBe(true);
    expect(Number(vdi.virtual_size)).toBe(web1.disks.get('xvdb')!.length);
    const vbd = (vdi.VBDs as string[])[0]!;
    await xapi.call('VBD.destroy', vbd);
    await xapi.call('VDI.destroy', vdi.ref);
  }, 120_000);
});

describe('vmbackup restore POINT --vdi: into an existing VDI', () => {
  it('its content replaced by the disk of the point, after every chunk was checked', async () => {
    const sr = sim.state.records('SR').find((r) => r.name_label === 'NFS')!;
    const target = await xapi.call<string>('VDI.create', { name_label: 'scratch', name_description: '', SR: sr.ref, virtual_size: String(8 << 20), type: 'user', sharable: false, read_only: false, other_config: {}, xenstore_data: {}, sm_config: {}, tags: [] });
    const uuid = await xapi.call<string>('VDI.get_uuid', target);
    const result = await restoreCmd([web1.dir, '--disk', 'xvda', '--vdi', uuid, '--json']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ created: { vms: [], vdis: [] }, overwritten: { uuid } });
    const bytes = await readAll(sim.state.disk(target));
    expect(bytes.subarray(0, 6 << 20).equals(web1.disks.get('xvda')!)).toBe(true);
    await xapi.call('VDI.destroy', target);
  }, 120_000);
});

describe('vmbackup restore POINT: a damaged point restores nothing', () => {
  /** Runs `body` with one chunk of web1's xvda damaged (`corrupt`) or gone, then puts it back. */
  async function withDamagedChunk(how: 'missing' | 'corrupt', body: (digest: string) => Promise<void>): Promise<void> {
    const { digest, file } = await firstChunk(web1, 'xvda');
    const saved = await readFile(file);
    if (how === 'missing') await unlink(file);
    else {
      const bad = Buffer.from(saved);
      bad[bad.length - 5] = bad[bad.length - 5]! ^ 0xff;
      await writeFile(file, bad);
    }
    try {
      await body(digest);
    } finally {
      await writeFile(file, saved);
    }
  }

  it.each(['missing', 'corrupt'] as const)('a %s chunk: the whole VM fails naming the point and the chunk, exit 1, the half-imported VM is gone', async (how) => {
    await withDamagedChunk(how, async (digest) => {
      const before = census();
      const result = await restoreCmd([web1.dir]);
      expect(result.code).toBe(1);
      expect(result.stderr).toContain('restore of point web1/point_20261206-080000 failed');
      expect(result.stderr).toContain(`chunk ${digest}`);
      expect(result.stderr).toContain(how === 'missing' ? 'is missing' : 'does not');
      expect(census()).toEqual(before);
    });
  }, 120_000);

  it('a missing chunk: one disk into the pool fails the same way, its new VDI destroyed', async () => {
    await withDamagedChunk('missing', async (digest) => {
      const before = census();
      const result = await restoreCmd([web1.dir, '--disk', 'xvda', '--json']);
      expect(result.code).toBe(1);
      const out = JSON.parse(result.stdout) as { status: string; error: { code: string; message: string } };
      expect(out).toMatchObject({ status: 'failed', error: { code: 'CHUNK_MISSING' } });
      expect(out.error.message).toContain(`point web1/point_20261206-080000, disk xvda: chunk ${digest} is missing`);
      expect(census()).toEqual(before);
    });
  }, 120_000);

  it('a missing chunk with --vdi: refused before the existing VDI is written, its content untouched', async () => {
    const sr = sim.state.records('SR').find((r) => r.name_label === 'NFS')!;
    const target = await xapi.call<string>('VDI.create', { name_label: 'keep me', name_description: '', SR: sr.ref, virtual_size: String(8 << 20), type: 'user', sharable: false, read_only: false, other_config: {}, xenstore_data: {}, sm_config: {}, tags: [] });
    const before = await readAll(sim.state.disk(target));
    const uploads = sim.state.transfers('import_raw_vdi').length;
    await withDamagedChunk('missing', async (digest) => {
      const result = await restoreCmd([web1.dir, '--disk', 'xvda', '--vdi', await xapi.call<string>('VDI.get_uuid', target)]);
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(`chunk ${digest} is missing`);
    });
    expect((await readAll(sim.state.disk(target))).equals(before)).toBe(true);
    expect(sim.state.transfers('import_raw_vdi')).toHaveLength(uploads);
    await xapi.call('VDI.destroy', target);
  }, 120_000);

  it.each(['raw', 'vhd'])('a corrupt chunk: --to-file (%s) fails naming the chunk, exit 1, no file and no partial file left', async (format) => {
    await withDamagedChunk('corrupt', async (digest) => {
      const dir = path.join(ws.base, `damaged-${format}`);
      const result = await vmbackup(['restore', web1.dir, '--disk', 'xvda', '--to-file', path.join(dir, 'xvda.img'), '--format', format, '-b', ws.base]);
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(`point web1/point_20261206-080000, disk xvda: chunk ${digest}`);
      expect(await names(dir).catch(() => [])).toEqual([]);
    });
  }, 120_000);

  it('an incomplete point (no manifest.json) is refused with exit 1, into the pool and to a file', async () => {
    const dir = path.join(ws.exports, 'web1', 'point_20261206-090000');
    await mkdir(dir);
    await writeFile(path.join(dir, 'xvda.cidx'), await readFile(path.join(web1.dir, 'xvda.cidx')));
    const before = census();
    for (const args of [[dir, ...ws.args(sim)], [dir, '--disk', 'xvda', '--to-file', path.join(ws.base, 'incomplete.raw'), '-b', ws.base]]) {
      const result = await vmbackup(['restore', ...args]);
      expect(result.code).toBe(1);
      expect(result.stderr).toContain('point web1/point_20261206-090000 is incomplete (no manifest.json): its backup did not finish, so it cannot be restored');
    }
    expect(census()).toEqual(before);
    expect(await names(ws.base)).not.toContain('incomplete.raw');
    await rm(dir, { recursive: true });
  }, 120_000);
});

describe('a full point, 7 incremental ones, pruned to 4 with GC between: every kept point restores bit for bit', () => {
  it('to raw files, the newest also as a VHD that qemu-img reads back, and the oldest kept one as a whole VM into the pool', async () => {
    const backupDir = path.join(ws.base, 'chain');
    await mkdir(backupDir);
    const made: MadePoint[] = [await pointOfVm(sim, xapi, backupDir, 'web1', { stamp: '20261201-080000', chunkSize: 64 << 10 })];
    for (let day = 2; day <= 8; day++) {
      const blocks = sim.state.churn('web1', 2);
      made.push(await pointOfVm(sim, xapi, backupDir, 'web1', { stamp: `2026120${day}-080000`, changes: { base: made.at(-1)!.ref, blocks } }));
    }
    expect(made.slice(1).every((p) => p.manifest.disks.every((d) => d.mode === 'changes'))).toBe(true);
    // Each day's churn changed the disks: every point holds other bytes than the one before.
    for (let i = 1; i < made.length; i++) expect(made[i]!.disks.get('xvda')!.equals(made[i - 1]!.disks.get('xvda')!)).toBe(false);
    const store = await ChunkStore.open(backupDir);
    const chunkFiles = async () => (await Promise.all((await readdir(store.chunksDir)).map((d) => readdir(path.join(store.chunksDir, d))))).flat().filter((n) => /^[0-9a-f]{64}$/.test(n)).length;
    const before = await chunkFiles();
    for (const old of made.slice(0, 4)) await removePoint(store, old.ref);
    // The first GC sets unreferenced chunks aside, the second deletes them (see runtime/chunkstore/README.md).
    await collectGarbage(store, { safetyMarginMs: 0 });
    await collectGarbage(store, { safetyMarginMs: 0 });
    expect(await chunkFiles()).toBeLessThan(before);
    const kept = made.slice(4);
    for (const point of kept) {
      for (const [disk, bytes] of point.disks) {
        const to = path.join(backupDir, `${point.ref.stamp}-${disk}.raw`);
        const result = await vmbackup(['restore', point.dir, '--disk', disk, '--to-file', to, '-b', ws.base]);
        expect(result.code, result.stderr).toBe(0);
        expect((await readFile(to)).equals(bytes)).toBe(true);
      }
    }
    const newest = kept.at(-1)!;
    const vhd = path.join(backupDir, 'newest-xvda.vhd');
    expect((await vmbackup(['restore', newest.dir, '--disk', 'xvda', '--to-file', vhd, '--format', 'vhd', '-b', ws.base])).code).toBe(0);
    execFileSync('qemu-img', ['convert', '--image-opts', `driver=vpc,force_size_calc=current_size,file.filename=${vhd}`, '-O', 'raw', `${vhd}.raw`]);
    expect((await readFile(`${vhd}.raw`)).equals(newest.disks.get('xvda')!)).toBe(true);

    const result = await restoreCmd([kept[0]!.dir, '--json']);
    expect(result.code, result.stderr).toBe(0);
    const vm = (JSON.parse(result.stdout) as Restored).created.vms[0]!;
    const disks = await disksOf(vm.uuid);
    for (const [device, bytes] of kept[0]!.disks) expect(disks.get(device)!.equals(bytes)).toBe(true);
    await destroyRestored(vm.uuid);
  }, 300_000);
});
