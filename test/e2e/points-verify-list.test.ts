import { readFileSync } from 'node:fs';
import { mkdir, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChunkStore, IndexReader } from '../../runtime/chunkstore/chunkstore.js';
import { XapiClient } from '../../runtime/xapi/client.js';
import type { PoolSpecInput } from '../sim/pool-spec.js';
import type { Simulator } from '../sim/server.js';
import { httpsSim, vmbackup, workspace } from '../helpers/cli.js';
import type { CliResult, Workspace } from '../helpers/cli.js';
import { pointOfVm } from '../helpers/points.js';
import type { MadePoint } from '../helpers/points.js';

/**
 * `vmbackup verify` and `vmbackup list` on points of the chunk store, with the real command:
 * every chunk checked, a sample, recent checks skipped, a damaged chunk named with the other
 * points sharing it; points listed beside sets with what each costs the store.
 */

const pool: PoolSpecInput = {
  credentials: { user: 'root', password: 'secret' },
  hosts: [{ name_label: 'xcp1' }],
  srs: [{ name_label: 'NFS', size_gib: 100, used_gib: 10 }],
  vms: [{ name_label: 'web1', power_state: 'Running', disks: [{ device: 'xvda', size_mib: 6, fill: 'pattern' }, { device: 'xvdb', size_mib: 5, fill: 'sparse' }], vifs: [] }],
};

let sim: Simulator;
let xapi: XapiClient;
let ws: Workspace;
const points: MadePoint[] = [];
/** Distinct chunks of web1's points (all share them). */
let distinct = 0;
beforeAll(async () => {
  sim = await httpsSim(pool);
  xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'secret', ca: readFileSync(sim.caFile!, 'utf8') });
  ws = await workspace();
  // Two points of web1 and one of a clone of it in another folder: the same chunks, stored once.
  points.push(await pointOfVm(sim, xapi, ws.exports, 'web1', { stamp: '20261206-080000' }));
  points.push(await pointOfVm(sim, xapi, ws.exports, 'web1', { stamp: '20261207-080000' }));
  points.push(await pointOfVm(sim, xapi, ws.exports, 'web1', { stamp: '20261206-080000', vmFolder: 'clone' }));
  const digests = new Set<string>();
  for (const disk of ['xvda', 'xvdb']) {
    const index = await IndexReader.open(path.join(points[0]!.dir, `${disk}.cidx`));
    for await (const [, d] of index.entries()) if (!/^0+$/.test(d.toString('hex'))) digests.add(d.toString('hex'));
    await index.close();
  }
  distinct = digests.size;
}, 60_000);
afterAll(async () => {
  await xapi?.close();
  await sim?.close();
  if (ws !== undefined) await rm(ws.base, { recursive: true, force: true });
});

function verifyCmd(args: string[]): Promise<CliResult> {
  return vmbackup(['verify', ...args, '-b', ws.base]);
}

interface JsonVerify {
  exitCode: number;
  sets: { folder: string; stamp: string; point?: boolean; status: string; verified?: { ok: boolean; error?: { code: string; message: string }; point?: { chunksChecked: number; chunksSkipped: number; samplePercent: number; badChunks: { digest: string; points: string[] }[] } } }[];
}

