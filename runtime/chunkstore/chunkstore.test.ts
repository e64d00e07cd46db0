import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { decompress } from 'zstd-napi';
import { verifyVhd, vhdDiskWrites } from '../formats/vhd.js';
import {
  ChunkError,
  ChunkStore,
  PointWriter,
  ZERO_DIGEST,
  collectGarbage,
  chunkVerifiedAt,
  listPoints,
  openPoint,
  rangesFromCbtBitmap,
  readDiskRaw,
  readDiskVhd,
  removePoint,
  verifyPoints,
  writeDisk,
} from './chunkstore.js';
import type { ByteRange, DiskReader, PointRef } from './chunkstore.js';
import { IndexReader } from './index-file.js';

const KiB = 1024;
const CS = 128 * KiB; // small chunks: two CBT blocks each
const dirs: string[] = [];

async function tmp(): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'chunkstore-'));
  dirs.push(d);
  return d;
}
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function storeAt(dir?: string, opts: { now?: () => number } = {}): Promise<ChunkStore> {
  return ChunkStore.open(dir ?? (await tmp()), { chunkSize: CS, ...opts });
}

/** A disk image: random, compressible, zero and repeated regions. */
function diskImage(size: number, seed = 1): Buffer {
  const b = Buffer.alloc(size);
  let x = seed;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>>= 0);
  };
  for (let at = 0; at < size; at += 16 * KiB) {
    next();
    const kind = x % 4;
    const n = Math.min(16 * KiB, size - at);
    if (kind === 0) randomBytes(n).copy(b, at);
    else if (kind === 1) b.fill(`text ${x} `, at, at + n);
    else if (kind === 2) b.fill(0xab, at, at + n);
    // kind 3: zeros
  }
  return b;
}

function pieces(buf: Buffer, size = 50_000): Readable {
  const parts: Buffer[] = [];
  for (let at = 0; at < buf.length; at += size) parts.push(buf.subarray(at, at + size));
  return Readable.from(parts);
}

async function readAll(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of r) parts.push(p as Buffer);
  return Buffer.concat(parts);
}

function fileReader(data: Buffer, reads: ByteRange[] = []): DiskReader {
  return {
    size: data.length,
    read: async (offset, length) => {
      reads.push({ offset, length });
      return Buffer.from(data.subarray(offset, offset + length));
    },
  };
}

async function backup(store: ChunkStore, vmFolder: string, stamp: string, disks: Record<string, Buffer>): Promise<PointRef> {
  const p = await PointWriter.begin(store, { vmFolder, stamp, vm: { uuid: `uuid-${vmFolder}`, name: vmFolder } });
  for (const [name, data] of Object.entries(disks)) await p.addDisk(name, pieces(data));
  await p.setMeta(`<vm name="${vmFolder}"/>`);
  await p.commit();
  return { vmFolder, stamp };
}

/**
 * Resolves once a file written in `dir` gets a time later than `t` (ms). File times come from
 * the kernel's coarse clock, a tick (a few ms) at a time: two GCs within one tick read the
 * same time, and "set aside before this GC started" cannot be told from "at its start".
 */
async function fsClockPast(dir: string, t: number): Promise<void> {
  const probe = path.join(dir, 'clock-probe');
  while ((await writeFile(probe, ''), await stat(probe)).mtimeMs <= t) await new Promise((resolve) => setTimeout(resolve, 1));
  await rm(probe);
}

async function chunkFiles(store: ChunkStore): Promise<string[]> {
  const out: string[] = [];
  for (const prefix of await readdir(store.chunksDir)) for (const f of await readdir(path.join(store.chunksDir, prefix))) out.push(f);
  return out.sort();
}

