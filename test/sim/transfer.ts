import { spawn } from 'node:child_process';
import type { ServerResponse } from 'node:http';
import { Duplex, Transform, type Readable, type TransformCallback } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import zlib from 'node:zlib';
import type { BlockSource } from '../../runtime/formats/block-source.js';
import type { FaultAction } from './faults.js';

/** `use_compression` as export.ml reads it: `true`/`gzip` → gzip, `zstd` → zstd, else none. */
export type Compression = 'none' | 'gzip' | 'zstd';

export function compressionOf(value: string | null): Compression {
  if (value === 'true' || value === 'gzip') return 'gzip';
  if (value === 'zstd') return 'zstd';
  return 'none';
}

/**
 * A compressor stage. gzip runs in-process (zlib, fast level as XAPI's `gzip --fast`); zstd
 * runs the `zstd` binary, as XAPI itself pipes through it.
 */
export function compressor(kind: Exclude<Compression, 'none'>): Duplex {
  if (kind === 'gzip') return zlib.createGzip({ level: 1 });
  const child = spawn('zstd', ['-q', '-c', '-T1'], { stdio: ['pipe', 'pipe', 'ignore'] });
  const duplex = Duplex.from({ writable: child.stdin, readable: child.stdout });
  const kill = () => {
    if (child.exitCode === null) child.kill('SIGKILL');
  };
  duplex.on('close', kill);
  duplex.on('error', kill);
  child.on('error', (error) => duplex.destroy(error));
  return duplex;
}

/** A BlockSource that reports how far it has been read (for task progress). */
export function trackedSource(source: BlockSource, onRead: (end: number) => void): BlockSource {
  return {
    size: source.size,
    read(offset, length) {
      const r = source.read(offset, length);
      onRead(offset + length);
      return r;
    },
  };
}

export type CutReason = { kind: 'reset' } | { kind: 'task-failure'; code: string; params: string[] } | { kind: 'cancelled' };

/**
 * The last stage before the socket: counts body bytes and applies transfer faults (reset or
 * failure after N bytes, stall, slow rate) and task cancellation. Backpressure is preserved:
 * a stalled or slow meter holds its callback, so upstream stops reading.
 */
export class Meter extends Transform {
  bytes = 0;
  cut: CutReason | undefined;
  private readonly abort = new AbortController();
  private stalled = false;

  constructor(
    private readonly fault: FaultAction | undefined,
    private readonly isCancelling: () => boolean,
    private readonly simClosed: Promise<void>,
  ) {
    super({ highWaterMark: 64 * 1024 });
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.abort.abort();
    callback(error);
  }

  /** Waits `ms` (forever when undefined) unless the stream is destroyed or the simulator closes. */
  private async wait(ms: number | undefined): Promise<void> {
    const signal = this.abort.signal;
    if (signal.aborted) return;
    let onAbort: (() => void) | undefined;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      new Promise<void>((resolve) => {
        onAbort = resolve;
        signal.addEventListener('abort', onAbort, { once: true });
        if (ms !== undefined) timer = setTimeout(resolve, ms);
      }),
      this.simClosed,
    ]);
    if (onAbort !== undefined) signal.removeEventListener('abort', onAbort);
    if (timer !== undefined) clearTimeout(timer);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, callback: TransformCallback): void {
    this.process(chunk).then(() => callback(), (error: Error) => callback(error));
  }

  private async process(chunk: Buffer): Promise<void> {
    // After a cut nothing more goes out, and the stream must not end cleanly: hold until the
    // connection is torn down (which destroys this stream).
    if (this.cut !== undefined) return this.wait(undefined);
    if (this.abort.signal.aborted) return;
    if (this.isCancelling()) {
      this.cut = { kind: 'cancelled' };
      this.emit('cut', this.cut);
      return this.wait(undefined);
    }
    const f = this.fault;
    if (f !== undefined && (f.kind === 'reset' || (f.kind === 'task-failure' && f.after_bytes !== undefined))) {
      const limit = f.kind === 'reset' ? f.after_bytes : f.after_bytes!;
      if (this.bytes + chunk.length >= limit) {
        const head = chunk.subarray(0, limit - this.bytes);
        if (head.length > 0) this.push(head);
        this.bytes += head.length;
        this.cut = f.kind === 'reset' ? { kind: 'reset' } : { kind: 'task-failure', code: f.code, params: f.params };
        this.emit('cut', this.cut);
        return this.wait(undefined);
      }
    }
    if (f?.kind === 'stall' && !this.stalled && this.bytes + chunk.length >= f.after_bytes) {
      const head = chunk.subarray(0, f.after_bytes - this.bytes);
      if (head.length > 0) this.push(head);
      this.bytes += head.length;
      this.stalled = true;
      await this.wait(f.ms);
      chunk = chunk.subarray(head.length);
      if (this.abort.signal.aborted) return;
    }
    if (f?.kind === 'slow') {
      const slice = Math.max(1, Math.min(64 * 1024, Math.floor(f.bytes_per_second / 10)));
      for (let i = 0; i < chunk.length; i += slice) {
        const piece = chunk.subarray(i, i + slice);
        await this.wait((piece.length / f.bytes_per_second) * 1000);
        if (this.abort.signal.aborted) return;
        this.push(piece);
        this.bytes += piece.length;
      }
      return;
    }
    if (f?.kind === 'corrupt' && f.at_byte >= this.bytes && f.at_byte < this.bytes + chunk.length) {
      chunk = Buffer.from(chunk);
      const i = f.at_byte - this.bytes;
      chunk[i] = chunk[i]! ^ 0xff;
    }
    if (chunk.length > 0) this.push(chunk);
    this.bytes += chunk.length;
  }
}

/** Ends the connection abruptly (TCP RST where possible) once what was written has left. */
export async function cutConnection(res: ServerResponse): Promise<void> {
  const socket = res.socket;
  if (socket === null || socket.destroyed) return;
  const until = Date.now() + 500;
  while (socket.writableLength > 0 && Date.now() < until) await delay(5);
  await delay(50);
  try {
    socket.resetAndDestroy();
  } catch {
    socket.destroy();
  }
}

/** Collects a readable into a string (small bodies only). */
export async function readBody(stream: Readable, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new Error(`body larger than ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}