describe('vmbackup verify on points', () => {
  it('checks every chunk of every point; a later run with --skip-verified skips those found good; --sample checks a part', async () => {
    const all = await verifyCmd([]);
    expect(all.stderr).toBe('');
    expect(all.code).toBe(0);
    expect(all.stdout).toMatch(/^OK\s+clone\/point_20261206-080000  \d+ chunks checked/m);
    expect(all.stdout).toContain(`OK          web1/point_20261207-080000  ${distinct} chunks checked`);
    expect(all.stdout).toContain(`verify: 3 sets: 3 OK, 0 FAILED; ${3 * distinct} chunks of points checked`);
    const first = JSON.parse((await verifyCmd(['web1', '--json'])).stdout) as JsonVerify;
    expect(first.sets.map((s) => [s.folder, s.stamp, s.point, s.status])).toEqual([
      ['web1', '20261206-080000', true, 'ok'],
      ['web1', '20261207-080000', true, 'ok'],
    ]);
    expect(first.sets[0]!.verified!.point).toMatchObject({ chunksChecked: distinct, chunksSkipped: 0, samplePercent: 100 });
    const recorded = JSON.parse(await readFile(path.join(points[0]!.dir, 'verified.json'), 'utf8')) as { ok: boolean; chunksChecked: number };
    expect(recorded).toMatchObject({ ok: true, chunksChecked: distinct });

    const skipping = JSON.parse((await verifyCmd([points[0]!.dir, '--skip-verified', '1', '--json'])).stdout) as JsonVerify;
    expect(skipping.sets[0]!.verified!.point).toMatchObject({ chunksChecked: 0, chunksSkipped: distinct });

    const sample = JSON.parse((await verifyCmd([points[0]!.dir, '--sample', '50', '--json'])).stdout) as JsonVerify;
    const checked = sample.sets[0]!.verified!.point!.chunksChecked;
    expect(sample.sets[0]!.verified!.point!.samplePercent).toBe(50);
    expect(checked).toBeGreaterThan(0);
    expect(checked).toBeLessThan(distinct);
  }, 120_000);

  it('a damaged chunk: FAILED naming the point and the chunk, and the other points that share it; exit 1; never skipped as recently checked', async () => {
    const store = await ChunkStore.open(ws.exports);
    const index = await IndexReader.open(path.join(points[0]!.dir, 'xvda.cidx'));
    const digest = (await index.digest(1)).toString('hex');
    await index.close();
    const file = store.chunkPath(digest);
    const saved = await readFile(file);
    await unlink(file);
    try {
      for (const extra of [[], ['--skip-verified', '30']]) {
        const result = await verifyCmd([points[0]!.dir, ...extra]);
        expect(result.code).toBe(1);
        expect(result.stdout).toContain(`FAILED      web1/point_20261206-080000  web1/point_20261206-080000, disk xvda: chunk ${digest} is missing`);
        expect(result.stdout).toContain('; the chunk is also used by clone/point_20261206-080000, web1/point_20261207-080000');
      }
      const json = JSON.parse((await verifyCmd([points[0]!.dir, '--json'])).stdout) as JsonVerify;
      expect(json.exitCode).toBe(1);
      expect(json.sets[0]!.verified!.error!.code).toBe('VERIFY_CHUNK_BAD');
      expect(json.sets[0]!.verified!.point!.badChunks).toEqual([{ digest, message: expect.stringContaining('missing'), points: ['clone/point_20261206-080000', 'web1/point_20261207-080000'] }]);
      expect(JSON.parse(await readFile(path.join(points[0]!.dir, 'verified.json'), 'utf8'))).toMatchObject({ ok: false });
    } finally {
      await writeFile(file, saved);
    }
    expect((await verifyCmd([points[0]!.dir])).code).toBe(0);
  }, 120_000);

  it('an incomplete point (no manifest) is INCOMPLETE, not a failure; usage errors exit 2', async () => {
    const dir = path.join(ws.exports, 'web1', 'point_20261208-080000');
    await mkdir(dir);
    const result = await verifyCmd(['web1']);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^INCOMPLETE\s+web1\/point_20261208-080000  no manifest/m);
    await rm(dir, { recursive: true });
    for (const [args, message] of [[['--sample', '0'], '--sample 0: a percentage'], [['--skip-verified', 'x'], '--skip-verified x: a number of days']] as const) {
      const bad = await verifyCmd([...args]);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toContain(message);
    }
  }, 120_000);
});

describe('vmbackup list shows points beside sets', () => {
  it('stamp, time, size, full or changes, bytes stored, verification, disks; --json and one VM', async () => {
    const result = await vmbackup(['list', '-b', ws.base]);
    expect(result.code, result.stderr).toBe(0);
    const lines = result.stdout.split('\n');
    const uuid = sim.state.vm('web1').uuid as string;
    const at = lines.indexOf(`web1 (${uuid})`);
    expect(at).toBeGreaterThanOrEqual(0);
    // Newest first; the second point of the same bytes added nothing to the store.
    expect(lines[at + 1]).toMatch(/^ {2}point 20261207-080000 {2}\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ {2}11.0 MiB {2}full, 0 B stored {2}complete {2}verified OK at \d{4}-/);
    expect(lines[at + 2]).toBe('    xvda 6.0 MiB, xvdb 5.0 MiB');
    expect(lines[at + 3]).toMatch(/^ {2}point 20261206-080000 .* {2}11.0 MiB {2}full, [\d.]+ [KM]iB stored {2}complete {2}verified OK at /);
    expect(lines).toContain(`clone (web1, ${uuid})`);

    const json = JSON.parse((await vmbackup(['list', 'clone', '--json', '-b', ws.base])).stdout) as { vms: { folder: string; sets: unknown[]; points: { stamp: string; kind: string; bytes: number; storedBytes: number; complete: boolean; disks: { name: string }[]; verify?: { ok: boolean } }[] }[] };
    expect(json.vms.map((v) => v.folder)).toEqual(['clone']);
    expect(json.vms[0]!.sets).toEqual([]);
    expect(json.vms[0]!.points).toMatchObject([{ stamp: '20261206-080000', kind: 'full', complete: true, bytes: 11 << 20, storedBytes: 0, disks: [{ name: 'xvda' }, { name: 'xvdb' }], verify: { ok: true } }]);
  }, 60_000);
});