describe('chunks', () => {
  it('stores a chunk once under its SHA-256, zstd-compressed, and reads it back checked', async () => {
    const store = await storeAt();
    const data = Buffer.alloc(CS, 'hello ');
    const a = await store.put(data);
    const b = await store.put(Buffer.from(data));
    expect(a.written).toBe(true);
    expect(b.written).toBe(false);
    expect(a.digest.toString('hex')).toBe(createHash('sha256').update(data).digest('hex'));
    const file = store.chunkPath(a.digest);
    expect(path.basename(file)).toBe(a.digest.toString('hex'));
    const packed = await readFile(file);
    expect(packed.length).toBeLessThan(1000);
    expect(decompress(packed).equals(data)).toBe(true);
    expect((await store.get(a.digest)).equals(data)).toBe(true);
  });

  it('does not store all-zero chunks', async () => {
    const store = await storeAt();
    const r = await store.put(Buffer.alloc(CS));
    expect(r).toEqual({ digest: ZERO_DIGEST, written: false, storedBytes: 0 });
    expect(await readdir(store.chunksDir)).toEqual([]);
    expect((await store.get(ZERO_DIGEST, 10)).equals(Buffer.alloc(10))).toBe(true);
  });

  it('names a corrupted or missing chunk', async () => {
    const store = await storeAt();
    const { digest } = await store.put(Buffer.alloc(CS, 'x'));
    const other = await store.put(Buffer.alloc(CS, 'y'));
    await writeFile(store.chunkPath(digest), await readFile(store.chunkPath(other.digest)));
    await expect(store.get(digest)).rejects.toThrow(new RegExp(`chunk ${digest.toString('hex')} does not match its digest`));
    await writeFile(store.chunkPath(digest), 'garbage');
    await expect(store.get(digest)).rejects.toThrow(/does not decompress/);
    await unlink(store.chunkPath(digest));
    const e = await store.get(digest).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ChunkError);
    expect((e as ChunkError).code).toBe('CHUNK_MISSING');
  });

  it('keeps the chunk size it was created with; refuses a bad one', async () => {
    const dir = await tmp();
    await ChunkStore.open(dir, { chunkSize: 64 * KiB });
    expect((await ChunkStore.open(dir, { chunkSize: 1 << 20 })).chunkSize).toBe(64 * KiB);
    await expect(ChunkStore.open(await tmp(), { chunkSize: 100_000 })).rejects.toThrow(/power of two/);
    await writeFile(path.join(dir, '.chunkstore/store.json'), '{"kind":"other"}');
    await expect(ChunkStore.open(dir)).rejects.toThrow(/not a vmbackup chunk store/);
  });
});

