import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import type { ChunkStore } from './chunks.js';
import { POINT_VERIFIED, listPoints, pointDir } from './points.js';

/**
 * A point as `vmbackup list` shows it. `kind` is `full` when every disk was read whole, else
 * `changes` (some disk is its base point's index with the changed chunks replaced; the point
 * is still whole on its own). `bytes` is the disks' size, `storedBytes` what this point added
 * to the store (its new chunks, compressed): what it costs.
 *
 * @example
 *   { "stamp": "20261207-080000", "date": "2026-12-07T08:01:12.000Z", "complete": true, "kind": "changes",
 *     "base": "20261206-080000", "bytes": 11534336, "storedBytes": 262144,
 *     "disks": [{ "name": "xvda", "size": 6291456, "mode": "changes" }, …], "verify": { "ok": true, "at": "…" } }
 */
export const PointInfo = z.object({
  stamp: z.string(),
  /** When the point was committed (ISO); for an incomplete point, its folder's last change. */
  date: z.string(),
  /** Committed (its manifest is valid): restorable, and counts. */
  complete: z.boolean(),
  /** Why an incomplete point does not count. */
  incompleteReason: z.string().optional(),
  kind: z.enum(['full', 'changes']).optional(),
  /** The point the changed disks were based on. */
  base: z.string().optional(),
  bytes: z.number().int().min(0),
  storedBytes: z.number().int().min(0),
  disks: z.array(z.object({ name: z.string(), size: z.number().int().min(0), mode: z.enum(['full', 'changes']) })),
  /** The last `vmbackup verify` of the point (its `verified.json`). */
  verify: z.object({ ok: z.boolean(), at: z.string() }).optional(),
});
export type PointInfo = z.infer<typeof PointInfo>;

/** The points of the store by VM folder, newest first, with the VM each records. */
export async function describePoints(store: ChunkStore, vmFolder?: string): Promise<Map<string, { vm?: { uuid: string; name: string }; points: PointInfo[] }>> {
  const listing = await listPoints(store, vmFolder);
  const out = new Map<string, { vm?: { uuid: string; name: string }; points: PointInfo[] }>();
  const entry = (folder: string) => {
    let e = out.get(folder);
    if (e === undefined) out.set(folder, (e = { points: [] }));
    return e;
  };
  for (const p of listing.points) {
    const m = p.manifest;
    const changed = m.disks.filter((d) => d.mode === 'changes');
    const e = entry(p.vmFolder);
    e.vm = m.vm;
    const verify = await readVerified(path.join(pointDir(store, p), POINT_VERIFIED));
    e.points.push({
      stamp: p.stamp,
      date: m.createdAt,
      complete: true,
      kind: changed.length > 0 ? 'changes' : 'full',
      ...(changed[0]?.base !== undefined ? { base: changed[0].base } : {}),
      bytes: m.disks.reduce((n, d) => n + d.size, 0),
      storedBytes: m.disks.reduce((n, d) => n + d.newBytes, 0),
      disks: m.disks.map((d) => ({ name: d.name, size: d.size, mode: d.mode })),
      ...(verify !== undefined ? { verify } : {}),
    });
  }
  for (const p of listing.incomplete) {
    entry(p.vmFolder).points.push({ stamp: p.stamp, date: new Date(p.mtimeMs).toISOString(), complete: false, incompleteReason: p.reason, bytes: 0, storedBytes: 0, disks: [] });
  }
  for (const e of out.values()) e.points.sort((a, b) => b.stamp.localeCompare(a.stamp));
  return out;
}

async function readVerified(file: string): Promise<{ ok: boolean; at: string } | undefined> {
  try {
    const v = JSON.parse(await readFile(file, 'utf8')) as { ok?: unknown; at?: unknown };
    return typeof v.ok === 'boolean' && typeof v.at === 'string' ? { ok: v.ok, at: v.at } : undefined;
  } catch {
    return undefined;
  }
}
