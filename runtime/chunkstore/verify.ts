import { createHash, randomInt } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../storage/atomic.js';
import { ChunkError, ZERO_DIGEST, unpackChunk } from './chunks.js';
import type { ChunkStore } from './chunks.js';
import { INDEX_SUFFIX, IndexReader } from './index-file.js';
import { POINT_VERIFIED, listPoints, openPoint, pointDir, pointName } from './points.js';
import type { PointRef } from './points.js';

const VERIFIED_FILE = 'verified.bin';
const RECORD = 36; // 32-byte digest + u32 seconds since the epoch

export interface VerifyOptions {
  /** Check only this percentage of each point's chunks, drawn at random (default 100). */
  samplePercent?: number;
  /** Skip chunks checked less than this long ago by an earlier verify (default 0: check all). */
  skipVerifiedWithinMs?: number;
  /** Random integer in [0, n) for sampling; default crypto.randomInt. */
  random?: (n: number) => number;
  signal?: AbortSignal;
}

/** One problem found, naming the point and, for chunks, the digest. */
export interface VerifyProblem {
  point: string;
  disk?: string;
  digest?: string;
  message: string;
}

export interface PointVerifyResult {
  point: string;
  ok: boolean;
  chunksChecked: number;
  chunksSkipped: number;
  problems: VerifyProblem[];
}

export interface VerifyReport {
  ok: boolean;
  points: PointVerifyResult[];
  chunksChecked: number;
  chunksSkipped: number;
  /** Each bad chunk once, with every point of the store that references it. */
  badChunks: { digest: string; message: string; points: string[] }[];
  /** Set when the check times could not be recorded (e.g. a full disk): the next run re-checks. */
  recordError?: string;
}

/**
 * Verifies points: the manifest parses, the metadata and each index match the manifest and
 * their own checksums, and every referenced chunk (or a `samplePercent` sample) exists,
 * decompresses and hashes to its name. A bad chunk is reported once with every point in the
 * store that references it. Each point gets `verified.json` (when, result); each chunk
 * checked is recorded in `.chunkstore/verified.bin` so that later runs with
 * `skipVerifiedWithinMs` skip it.
 *
 * @example
 *   const r = await verifyPoints(store, [{ vmFolder: 'web1', stamp: '20261206-080000' }]);
 *   await verifyPoints(store, refs, { samplePercent: 5, skipVerifiedWithinMs: 7 * 86400e3 });
 */
export async function verifyPoints(store: ChunkStore, refs: PointRef[], options: VerifyOptions = {}): Promise<VerifyReport> {
  const percent = options.samplePercent ?? 100;
  if (!(percent > 0 && percent <= 100)) throw new RangeError(`samplePercent must be in (0, 100], got ${percent}`);
  const random = options.random ?? randomInt;
  const now = store.now();
  const nowSec = Math.floor(now / 1000);
  const skipBefore = options.skipVerifiedWithinMs ? Math.floor((now - options.skipVerifiedWithinMs) / 1000) : Infinity;
  const known = await loadVerified(store);
  // Results of this run: digest → null (good) or the failure. Bounded by the chunks checked.
  const checked = new Map<string, string | null>();
  const report: VerifyReport = { ok: true, points: [], chunksChecked: 0, chunksSkipped: 0, badChunks: [] };

  for (const ref of refs) {
    const name = pointName(ref);
    const result: PointVerifyResult = { point: name, ok: true, chunksChecked: 0, chunksSkipped: 0, problems: [] };
    const problem = (p: Omit<VerifyProblem, 'point'>) => {
      result.ok = false;
      result.problems.push({ point: name, ...p });
    };
    try {
      const point = await openPoint(store, ref);
      if (point.manifest.meta) await point.readMeta().catch((e: Error) => problem({ message: e.message }));
      for (const disk of point.manifest.disks) {
        let index: IndexReader;
        try {
          index = await point.openIndex(disk.name);
        } catch (error) {
          problem({ disk: disk.name, message: (error as Error).message });
          continue;
        }
        try {
          await index.check();
          const { sha256, size } = await fileDigest(path.join(pointDir(store, ref), disk.name + INDEX_SUFFIX));
          if (sha256 !== disk.indexSha256 || size !== disk.indexBytes) throw new Error(`index of ${disk.name} is not the one the manifest records`);
          for (let i = 0; i < index.chunkCount; i++) {
            options.signal?.throwIfAborted();
            const digest = Buffer.from(await index.digest(i));
            if (digest.equals(ZERO_DIGEST)) continue;
            const hex = digest.toString('hex');
            let outcome = checked.get(hex);
            if (outcome === undefined) {
              if (percent < 100 && random(1_000_000) >= percent * 10_000) continue;
              const last = known.get(digest);
              if (last !== undefined && last >= skipBefore) {
                result.chunksSkipped++;
                report.chunksSkipped++;
                continue;
              }
              outcome = await checkChunk(store, digest, index.chunkLength(i));
              checked.set(hex, outcome);
              result.chunksChecked++;
              report.chunksChecked++;
            }
            if (outcome !== null) problem({ disk: disk.name, digest: hex, message: outcome });
          }
        } catch (error) {
          problem({ disk: disk.name, message: (error as Error).message });
        } finally {
          await index.close();
        }
      }
    } catch (error) {
      problem({ message: (error as Error).message });
    }
    report.points.push(result);
    if (!result.ok) report.ok = false;
    await writeFileAtomic(
      path.join(pointDir(store, ref), POINT_VERIFIED),
      JSON.stringify({ at: new Date(now).toISOString(), ok: result.ok, sample: percent, chunksChecked: result.chunksChecked, chunksSkipped: result.chunksSkipped, problems: result.problems.slice(0, 100) }, null, 2) + '\n',
    ).catch(() => {}); // a point folder that is gone (pruned meanwhile) has nowhere to record it
  }

  const bad = [...checked].filter((e): e is [string, string] => e[1] !== null);
  if (bad.length > 0) {
    const users = await pointsReferencing(store, new Set(bad.map(([d]) => d)));
    report.badChunks = bad.map(([digest, message]) => ({ digest, message, points: [...(users.get(digest) ?? [])].sort() }));
  }
  // Only an optimisation for later runs: a full disk must not turn a good verify into a failure.
  await saveVerified(store, known, checked, nowSec).catch((error: Error) => (report.recordError = error.message));
  return report;
}