describe('writing and reading disks', () => {
  it('a streamed disk comes back byte for byte, raw and as a VHD; zero chunks are not stored', async () => {
    const store = await storeAt();
    const size = 3 * (1 << 20) + 5 * 512; // not a multiple of the chunk size
    const data = diskImage(size);
    data.fill(0, 0, 2 * CS); // two zero chunks
    const ref = await backup(store, 'web1', '20261206-080000', { xvda: data });
    const m = (await openPoint(store, ref)).manifest;
    expect(m.disks[0]).toMatchObject({ name: 'xvda', size, chunkSize: CS, chunks: Math.ceil(size / CS), mode: 'full', readBytes: size });
    expect(m.disks[0]!.zeroChunks).toBeGreaterThanOrEqual(2);
    expect((await readAll(await readDiskRaw(store, ref, 'xvda'))).equals(data)).toBe(true);

    const vhd = await readAll(await readDiskVhd(store, ref, 'xvda'));
    const report = await verifyVhd(Readable.from([vhd]));
    expect(report).toMatchObject({ size, diskType: 'dynamic' });
    expect(report.allocatedBlocks).toBe(2); // 3 MiB of data over two 2 MiB blocks
    const back = Buffer.alloc(size);
    for await (const { offset, data: d } of vhdDiskWrites(Readable.from([vhd]))) d.copy(back, offset);
    expect(back.equals(data)).toBe(true);
  });

  it('dedups identical chunks across disks and VMs (clones of one template stored once)', async () => {
    const store = await storeAt();
    const template = diskImage(1 << 20, 7);
    await backup(store, 'a', '20261206-080000', { xvda: template });
    const before = (await chunkFiles(store)).length;
    const clone = Buffer.from(template);
    clone.fill(0x11, 0, 1000); // one chunk differs
    const ref = await backup(store, 'b', '20261206-080000', { xvda: clone });
    expect((await chunkFiles(store)).length).toBe(before + 1);
    expect((await openPoint(store, ref)).manifest.disks[0]!.newChunks).toBe(1);
  });

  it('an incremental point reads only the chunks that CBT ranges touch, and equals the changed disk', async () => {
    const store = await storeAt();
    const size = 2 << 20;
    const v1 = diskImage(size, 3);
    const base = await backup(store, 'web1', '20261206-080000', { xvda: v1 });
    const v2 = Buffer.from(v1);
    // Three scattered 64 KiB blocks, two of them in the same 128 KiB chunk, one in a zero area.
    const changed = [5 * 64 * KiB, 6 * 64 * KiB, 20 * 64 * KiB];
    for (const off of changed) randomBytes(64 * KiB).copy(v2, off);
    const bitmap = Buffer.alloc(Math.ceil(size / (64 * KiB) / 8));
    for (const off of changed) bitmap[off / (64 * KiB) >> 3]! |= 0x80 >> ((off / (64 * KiB)) & 7);
    const reads: ByteRange[] = [];
    const p = await PointWriter.begin(store, { vmFolder: 'web1', stamp: '20261206-090000', vm: { uuid: 'u', name: 'web1' } });
    const disk = await p.addDiskChanges('xvda', base, rangesFromCbtBitmap(bitmap, size), fileReader(v2, reads));
    await p.commit();
    // 64 KiB blocks 5+6 lie in chunk 2 and 3 (128 KiB chunks: block 5 → chunk 2, 6 → chunk 3), 20 → chunk 10.
    expect(reads.map((r) => r.offset / CS).sort((a, b) => a - b)).toEqual([2, 3, 10]);
    expect(reads.every((r) => r.length === CS)).toBe(true);
    expect(disk).toMatchObject({ mode: 'changes', base: '20261206-080000', readBytes: 3 * CS, newChunks: 3, healedChunks: 0 });
    expect((await readAll(await readDiskRaw(store, { vmFolder: 'web1', stamp: '20261206-090000' }, 'xvda'))).equals(v2)).toBe(true);
    // The base point is untouched and still whole.
    expect((await readAll(await readDiskRaw(store, base, 'xvda'))).equals(v1)).toBe(true);
  });

  it('an incremental point follows a resized disk (grown, then shrunk)', async () => {
    const store = await storeAt();
    const v1 = diskImage(CS * 4 + 4096, 5);
    const base = await backup(store, 'vm', '20261206-080000', { xvda: v1 });
    const grown = Buffer.concat([v1, diskImage(CS * 3, 9)]);
    let p = await PointWriter.begin(store, { vmFolder: 'vm', stamp: '20261206-090000', vm: { uuid: 'u', name: 'vm' } });
    const reads: ByteRange[] = [];
    await p.addDiskChanges('xvda', base, [], fileReader(grown, reads));
    await p.commit();
    expect(reads.map((r) => r.offset / CS)).toEqual([4, 5, 6, 7]); // the old short tail chunk and the new ones
    expect((await readAll(await readDiskRaw(store, { vmFolder: 'vm', stamp: '20261206-090000' }, 'xvda'))).equals(grown)).toBe(true);
    const shrunk = grown.subarray(0, CS * 2 + 512);
    p = await PointWriter.begin(store, { vmFolder: 'vm', stamp: '20261206-100000', vm: { uuid: 'u', name: 'vm' } });
    await p.addDiskChanges('xvda', { vmFolder: 'vm', stamp: '20261206-090000' }, [], fileReader(shrunk));
    await p.commit();
    expect((await readAll(await readDiskRaw(store, { vmFolder: 'vm', stamp: '20261206-100000' }, 'xvda'))).equals(shrunk)).toBe(true);
  });

  it('an unchanged chunk missing from the store is read again from the disk (healed)', async () => {
    const store = await storeAt();
    const v1 = diskImage(CS * 4, 11);
    const base = await backup(store, 'vm', '20261206-080000', { xvda: v1 });
    const idx = await (await openPoint(store, base)).openIndex('xvda');
    const lost = Buffer.from(await idx.digest(1));
    await idx.close();
    await unlink(store.chunkPath(lost));
    const p = await PointWriter.begin(store, { vmFolder: 'vm', stamp: '20261206-090000', vm: { uuid: 'u', name: 'vm' } });
    const d = await p.addDiskChanges('xvda', base, [], fileReader(v1));
    await p.commit();
    expect(d).toMatchObject({ newChunks: 1, readBytes: CS, healedChunks: 1 });
    expect((await readAll(await readDiskRaw(store, base, 'xvda'))).equals(v1)).toBe(true);
  });

  it('refuses changed ranges that are unsorted or outside the disk; the point does not count', async () => {
    const store = await storeAt();
    const v1 = diskImage(CS * 4, 2);
    const base = await backup(store, 'vm', '20261206-080000', { xvda: v1 });
    for (const [ranges, msg] of [
      [[{ offset: 2 * CS, length: 64 * KiB }, { offset: 0, length: 64 * KiB }], /not sorted/],
      [[{ offset: 4 * CS, length: 64 * KiB }], /outside the/],
    ] as const) {
      const p = await PointWriter.begin(store, { vmFolder: 'vm', stamp: '20261206-090000', vm: { uuid: 'u', name: 'vm' } });
      await expect(p.addDiskChanges('xvda', base, ranges, fileReader(v1))).rejects.toThrow(msg);
      await p.abort();
    }
    expect((await listPoints(store, 'vm')).points.map((p) => p.stamp)).toEqual(['20261206-080000']);
    expect(await readdir(path.join(store.backupDir, 'vm'))).toEqual(['point_20261206-080000']);
  });

  it('rangesFromCbtBitmap merges adjacent blocks and clips the last one', () => {
    const bm = Buffer.from([0b1101_0000, 0b0000_0001]);
    expect([...rangesFromCbtBitmap(bm, 16 * 64 * KiB - 100)]).toEqual([
      { offset: 0, length: 128 * KiB },
      { offset: 3 * 64 * KiB, length: 64 * KiB },
      { offset: 15 * 64 * KiB, length: 64 * KiB - 100 },
    ]);
  });

  it('a failing source leaves no index and no point', async () => {
    const store = await storeAt();
    const p = await PointWriter.begin(store, { vmFolder: 'vm', stamp: '20261206-080000', vm: { uuid: 'u', name: 'vm' } });
    async function* broken() {
      yield diskImage(CS * 2);
      throw new Error('connection reset');
    }
    await expect(p.addDisk('xvda', broken())).rejects.toThrow('connection reset');
    await p.abort();
    expect((await listPoints(store)).points).toEqual([]);
    expect(await readdir(path.join(store.backupDir, 'vm'))).toEqual([]);
  });
});

