/**
 * Chunk store figures for `npm run bench -- chunks gc` (each against a baseline of the same run):
 *
 *   chunk_<n>mib_write_vs_file_ratio  a 256 MiB disk image (¼ zeros, ¼ random, ½ text-like)
 *                                     written as a full point, MB/s / the same bytes written
 *                                     to one file (fsynced)
 *   chunk_<n>mib_churn_stored_mib     then 1 % of its 64 KiB blocks rewritten at random places:
 *                                     MiB the incremental point adds to the store
 *   chunk_<n>mib_churn_read_mib       … and MiB it reads from the disk (whole chunks)
 *   chunk_<n>mib_index_mib_per_tib    index size per TiB of disk
 *   gc_ms_100k_chunks                 GC over 100,000 chunks (80,000 referenced)
 *   gc_vs_list_ratio                  … divided by listing them (readdir + stat)        ≤ 3
 *   chunk_restore_vs_full_ratio       the newest of 8 points (a full one, then 7 with 1 % churn)
 *                                     of that 256 MiB disk restored to a raw file: copying the
 *                                     disk's raw file (fsynced) / the restore, each in a fresh
 *                                     process after a sync, with its input in the page cache ≥ 0.8
 *   restore_<raw|vhd>_rss_growth_mib  peak RSS restoring a 512 MiB disk of a point to a file − a
 *                                     64 MiB one (8×), each in its own process               < 32
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, mkdirSync, writeFileSync } from 'node:fs';
import { compress } from 'zstd-napi';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { ChunkStore, PointWriter, collectGarbage, removePoint } from '../../runtime/chunkstore/chunkstore.js';
import { ZSTD_LEVEL, sha256 } from '../../runtime/chunkstore/chunks.js';
import type { ByteRange } from '../../runtime/chunkstore/chunkstore.js';
import { writeStreamAtomic } from '../../runtime/storage/atomic.js';
import { alternate } from './report.js';

const MiB = 1 << 20;
const BLOCK = 64 << 10;

/** A disk image that compresses like a real one: 16 KiB runs of zeros, random bytes, or text. */
function diskImage(size: number): Buffer {
  const b = Buffer.alloc(size);
  let x = 42;
  const next = () => (x = xorshift(x));
  const words = ['kernel', 'usr', 'lib', 'config', 'var', 'log', 'data', 'index', 'page', 'table'];
  for (let at = 0; at < size; at += 16 << 10) {
    next();
    const n = Math.min(16 << 10, size - at);
    const kind = x % 4;
    if (kind === 1) randomBytes(n).copy(b, at);
    else if (kind >= 2) {
      let s = '';
      while (s.length < n) s += `${words[next() % words.length]} ${x % 1000}\n`;
      b.write(s.slice(0, n), at, 'latin1');
    }
  }
  return b;
}

/** A 32-bit xorshift step: deterministic data without Math.random. */
function xorshift(x: number): number {
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return x >>> 0;
}