async function checkChunk(store: ChunkStore, digest: Buffer, length: number): Promise<string | null> {
  try {
    const data = unpackChunk(digest, await store.readRaw(digest));
    if (data.length !== length) return `chunk ${digest.toString('hex')} has ${data.length} bytes, the index expects ${length}`;
    return null;
  } catch (error) {
    if (error instanceof ChunkError) return error.message;
    throw error;
  }
}

/** Every point of the store referencing one of `digests`. */
async function pointsReferencing(store: ChunkStore, digests: Set<string>): Promise<Map<string, Set<string>>> {
  const out = new Map<string, Set<string>>();
  for (const p of (await listPoints(store)).points) {
    for (const disk of p.manifest.disks) {
      const index = await IndexReader.open(path.join(pointDir(store, p), disk.name + INDEX_SUFFIX)).catch(() => undefined);
      if (!index) continue;
      try {
        for (let i = 0; i < index.chunkCount; i++) {
          const hex = (await index.digest(i)).toString('hex');
          if (digests.has(hex)) {
            const set = out.get(hex) ?? new Set<string>();
            set.add(pointName(p));
            out.set(hex, set);
          }
        }
      } finally {
        await index.close();
      }
    }
  }
  return out;
}

async function fileDigest(file: string): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 16 })) {
    hash.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { sha256: hash.digest('hex'), size };
}

/**
 * When chunks were last checked: `.chunkstore/verified.bin`, records of 36 bytes (digest,
 * u32 seconds since the epoch) sorted by digest, looked up by binary search: 3.6 MB per
 * 100,000 chunks, one Buffer. Two verifies at once may each drop the other's records,
 * which only costs a re-check.
 */
class VerifiedTable {
  constructor(private readonly records: Buffer) {}

  get size(): number {
    return this.records.length / RECORD;
  }

  get(digest: Buffer): number | undefined {
    let lo = 0;
    let hi = this.size - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const c = this.records.compare(digest, 0, 32, mid * RECORD, mid * RECORD + 32); // record vs digest
      if (c === 0) return this.records.readUInt32LE(mid * RECORD + 32);
      if (c < 0) lo = mid + 1;
      else hi = mid - 1;
    }
    return undefined;
  }

  /** The table with `updates` (digest hex → seconds) merged in, as a new Buffer. */
  merged(updates: Map<string, number>): Buffer {
    const fresh = [...updates].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)).map(([hex, t]) => [Buffer.from(hex, 'hex'), t] as const);
    const out = Buffer.alloc((this.size + fresh.length) * RECORD);
    let n = 0;
    let j = 0;
    const put = (d: Buffer, dOff: number, t: number) => {
      d.copy(out, n * RECORD, dOff, dOff + 32);
      out.writeUInt32LE(t, n * RECORD + 32);
      n++;
    };
    for (let i = 0; i < this.size; i++) {
      const at = i * RECORD;
      while (j < fresh.length && fresh[j]![0].compare(this.records, at, at + 32) < 0) put(fresh[j]![0], 0, fresh[j]![1]), j++;
      if (j < fresh.length && fresh[j]![0].compare(this.records, at, at + 32) === 0) {
        put(fresh[j]![0], 0, fresh[j]![1]);
        j++;
      } else {
        put(this.records, at, this.records.readUInt32LE(at + 32));
      }
    }
    while (j < fresh.length) put(fresh[j]![0], 0, fresh[j]![1]), j++;
    return out.subarray(0, n * RECORD);
  }
}

async function loadVerified(store: ChunkStore): Promise<VerifiedTable> {
  try {
    const data = await readFile(path.join(store.dir, VERIFIED_FILE));
    return new VerifiedTable(data.subarray(0, data.length - (data.length % RECORD)));
  } catch {
    return new VerifiedTable(Buffer.alloc(0));
  }
}

async function saveVerified(store: ChunkStore, table: VerifiedTable, checked: Map<string, string | null>, nowSec: number): Promise<void> {
  const good = new Map<string, number>();
  // A bad chunk's record is reset (0), so that no later run skips it.
  for (const [hex, outcome] of checked) good.set(hex, outcome === null ? nowSec : 0);
  if (good.size === 0) return;
  await writeFileAtomic(path.join(store.dir, VERIFIED_FILE), table.merged(good));
}

/** When a chunk was last found good by verify (undefined: never, or not since its record was dropped). */
export async function chunkVerifiedAt(store: ChunkStore, digest: Buffer): Promise<Date | undefined> {
  const t = (await loadVerified(store)).get(digest);
  return t === undefined ? undefined : new Date(t * 1000);
}