describe('points', () => {
  it('a point counts only once its manifest is written; listing says which are incomplete', async () => {
    const store = await storeAt();
    await backup(store, 'web1', '20261206-080000', { xvda: diskImage(CS * 2) });
    const p = await PointWriter.begin(store, { vmFolder: 'web1', stamp: '20261206-090000', vm: { uuid: 'u', name: 'web1' } });
    await p.addDisk('xvda', pieces(diskImage(CS * 2, 4)));
    const l = await listPoints(store);
    expect(l.points.map((x) => x.stamp)).toEqual(['20261206-080000']);
    expect(l.incomplete.map((x) => x.stamp)).toEqual(['20261206-090000']);
    await p.commit();
    expect((await listPoints(store, 'web1')).points.map((x) => x.stamp)).toEqual(['20261206-080000', '20261206-090000']);
    await expect(PointWriter.begin(store, { vmFolder: 'web1', stamp: '20261206-090000', vm: { uuid: 'u', name: 'web1' } })).rejects.toThrow(/already exists/);
  });

  it('keeps the VM metadata blob, checked against the manifest', async () => {
    const store = await storeAt();
    const ref = await backup(store, 'web1', '20261206-080000', { xvda: diskImage(CS) });
    const point = await openPoint(store, ref);
    expect((await point.readMeta()).toString()).toBe('<vm name="web1"/>');
    await writeFile(path.join(point.dir, 'vm.meta'), '<vm name="evil"/>');
    await expect(point.readMeta()).rejects.toThrow(/does not match the manifest/);
  });

  it('any point can be removed alone: the others stay whole', async () => {
    const store = await storeAt();
    const v1 = diskImage(CS * 6, 1);
    const a = await backup(store, 'vm', '20261206-080000', { xvda: v1 });
    const v2 = Buffer.from(v1);
    v2.fill(1, 0, CS);
    const b = await backup(store, 'vm', '20261206-090000', { xvda: v2 });
    const v3 = Buffer.from(v2);
    v3.fill(2, 2 * CS, 3 * CS);
    const c = await backup(store, 'vm', '20261206-100000', { xvda: v3 });
    await removePoint(store, b); // the middle one
    expect((await listPoints(store)).points.map((x) => x.stamp)).toEqual([a.stamp, c.stamp]);
    expect((await readAll(await readDiskRaw(store, a, 'xvda'))).equals(v1)).toBe(true);
    expect((await readAll(await readDiskRaw(store, c, 'xvda'))).equals(v3)).toBe(true);
    await expect(openPoint(store, b)).rejects.toThrow(/does not exist/);
  });
});

