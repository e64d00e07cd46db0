import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { readFile, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ChunkStore, IndexReader } from '../../runtime/chunkstore/chunkstore.js';
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
const pool: PoolSpecInput = {
  credentials: { user: 'root', password: 'secret' },
  hosts: [{ name_label: 'xcp1' }],
  srs: [{ name_label: 'NFS', size_gib: 100, used_gib: 10 }],
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
      snapshots: [{ name_label: 'web1 before upgrade' }],
    },
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
