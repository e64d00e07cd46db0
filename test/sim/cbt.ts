import { ApiError } from './errors.js';

/** 64 KiB: the block size of changed-block tracking. */
export const CBT_BLOCK = 64 * 1024;

/** One VDI's CBT log, as the SM backend keeps it (`<uuid>.cbtlog`). */
interface CbtLog {
  /** Blocks written while this log was the live disk's: bit i set = block i changed. */
  bits: Uint8Array;
  /** Earlier and later logs of the same chain (VDI refs). */
  parent: string | undefined;
  child: string | undefined;
}

/** The SR backend's failure for list_changed_blocks (XE_SR_ERRORCODES CBTChangedBlocksError). */
function changedBlocksError(reason: string): ApiError {
  return new ApiError('SR_BACKEND_FAILURE_460', ['', `Failed to calculate changed blocks for given VDIs. [opterr=${reason}]`, '']);
}

function bitmapBytes(size: number): number {
  return Math.ceil(Math.ceil(size / CBT_BLOCK) / 8);
}

/**
 * Changed-block tracking as the SM backend does it (sm drivers/VDI.py, cbtutil): each
 * CBT-enabled VDI, and each snapshot taken while it was, has a log. A snapshot takes over
 * the live disk's log (the blocks written since the previous snapshot) and the disk starts
 * an empty one; logs are chained parent → child in time order. The blocks changed from
 * snapshot A to B are the union of the logs after A, up to and including B. Bits are
 * MSB-first: block i is bit 7 - (i % 8) of byte i / 8, as the base64 string
 * `VDI.list_changed_blocks` returns.
 */
export class CbtLogs {
  private readonly logs = new Map<string, CbtLog>();

  has(vdi: string): boolean {
    return this.logs.has(vdi);
  }

  /** VDI.enable_cbt: a fresh log (nothing changed yet). */
  enable(vdi: string, size: number): void {
    if (this.logs.has(vdi)) return;
    this.logs.set(vdi, { bits: new Uint8Array(bitmapBytes(size)), parent: undefined, child: undefined });
  }

  /** VDI.disable_cbt: the disk's log goes; the chain of its snapshots ends before it. */
  disable(vdi: string): void {
    const log = this.logs.get(vdi);
    if (log === undefined) return;
    if (log.parent !== undefined) {
      const parent = this.logs.get(log.parent);
      if (parent !== undefined && parent.child === vdi) parent.child = undefined;
    }
    this.logs.delete(vdi);
  }

  /** The VDI grew (VDI.resize): its log covers the new blocks. */
  resize(vdi: string, size: number): void {
    const log = this.logs.get(vdi);
    if (log === undefined || bitmapBytes(size) <= log.bits.length) return;
    const bits = new Uint8Array(bitmapBytes(size));
    bits.set(log.bits);
    log.bits = bits;
  }

  /** A guest write of [offset, offset + length) on `vdi` (no-op without a log). */
  noteWrite(vdi: string, offset: number, length: number): void {
    const log = this.logs.get(vdi);
    if (log === undefined || length <= 0) return;
    const last = Math.floor((offset + length - 1) / CBT_BLOCK);
    for (let b = Math.floor(offset / CBT_BLOCK); b <= last; b++) {
      const byte = b >> 3;
      if (byte < log.bits.length) log.bits[byte]! |= 0x80 >> (b & 7);
    }
  }

  /** A snapshot `snap` of `vdi` was taken: it takes the disk's log, the disk starts anew. */
  snapshot(vdi: string, snap: string): void {
    const log = this.logs.get(vdi);
    if (log === undefined) return;
    this.logs.set(snap, { bits: log.bits, parent: log.parent, child: vdi });
    if (log.parent !== undefined) {
      const parent = this.logs.get(log.parent);
      if (parent !== undefined) parent.child = snap;
    }
    this.logs.set(vdi, { bits: new Uint8Array(log.bits.length), parent: snap, child: log.child });
  }

  /**
   * The VDI is destroyed with its data (VDI.destroy, not data_destroy): its changes are
   * folded into the next log, so the chain stays comparable across it.
   */
  remove(vdi: string): void {
    const log = this.logs.get(vdi);
    if (log === undefined) return;
    const child = log.child === undefined ? undefined : this.logs.get(log.child);
    const parent = log.parent === undefined ? undefined : this.logs.get(log.parent);
    if (child !== undefined) {
      for (let i = 0; i < Math.min(child.bits.length, log.bits.length); i++) child.bits[i]! |= log.bits[i]!;
      child.parent = log.parent;
    }
    if (parent !== undefined) parent.child = log.child;
    this.logs.delete(vdi);
  }

  /**
   * The blocks that changed from `from` to `to` (VDI.list_changed_blocks), following child
   * links from `from`; SR_BACKEND_FAILURE_460 when `to` is not found after `from` (unrelated
   * VDIs, `to` older than `from`, CBT disabled on either).
   */
  changed(from: string, to: string, size: number): Buffer {
    if (from === to) throw changedBlocksError('Source and target VDI are same');
    let node = this.logs.get(from);
    if (node === undefined || !this.logs.has(to)) throw changedBlocksError('Source and target VDI are unrelated');
    const out = Buffer.alloc(bitmapBytes(size));
    const seen = new Set<string>([from]);
    while (node.child !== undefined && !seen.has(node.child)) {
      const name = node.child;
      seen.add(name);
      const next = this.logs.get(name);
      if (next === undefined) break;
      for (let i = 0; i < Math.min(out.length, next.bits.length); i++) out[i]! |= next.bits[i]!;
      if (name === to) return out;
      node = next;
    }
    throw changedBlocksError('Source and target VDI are unrelated');
  }
}