function pieces(buf: Buffer): Readable {
  const parts: Buffer[] = [];
  for (let at = 0; at < buf.length; at += MiB) parts.push(buf.subarray(at, at + MiB));
  return Readable.from(parts);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

export async function chunkSizeBench(work: string, note: (line: string) => void): Promise<void> {
  const size = 256 * MiB;
  const image = diskImage(size);
  // 1 % of the 64 KiB blocks, scattered (as CBT reports a day of random writes).
  const blocks = size / BLOCK;
  const picked = new Set<number>();
  let x = 7;
  const next = () => (x = xorshift(x));
  while (picked.size < Math.ceil(blocks / 100)) picked.add(next() % blocks);
  const changed = [...picked].sort((a, b) => a - b);
  const churned = Buffer.from(image);
  for (const b of changed) randomBytes(BLOCK).copy(churned, b * BLOCK);
  const ranges: ByteRange[] = changed.map((b) => ({ offset: b * BLOCK, length: BLOCK }));

  for (const mib of [1, 2, 4]) {
    const ratios: number[] = [];
    let stored = 0;
    let read = 0;
    let ms = 0;
    for (let round = 0; round < 3; round++) {
      const dir = await mkdtemp(path.join(work, `chunks-${mib}-`));
      try {
        let t = performance.now();
        await writeStreamAtomic(path.join(dir, 'baseline.raw'), pieces(image));
        const fileMs = performance.now() - t;
        const store = await ChunkStore.open(dir, { chunkSize: mib * MiB });
        t = performance.now();
        const p = await PointWriter.begin(store, { vmFolder: 'vm', stamp: 'full', vm: { uuid: 'u', name: 'vm' } });
        await p.addDisk('xvda', pieces(image));
        await p.commit();
        const storeMs = performance.now() - t;
        ratios.push(fileMs / storeMs);
        ms = storeMs;
        // The churn's bytes are the same in every round (the same data, the same blocks).
        if (round > 0) continue;
        const q = await PointWriter.begin(store, { vmFolder: 'vm', stamp: 'churn', vm: { uuid: 'u', name: 'vm' } });
        const d = await q.addDiskChanges('xvda', { vmFolder: 'vm', stamp: 'full' }, ranges, { size, read: async (o, n) => churned.subarray(o, o + n) });
        await q.commit();
        stored = d.newBytes;
        read = d.readBytes;
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    }
    note(`  ${mib} MiB chunks: full point ${((size / MiB / ms) * 1000).toFixed(0)} MiB/s; 1 % churn (${changed.length} blocks, ${((changed.length * BLOCK) / MiB).toFixed(1)} MiB changed) reads ${(read / MiB).toFixed(0)} MiB, stores ${(stored / MiB).toFixed(1)} MiB`);
    console.log(`chunk_${mib}mib_write_vs_file_ratio=${median(ratios).toFixed(2)}`);
    console.log(`chunk_${mib}mib_churn_stored_mib=${(stored / MiB).toFixed(1)}`);
    console.log(`chunk_${mib}mib_churn_read_mib=${(read / MiB).toFixed(0)}`);
    console.log(`chunk_${mib}mib_index_mib_per_tib=${((2 ** 40 / (mib * MiB)) * 32) / MiB}`);
  }
}

/** readdir + stat of every chunk file: the least any sweep must do. */
async function listChunks(store: ChunkStore): Promise<number> {
  let n = 0;
  for (const prefix of await readdir(store.chunksDir)) {
    const folder = path.join(store.chunksDir, prefix);
    const names = await readdir(folder);
    for (let i = 0; i < names.length; i += 32) {
      await Promise.all(names.slice(i, i + 32).map((name) => stat(path.join(folder, name))));
      n += Math.min(32, names.length - i);
    }
  }
  return n;
}

export async function gcBench(work: string, note: (line: string) => void): Promise<void> {
  const dir = await mkdtemp(path.join(work, 'gc-'));
  try {
    const chunk = 4 << 10;
    const store = await ChunkStore.open(dir, { chunkSize: chunk, sync: false });
    const chunkData = (i: number) => {
      const b = Buffer.alloc(chunk, (i % 251) + 1); // never all zeros
      b.writeUInt32LE(i, 0);
      return b;
    };
    const disk = (first: number, count: number) =>
      Readable.from(
        (function* () {
          for (let i = first; i < first + count; i++) yield chunkData(i);
        })(),
      );
    const t0 = performance.now();
    // The chunk files first, each written straight to its place as the store names and packs
    // it (an open, a write and a close, synchronously): the points below then find every chunk
    // stored and only touch it (its mtime), as when another point holds it already. Through
    // put() alone each chunk costs six trips through the thread pool (a failed utimes, open,
    // write, futimes, close, rename), and writing them was most of this section's time. The
    // store is the same: the same files, names, bytes and mtimes, the same points.
    const made = new Set<string>();
    for (let i = 0; i < 100_000; i++) {
      const data = chunkData(i);
      const file = store.chunkPath(sha256(data));
      if (!made.has(path.dirname(file))) {
        mkdirSync(path.dirname(file), { recursive: true });
        made.add(path.dirname(file));
      }
      writeFileSync(file, compress(data, { compressionLevel: ZSTD_LEVEL, checksumFlag: true }));
    }
    // A point of 80,000 chunks, kept; one of 20,000 others, pruned.
    let p = await PointWriter.begin(store, { vmFolder: 'a', stamp: '1', vm: { uuid: 'a', name: 'a' } });
    await p.addDisk('xvda', disk(0, 80_000), { concurrency: 16 });
    await p.commit();
    p = await PointWriter.begin(store, { vmFolder: 'b', stamp: '1', vm: { uuid: 'b', name: 'b' } });
    await p.addDisk('xvda', disk(80_000, 20_000), { concurrency: 16 });
    await p.commit();
    await removePoint(store, { vmFolder: 'b', stamp: '1' });
    note(`  gc: 100,000 chunks written in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const listMs: number[] = [];
    let t = performance.now();
    const n = await listChunks(store);
    listMs.push(performance.now() - t);
    if (n !== 100_000) throw new Error(`expected 100000 chunk files, found ${n}`);
    t = performance.now();
    const r = await collectGarbage(store, { safetyMarginMs: 0 });
    const gcMs = performance.now() - t;
    t = performance.now();
    await listChunks(store);
    listMs.push(performance.now() - t);
    if (r.chunksTrashed !== 20_000 || r.chunksKept !== 80_000) throw new Error(`gc: ${JSON.stringify(r)}`);
    note(`  gc: mark ${r.referencesMarked} references + sweep 100,000 chunks in ${gcMs.toFixed(0)} ms; listing them ${listMs.map((x) => x.toFixed(0)).join(', ')} ms`);
    console.log(`gc_ms_100k_chunks=${gcMs.toFixed(0)}`);
    console.log(`gc_vs_list_ratio=${(gcMs / Math.min(...listMs)).toFixed(2)}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Churns 1 % of the image's 64 KiB blocks in place; returns them as ranges. */
function churn(image: Buffer, seed: number): ByteRange[] {
  const blocks = image.length / BLOCK;
  const picked = new Set<number>();
  let x = seed;
  while (picked.size < Math.ceil(blocks / 100)) picked.add((x = xorshift(x)) % blocks);
  const changed = [...picked].sort((a, b) => a - b);
  for (const b of changed) randomBytes(BLOCK).copy(image, b * BLOCK);
  return changed.map((b) => ({ offset: b * BLOCK, length: BLOCK }));
}

async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const part of createReadStream(file)) hash.update(part as Buffer);
  return hash.digest('hex');
}

export async function restoreBench(work: string, note: (line: string) => void): Promise<void> {
  const dir = await mkdtemp(path.join(work, 'restore-'));
  try {
    const size = 256 * MiB;
    const image = diskImage(size);
    // Not fsynced chunk by chunk: each side of the measure below starts after a sync anyway.
    const store = await ChunkStore.open(dir, { sync: false });
    const vm = { uuid: 'u', name: 'vm' };
    let p = await PointWriter.begin(store, { vmFolder: 'vm', stamp: 'p0', vm });
    await p.addDisk('xvda', pieces(image));
    await p.commit();
    for (let i = 1; i < 8; i++) {
      const ranges = churn(image, 100 + i);
      p = await PointWriter.begin(store, { vmFolder: 'vm', stamp: `p${i}`, vm });
      await p.addDiskChanges('xvda', { vmFolder: 'vm', stamp: `p${i - 1}` }, ranges, { size, read: async (o, n) => image.subarray(o, o + n) });
      await p.commit();
    }
    const raw = path.join(dir, 'disk.raw');
    await writeStreamAtomic(raw, pieces(image));
    const expected = createHash('sha256').update(image).digest('hex');
    // Both sides under the same conditions, whatever ran before them in the bench: each in a
    // fresh process (not this one, whose heap carries what earlier sections left; the start is
    // not timed), after a sync (so that neither pays for flushing dirty pages of the other side
    // or of an earlier section), with what it reads just read (both warm in the page cache: the
    // disk's raw file for the copy, every file of the store for the restore).
    const copy = async () => {
      await run('sync');
      await readAll(raw);
      const r = await onceIn('copy-once.ts', [raw, path.join(dir, 'copy.raw')]);
      await rm(path.join(dir, 'copy.raw'), { force: true });
      return r;
    };
    const restore = async () => {
      await run('sync');
      await readAll(store.dir);
      await readAll(path.join(dir, 'vm'));
      return onceIn('restore-once.ts', [path.join(dir, 'vm', 'point_p7'), 'xvda', path.join(dir, 'restored.raw'), 'raw']);
    };
    const ratios: number[] = [];
    for (let round = 0; round < 3; round++) {
      const [c, r] = await alternate(round, copy, restore);
      const [copyMs, restoredMs] = [c.ms, r.ms];
      if ((await sha256File(path.join(dir, 'restored.raw'))) !== expected) throw new Error('the restored disk differs from the source');
      await rm(path.join(dir, 'restored.raw'), { force: true });
      ratios.push(copyMs / restoredMs);
      // The CPU time says what the wall time cannot on a shared machine: the restore hashes and
      // decompresses every chunk, the copy only moves bytes, so other work on the machine
      // slows the restore more (its ratio falls with the load average).
      note(
        `  restore round ${round + 1}: copy ${((size / MiB / copyMs) * 1000).toFixed(0)} MiB/s (CPU ${(c.cpuMs / 1000).toFixed(2)} s), ` +
          `restore of the 8th point ${((size / MiB / restoredMs) * 1000).toFixed(0)} MiB/s (CPU ${(r.cpuMs / 1000).toFixed(2)} s)`,
      );
    }
    console.log(`chunk_restore_vs_full_ratio=${median(ratios).toFixed(2)}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const run = promisify(execFile);

/** One of the `*-once.ts` scripts beside this file, in its own process: what it prints. */
async function onceIn(script: string, args: string[]): Promise<{ maxRssMiB: number; bytes: number; ms: number; cpuMs: number }> {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const { stdout } = await run(path.join(here, '../../node_modules/.bin/tsx'), [path.join(here, script), ...args]);
  return JSON.parse(stdout) as { maxRssMiB: number; bytes: number; ms: number; cpuMs: number };
}

/** Reads every file under `where` (a file or a folder), so that it is in the page cache. */
async function readAll(where: string): Promise<void> {
  if (!(await stat(where)).isDirectory()) {
    for await (const _ of createReadStream(where, { highWaterMark: MiB }));
    return;
  }
  for (const e of await readdir(where, { recursive: true, withFileTypes: true })) if (e.isFile()) await readAll(path.join(e.parentPath, e.name));
}

/** Peak RSS of a restore to a file, in its own process (test/bench/restore-once.ts). */
async function restoreOnce(point: string, to: string, format: 'raw' | 'vhd'): Promise<{ maxRssMiB: number; bytes: number }> {
  return onceIn('restore-once.ts', [point, 'xvda', to, format]);
}

export async function restoreRssBench(work: string, note: (line: string) => void): Promise<void> {
  const dir = await mkdtemp(path.join(work, 'restore-rss-'));
  try {
    const store = await ChunkStore.open(dir, { sync: false });
    for (const [stamp, mib] of [['small', 64], ['large', 512]] as const) {
      const p = await PointWriter.begin(store, { vmFolder: 'vm', stamp, vm: { uuid: 'u', name: 'vm' } });
      await p.addDisk('xvda', Readable.from((function* () {
        for (let i = 0; i < mib; i++) yield randomBytes(MiB);
      })()));
      await p.commit();
    }
    for (const format of ['raw', 'vhd'] as const) {
      const rss: number[] = [];
      for (const stamp of ['small', 'large']) {
        const to = path.join(dir, `${stamp}.${format}`);
        rss.push((await restoreOnce(path.join(dir, 'vm', `point_${stamp}`), to, format)).maxRssMiB);
        await rm(to, { force: true });
      }
      note(`  peak RSS restoring to ${format}: 64 MiB disk ${rss[0]!.toFixed(1)} MiB, 512 MiB disk ${rss[1]!.toFixed(1)} MiB`);
      console.log(`restore_${format}_rss_growth_mib=${(rss[1]! - rss[0]!).toFixed(1)}`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

// Run alone: `tsx test/bench/chunkstore.ts [chunks] [gc] [restore] [restore-rss]`.
if (import.meta.url === `file://${process.argv[1]}`) {
  const wanted = new Set(process.argv.slice(2));
  const work = await mkdtemp(path.join(os.tmpdir(), 'vmbackup-bench-'));
  try {
    if (wanted.size === 0 || wanted.has('chunks')) await chunkSizeBench(work, (l) => console.error(l));
    if (wanted.size === 0 || wanted.has('gc')) await gcBench(work, (l) => console.error(l));
    if (wanted.size === 0 || wanted.has('restore')) await restoreBench(work, (l) => console.error(l));
    if (wanted.size === 0 || wanted.has('restore-rss')) await restoreRssBench(work, (l) => console.error(l));
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