describe('garbage collection', () => {
  it('removes only the chunks no point references: set aside by one GC, deleted by the next', async () => {
    const store = await storeAt();
    const shared = diskImage(CS * 3, 21);
    const a = await backup(store, 'a', '20261206-080000', { xvda: Buffer.concat([shared, Buffer.alloc(CS, 'only a')]) });
    const b = await backup(store, 'b', '20261206-080000', { xvda: Buffer.concat([shared, Buffer.alloc(CS, 'only b')]) });
    const onlyA = createHash('sha256').update(Buffer.alloc(CS, 'only a')).digest('hex');
    const all = await chunkFiles(store);
    await removePoint(store, a);
    const gc1 = await collectGarbage(store, { safetyMarginMs: 0 });
    expect(gc1).toMatchObject({ points: 1, chunksTrashed: 1, chunksRemoved: 0, missing: [] });
    expect(await chunkFiles(store)).toEqual(all.map((f) => (f === onlyA ? f + '.trash' : f)).sort());
    // The next GC deletes what was set aside before it started; in the same clock tick it may not.
    await fsClockPast(store.dir, (await stat(store.chunkPath(onlyA) + '.trash')).ctimeMs);
    const gc2 = await collectGarbage(store, { safetyMarginMs: 0 });
    expect(gc2).toMatchObject({ chunksTrashed: 0, chunksRemoved: 1 });
    expect(await chunkFiles(store)).toEqual(all.filter((f) => f !== onlyA));
    expect((await verifyPoints(store, [b])).ok).toBe(true);
  });

  it('keeps chunks touched within the safety margin', async () => {
    const store = await storeAt();
    const a = await backup(store, 'a', '20261206-080000', { xvda: diskImage(CS * 2, 3) });
    await removePoint(store, a);
    const r = await collectGarbage(store); // default margin: 24 h 5 min
    expect(r.chunksTrashed).toBe(0);
    expect(r.chunksKept).toBe((await chunkFiles(store)).length);
  });

  it('a chunk set aside is brought back by a backup that reuses it, and by the next mark', async () => {
    const store = await storeAt();
    const data = diskImage(CS * 3, 8);
    const a = await backup(store, 'a', '20261206-080000', { xvda: data });
    await removePoint(store, a);
    await collectGarbage(store, { safetyMarginMs: 0 });
    expect((await chunkFiles(store)).every((f) => f.endsWith('.trash'))).toBe(true);
    // A restore still finds a chunk in the trash; a new backup of the same data rescues them.
    const b = await backup(store, 'b', '20261206-080000', { xvda: data });
    expect((await openPoint(store, b)).manifest.disks[0]!.newChunks).toBe(0);
    expect((await chunkFiles(store)).some((f) => f.endsWith('.trash'))).toBe(false);
    // The race a GC has no lock against: a point whose chunk was set aside after it was touched.
    const idx = await (await openPoint(store, b)).openIndex('xvda');
    const d = (await idx.digest(0)).toString('hex');
    await idx.close();
    const { rename } = await import('node:fs/promises');
    await rename(store.chunkPath(d), store.chunkPath(d) + '.trash');
    expect((await readAll(await readDiskRaw(store, b, 'xvda'))).equals(data)).toBe(true);
    await collectGarbage(store, { safetyMarginMs: 0 });
    expect(await chunkFiles(store)).toContain(d);
  });

  it('reports a referenced chunk that is missing, with the points that need it', async () => {
    const store = await storeAt();
    const data = diskImage(CS * 2, 12);
    await backup(store, 'a', '20261206-080000', { xvda: data });
    await backup(store, 'b', '20261206-080000', { xvda: data });
    const d = createHash('sha256').update(data.subarray(0, CS)).digest('hex');
    await unlink(store.chunkPath(d));
    const r = await collectGarbage(store, { safetyMarginMs: 0 });
    expect(r.missing).toEqual([{ digest: d, points: ['a/point_20261206-080000', 'b/point_20261206-080000'] }]);
  });

  it('a running backup keeps what it touched, even from before the GC started', async () => {
    let clock = 1_000_000;
    const store = await storeAt(undefined, { now: () => clock });
    const data = diskImage(CS * 3, 13);
    const old = await backup(store, 'a', '20261206-080000', { xvda: data });
    await removePoint(store, old);
    // A backup starts at t=2,000,000 and reuses the old chunks (touching them), then is slow.
    clock = 2_000_000;
    const p = await PointWriter.begin(store, { vmFolder: 'b', stamp: '20261206-090000', vm: { uuid: 'u', name: 'b' } });
    await p.addDisk('xvda', pieces(data));
    // The GC runs much later, with no margin: its cutoff is the backup's start.
    clock = 9_000_000;
    const r = await collectGarbage(store, { safetyMarginMs: 0 });
    expect(r.cutoff).toBe(new Date(2_000_000).toISOString());
    expect(r.chunksTrashed).toBe(0);
    await p.commit();
    expect((await verifyPoints(store, [{ vmFolder: 'b', stamp: '20261206-090000' }])).ok).toBe(true);
  });

  it('removes point folders left without a manifest and stale partial files', async () => {
    const store = await storeAt();
    await backup(store, 'a', '20261206-080000', { xvda: diskImage(CS, 1) });
    const dir = path.join(store.backupDir, 'a', 'point_20261206-090000');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(dir);
    await writeFile(path.join(dir, 'xvda.cidx.partial'), 'x');
    const prefix = (await readdir(store.chunksDir))[0]!;
    const partial = path.join(store.chunksDir, prefix, 'a'.repeat(64) + '.1234.partial');
    await writeFile(partial, 'x');
    const past = new Date(Date.now() - 60_000);
    await utimes(partial, past, past);
    await utimes(dir, past, past);
    const r = await collectGarbage(store, { safetyMarginMs: 1000 });
    expect(r.incompletePointsRemoved).toEqual(['a/point_20261206-090000']);
    expect(r.partialsRemoved).toBe(1);
    await expect(stat(dir)).rejects.toThrow();
  });

  it('never sweeps what a damaged point may reference', async () => {
    const store = await storeAt();
    const a = await backup(store, 'a', '20261206-080000', { xvda: diskImage(CS * 2, 31) });
    const b = await backup(store, 'b', '20261206-080000', { xvda: diskImage(CS * 2, 32) });
    const before = await chunkFiles(store);
    // a's manifest damaged: kept, its index still marked.
    await writeFile(path.join(store.backupDir, 'a/point_20261206-080000/manifest.json'), '{"kind": "vmbackup-po');
    let r = await collectGarbage(store, { safetyMarginMs: 0 });
    expect(r).toMatchObject({ swept: true, chunksTrashed: 0, incompletePointsRemoved: [] });
    expect(r.damagedPoints).toEqual([expect.stringMatching(/^a\/point_20261206-080000: /)]);
    // b's index truncated: nothing is swept at all.
    const idx = path.join(store.backupDir, 'b/point_20261206-080000/xvda.cidx');
    await writeFile(idx, (await readFile(idx)).subarray(0, 100));
    r = await collectGarbage(store, { safetyMarginMs: 0 });
    expect(r).toMatchObject({ swept: false, chunksTrashed: 0 });
    expect(await chunkFiles(store)).toEqual(before);
    expect(a.vmFolder + b.vmFolder).toBe('ab');
  });

  it('one GC at a time', async () => {
    const store = await storeAt();
    await writeFile(path.join(store.dir, 'gc.lock'), '{"host":"other"}');
    await expect(collectGarbage(store)).rejects.toThrow(/another garbage collection holds .*other/);
  });

  it('two GCs of one process at once (two prunes of one worker): one collects, the other is told GC_RUNNING', async () => {
    const store = await storeAt();
    const results = await Promise.allSettled([collectGarbage(store, { safetyMarginMs: 0 }), collectGarbage(store, { safetyMarginMs: 0 })]);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    const refused = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    expect(refused.reason).toMatchObject({ code: 'GC_RUNNING' });
    expect(String(refused.reason.message)).toMatch(new RegExp(`another garbage collection holds .*"pid":${process.pid}`));
    // Neither left its lock, whole or partial.
    expect((await readdir(store.dir)).filter((n) => n.startsWith('gc.lock'))).toEqual([]);
  });

  it("a GC killed before linking its lock leaves a partial lock that the next GC removes; a live writer's stays", async () => {
    const store = await storeAt();
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
    const deadPartial = path.join(store.dir, `gc.lock.${os.hostname()}.${dead}-1.partial`);
    const deadOldName = path.join(store.dir, `gc.lock.${os.hostname()}.${dead}.partial`);
    const livePartial = path.join(store.dir, `gc.lock.${os.hostname()}.${process.ppid}.partial`);
    const otherHostFresh = path.join(store.dir, 'gc.lock.elsewhere.42.partial');
    const otherHostOld = path.join(store.dir, 'gc.lock.gone.43.partial');
    for (const f of [deadPartial, deadOldName, livePartial, otherHostFresh, otherHostOld]) await writeFile(f, '{}');
    const old = new Date(Date.now() - 2 * 60 * 60 * 1000);
    await utimes(otherHostOld, old, old);
    await collectGarbage(store, { safetyMarginMs: 0 });
    expect((await readdir(store.dir)).filter((n) => n.endsWith('.partial')).sort()).toEqual([path.basename(otherHostFresh), path.basename(livePartial)].sort());
  });
});

