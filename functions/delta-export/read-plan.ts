import { formatBytes } from '../../runtime/units.js';

/**
 * How the next backup of one disk of a delta-export reads it: whole, or only the chunks that
 * changed since the previous point (CBT), and why. Pure: the delta-export phase and
 * `--preview` decide with it from what they found on the pool and in the store.
 *
 * @example
 *   planDiskRead({ disk: { name: 'xvda', size: 1 << 30, cbt: true }, cbt: true, nbd: true,
 *                  previous: { stamp: '20261205-080000', disks: [{ name: 'xvda', size: 1 << 30 }] },
 *                  base: { stamp: '20261205-080000', cbt: true } })
 *   // → { disk: 'xvda', read: 'changes', base: '20261205-080000', reason: 'CBT changes since point 20261205-080000', warn: false }
 */
export interface DiskReadPlan {
  disk: string;
  read: 'full' | 'changes';
  /** The point whose index the new one starts from (`changes`). */
  base?: string;
  /**
   * How changes are read (`changes`): `nbd`, the chunks CBT names; `vhd`, the blocks of
   * `/export_raw_vdi?format=vhd&base=<base snapshot>` (no NBD; the base kept whole).
   */
  via?: 'nbd' | 'vhd';
  reason: string;
  /** A full re-read the operator did not choose: said as a warning of the job. */
  warn: boolean;
}

export interface DiskReadFacts {
  /** The disk now: its name in points (device), size, whether its VDI tracks changes. */
  disk: { name: string; size: number; cbt: boolean };
  /** The `cbt` setting. */
  cbt: boolean;
  /** Whether the pool serves the disk over NBD (VDI.get_nbd_info is not empty). */
  nbd: boolean;
  /** The VM's newest committed point. */
  previous?: { stamp: string; disks: readonly { name: string; size: number }[] };
  /** The disk's snapshot kept as a base (found by its tag): the point it was read for; `whole` when its data was kept. */
  base?: { stamp: string; cbt: boolean; whole?: boolean };
  /** CBT was off on the disk and turned on for this backup (snapshot phase). */
  cbtTurnedOn?: boolean;
}

export function planDiskRead(f: DiskReadFacts): DiskReadPlan {
  const full = (reason: string, warn = true): DiskReadPlan => ({ disk: f.disk.name, read: 'full', reason, warn });
  const prev = f.previous;
  if (prev === undefined) return full('first backup: no point yet', false);
  const before = prev.disks.find((d) => d.name === f.disk.name);
  if (before === undefined) return full(`disk added since point ${prev.stamp}`);
  if (!f.cbt) return full('cbt = false: each backup reads the disk whole', false);
  if (before.size !== f.disk.size) return full(`disk resized from ${formatBytes(before.size)} to ${formatBytes(f.disk.size)} since point ${prev.stamp}`);
  if (f.cbtTurnedOn === true || !f.disk.cbt) return full(`changed-block tracking was off since point ${prev.stamp} (turned on again${f.cbtTurnedOn === true ? '' : ' by the next backup'})`);
  if (f.base === undefined) return full(`the base snapshot of point ${prev.stamp} is gone (destroyed outside vmbackup?)`);
  if (f.base.stamp !== prev.stamp) return full(`the base snapshot is of point ${f.base.stamp}, but the newest point is ${prev.stamp}`);
  if (!f.base.cbt) return full(`the base snapshot of point ${prev.stamp} has no changed-block tracking`);
  if (!f.nbd) {
    if (f.base.whole === true) return { disk: f.disk.name, read: 'changes', base: prev.stamp, via: 'vhd', reason: `changes since point ${prev.stamp}, as a VHD difference from its base snapshot (the pool offers no NBD)`, warn: false };
    return full('the pool offers no NBD (no network with purpose nbd or insecure_nbd) and the base snapshot kept no data: from now on it is kept whole');
  }
  return { disk: f.disk.name, read: 'changes', base: prev.stamp, via: 'nbd', reason: `CBT changes since point ${prev.stamp}`, warn: false };
}
