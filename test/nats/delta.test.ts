import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChunkStore, PointWriter, STORE_FOLDER, listPoints } from '../../runtime/chunkstore/chunkstore.js';
import type { RunSummary } from '../../runtime/run/summary.js';
import { XapiClient } from '../../runtime/xapi/client.js';
import { vmbackup } from '../helpers/cli.js';
import { diskBytes, pointDisk, snapshotsLeft } from '../e2e/delta-helpers.js';
import { startRig } from './rig.js';
import type { Rig } from './rig.js';

/** Bytes of every chunk file of the store. */
async function chunkBytes(backupDir: string): Promise<number> {
  const root = path.join(backupDir, STORE_FOLDER, 'chunks');
  let total = 0;
  for (const prefix of await readdir(root)) {
    for (const name of await readdir(path.join(root, prefix))) total += (await stat(path.join(root, prefix, name))).size;
  }
  return total;
}

/**
 * Two VMs cloned from one template, backed up as delta-exports at the same time by two
 * `vmbackup worker` processes over a real nats-server, into one chunk store.
 */
let rig: Rig;
beforeAll(async () => {
  rig = await startRig({
    credentials: { user: 'root', password: 'secret' },
    hosts: [{ name_label: 'xcp1' }],
    srs: [{ name_label: 'NFS', size_gib: 100, used_gib: 10 }],
    networks: [{ name_label: 'Storage', purpose: ['nbd'] }],
    vms: [
      { name_label: 'tpl', power_state: 'Halted', is_a_template: true, disks: [{ device: 'xvda', size_mib: 64, fill: 'pattern' }], vifs: [] },
      { name_label: 'clone1', power_state: 'Halted', disks: [], vifs: [] },
      { name_label: 'clone2', power_state: 'Halted', disks: [], vifs: [] },
    ],
  });
  // Each clone gets a copy of the template's disk (VDI.clone), then writes 1 % of its own.
  const xapi = await XapiClient.connect({ url: rig.sim.url, user: 'root', password: 'secret', ca: readFileSync(rig.sim.caFile!, 'utf8') });
  try {
    const tpl = rig.sim.state.records('VM').find((v) => v.name_label === 'tpl')!;
    const tplVdi = rig.sim.state.record('VBD', (tpl.VBDs as string[])[0]!)!.VDI as string;
    for (const name of ['clone1', 'clone2']) {
      const vdi = await xapi.call<string>('VDI.clone', tplVdi, {});
      await xapi.createVbd({ vm: rig.sim.state.vm(name).ref as string, vdi, userdevice: '0', bootable: true });
      rig.sim.state.churn(name, 1);
    }
  } finally {
    await xapi.close();
  }
  await Promise.all([rig.worker(), rig.worker()]);
}, 120_000);
afterAll(async () => {
  await rig?.close();
});

describe('delta-exports through NATS', () => {
  it('two workers write two clones into one store at once: both points whole, the store well below two fulls, no snapshot but the bases', async () => {
    const r = await vmbackup(['run', ...rig.args('--delta-export', 'clone.*', '--concurrency', '2', '--json')], { timeoutMs: 180_000 });
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout) as RunSummary;
    expect(summary.categories['delta-export']).toEqual({ S: 2, W: 0, E: 0 });
    // Each VM's point was written by one of the workers.
    const written = rig.workers.flatMap((w) => w.output().match(/^\S+: point \S+ written/gm) ?? []);
    expect(written.map((l) => l.split(':')[0]).sort()).toEqual(['clone1', 'clone2']);

    const store = await ChunkStore.open(rig.ws.exports);
    for (const name of ['clone1', 'clone2']) {
      const { points } = await listPoints(store, name);
      expect(points).toHaveLength(1);
      // A halted VM's disk has no device name yet: it is named by its userdevice.
      expect(points[0]!.manifest.disks.map((d) => d.name)).toEqual(['userdevice0']);
      expect((await pointDisk(store, points[0]!, 'userdevice0')).equals(await diskBytes(rig.sim, name, ''))).toBe(true);
    }
    // Identical chunks are stored once: both clones cost far less than two fulls. One full,
    // measured now: clone1's disk alone in a store of its own.
    const alone = await ChunkStore.open(await mkdtemp(path.join(os.tmpdir(), 'vmb-alone-')));
    const point = await PointWriter.begin(alone, { vmFolder: 'clone1', vm: { uuid: 'u', name: 'clone1' } });
    const oneFull = (await point.addDisk('xvda', Readable.from([await diskBytes(rig.sim, 'clone1', '')]))).newBytes;
    await point.commit();
    const both = await chunkBytes(rig.ws.exports);
    expect(both).toBeGreaterThanOrEqual(oneFull);
    expect(both).toBeLessThan(1.5 * oneFull);
    expect(snapshotsLeft(rig.sim).vms).toEqual([]);
    expect(snapshotsLeft(rig.sim).vdis.map((v) => v.type)).toEqual(['cbt_metadata', 'cbt_metadata']);
  });
});