describe('verify', () => {
  it('a corrupted chunk is named with every point that references it; the rest pass', async () => {
    const store = await storeAt();
    const shared = Buffer.alloc(CS, 'shared chunk');
    const a = await backup(store, 'a', '20261206-080000', { xvda: Buffer.concat([shared, diskImage(CS, 1)]) });
    const b = await backup(store, 'b', '20261206-080000', { xvda: Buffer.concat([diskImage(CS, 2), shared]) });
    const c = await backup(store, 'c', '20261206-080000', { xvda: diskImage(CS * 2, 3) });
    const d = createHash('sha256').update(shared).digest('hex');
    const file = store.chunkPath(d);
    const bytes = await readFile(file);
    bytes[bytes.length - 6]! ^= 0xff;
    await writeFile(file, bytes);
    const r = await verifyPoints(store, [a, c]);
    expect(r.ok).toBe(false);
    expect(r.points.map((p) => [p.point, p.ok])).toEqual([
      ['a/point_20261206-080000', false],
      ['c/point_20261206-080000', true],
    ]);
    expect(r.points[0]!.problems[0]).toMatchObject({ point: 'a/point_20261206-080000', disk: 'xvda', digest: d });
    expect(r.badChunks).toEqual([{ digest: d, message: expect.stringContaining(d), points: ['a/point_20261206-080000', 'b/point_20261206-080000'] }]);
    const rec = JSON.parse(await readFile(path.join(store.backupDir, 'a/point_20261206-080000/verified.json'), 'utf8'));
    expect(rec).toMatchObject({ ok: false });
    expect(b.vmFolder).toBe('b');
  });

  it('a damaged index or manifest is reported naming the point', async () => {
    const store = await storeAt();
    const a = await backup(store, 'a', '20261206-080000', { xvda: diskImage(CS * 2, 1) });
    const b = await backup(store, 'b', '20261206-080000', { xvda: diskImage(CS * 2, 2) });
    const idx = path.join(store.backupDir, 'a/point_20261206-080000/xvda.cidx');
    const bytes = await readFile(idx);
    bytes[70]! ^= 1;
    await writeFile(idx, bytes);
    await writeFile(path.join(store.backupDir, 'b/point_20261206-080000/manifest.json'), '{');
    const r = await verifyPoints(store, [a, b]);
    expect(r.points[0]!.problems[0]!.message).toMatch(/a\/point_20261206-080000\/xvda.cidx: checksum mismatch/);
    expect(r.points[1]!.problems[0]!.message).toMatch(/point b\/point_20261206-080000: manifest.json/);
  });

  it('records when each chunk was checked; later runs skip recent ones; sample checks a part', async () => {
    let clock = Date.UTC(2026, 11, 6);
    const store = await storeAt(undefined, { now: () => clock });
    const data = Buffer.concat(Array.from({ length: 40 }, (_, i) => Buffer.alloc(CS, `chunk ${i}`)));
    const a = await backup(store, 'a', '20261206-080000', { xvda: data });
    const first = await verifyPoints(store, [a]);
    expect(first).toMatchObject({ ok: true, chunksChecked: 40, chunksSkipped: 0 });
    const idx = await IndexReader.open(path.join(store.backupDir, 'a/point_20261206-080000/xvda.cidx'));
    expect((await chunkVerifiedAt(store, Buffer.from(await idx.digest(5))))?.getTime()).toBe(clock);
    await idx.close();
    clock += 3600_000;
    expect(await verifyPoints(store, [a], { skipVerifiedWithinMs: 86400_000 })).toMatchObject({ chunksChecked: 0, chunksSkipped: 40 });
    expect(await verifyPoints(store, [a], { skipVerifiedWithinMs: 1000 })).toMatchObject({ chunksChecked: 40, chunksSkipped: 0 });
    let n = 0;
    const sample = await verifyPoints(store, [a], { samplePercent: 25, random: () => (n++ % 4) * 250_000 });
    expect(sample.chunksChecked).toBe(10);
  });
});
