import { writeSync } from 'node:fs';
import { mkdir, open, rename, rm, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { PermanentError, VmbackupError } from '../errors.js';
import { loadXxh64 } from '../formats/xxh64.js';
import type { Xxh64State } from '../formats/xxh64.js';
import type { BodySource } from '../xapi/http-get.js';
import { partialFileName } from './naming.js';
import { keepFresh, newWriterTag } from './writer.js';

/** Bytes written between background fdatasyncs. */
const SYNC_EVERY = 128 << 20;

export interface WriteResult {
  size: number;
  /** XXH64 of the bytes written, 16 uppercase hex digits. */
  xxh64: string;
}

export interface StreamWriteOptions {
  signal?: AbortSignal;
  /** Called with the running byte count, at most a few times a second. */
  onProgress?: (bytes: number) => void;
  /** Fail with STALLED when the source sends nothing for this long (ms). */
  idleTimeoutMs?: number;
  /**
   * Called once the bytes are on disk, before the rename: the last word on whether they are
   * whole (e.g. XAPI's task result — an export that XAPI aborts still ends like a normal
   * close). A throw leaves nothing at `target`.
   */
  commit?: (result: WriteResult) => Promise<void>;
  /**
   * Sees every byte written, in order, synchronously (a view valid only during the call), and
   * then `end()` once the source ended, before the fsync: a throw from either fails the write
   * like a failed write(2) (nothing at `target`, the error passed on). For a check of the
   * file's format as it is written (runtime/formats/xva.ts `XvaChecker`).
   */
  inspect?: { push(chunk: Buffer): void; end(): void };
}

/**
 * Streams `source` into `target` the only safe way: into `<target>.<writer tag>.partial` (named
 * after this process, and touched every 30 s while open: runtime/storage/writer.ts), then fsync,
 * rename, fsync of the folder. Until the rename nothing at `target` changes; on any failure
 * the partial file is removed and the error says what happened (ENOSPC → a PermanentError
 * naming the file). Memory stays flat: one chunk at a time, backpressure from the disk.
 * `source` is a stream, or the body of an `httpGet` (written from its read buffer, no copy).
 *
 * @example
 *   const { size, xxh64 } = await writeStreamAtomic('/b/web1/backup_20261126-083000.xva', body);
 */
export async function writeStreamAtomic(target: string, source: Readable | BodySource, opts: StreamWriteOptions = {}): Promise<WriteResult> {
  const partial = path.join(path.dirname(target), partialFileName(path.basename(target), newWriterTag()));
  await mkdir(path.dirname(target), { recursive: true });
  const hasher = (await loadXxh64()).create();
  const stall = new AbortController();
  let idleTimer: NodeJS.Timeout | undefined;
  if (opts.idleTimeoutMs !== undefined) {
    const ms = opts.idleTimeoutMs;
    idleTimer = setTimeout(() => stall.abort(new VmbackupError('STALLED', `no data for ${Math.round(ms / 1000)} s while writing ${path.basename(target)}`)), ms);
  }
  const signal = opts.signal === undefined ? stall.signal : AbortSignal.any([opts.signal, stall.signal]);
  let result: WriteResult;
  let handle: FileHandle | undefined;
  let heartbeat: { stop(): void } | undefined;
  try {
    handle = await open(partial, 'wx');
    const open_ = handle;
    heartbeat = keepFresh((now) => open_.utimes(now, now));
    const writer = new FileWriter(
      handle,
      hasher,
      (bytes) => {
        idleTimer?.refresh();
        opts.onProgress?.(bytes);
      },
      opts.inspect,
    );
    if ('pump' in source) await pumpInto(source, writer, signal);
    else await pipeline(source, new FileSink(writer), { signal });
    opts.inspect?.end();
    await handle.sync();
    heartbeat.stop();
    await handle.close();
    handle = undefined;
    result = { size: writer.bytes, xxh64: hasher.digest() };
    await opts.commit?.(result);
    await rename(partial, target);
    await syncDir(path.dirname(target));
  } catch (error) {
    await handle?.close().catch(() => {});
    await rm(partial, { force: true });
    throw writeError(error, target, signal);
  } finally {
    heartbeat?.stop();
    clearTimeout(idleTimer);
  }
  opts.onProgress?.(result.size);
  return result;
}

/**
 * The file end of a transfer: each chunk is written with write(2) on this thread as it
 * arrives, while it is still in the CPU cache from the socket read. Measured on the 2-core
 * VMs this runs on, that keeps pace with `curl -o`, whereas Node's fs.WriteStream (a thread
 * pool hop per chunk) or gathering chunks into large buffers (copies that miss the cache)
 * reached half of it. A write blocks the event loop for tens of microseconds per 64 KiB.
 * Every SYNC_EVERY bytes an fdatasync runs in the background, so the fsync before the rename
 * has little left: the disk works alongside the network instead of after it. `write` keeps no
 * reference to its chunk, so a reused read buffer can be handed to it.
 */
class FileWriter {
  bytes = 0;
  private syncing: Promise<void> | undefined;
  private unsynced = 0;
  private lastProgress = 0;

  constructor(
    private readonly file: FileHandle,
    private readonly hasher: Xxh64State,
    private readonly progress: (bytes: number) => void,
    private readonly inspect?: { push(chunk: Buffer): void },
  ) {}

  write(chunk: Buffer): void {
    this.hasher.update(chunk);
    this.inspect?.push(chunk);
    let done = 0;
    while (done < chunk.length) done += writeSync(this.file.fd, chunk, done, chunk.length - done);
    this.bytes += chunk.length;
    this.unsynced += chunk.length;
    if (this.unsynced >= SYNC_EVERY && this.syncing === undefined) {
      this.unsynced = 0;
      this.syncing = this.file.datasync().finally(() => (this.syncing = undefined));
    }
    const now = Date.now();
    if (now - this.lastProgress > 250) {
      this.lastProgress = now;
      this.progress(this.bytes);
    }
  }

  /** Waits for the background data sync under way, if any. */
  async settled(): Promise<void> {
    await this.syncing;
  }
}

/** A FileWriter as the end of a stream pipeline. */
class FileSink extends Writable {
  constructor(readonly writer: FileWriter) {
    super({ highWaterMark: 1 << 20 });
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    try {
      this.writer.write(chunk);
    } catch (error) {
      callback(error as Error);
      return;
    }
    callback();
  }

  override _writev(chunks: { chunk: Buffer }[], callback: (error?: Error | null) => void): void {
    try {
      for (const { chunk } of chunks) this.writer.write(chunk);
    } catch (error) {
      callback(error as Error);
      return;
    }
    callback();
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.writer.settled().then(() => callback(), callback);
  }
}

/** Reads a BodySource into `writer` until its end; `signal` destroys it. */
async function pumpInto(source: BodySource, writer: FileWriter, signal: AbortSignal): Promise<void> {
  const stop = () => source.destroy(signal.reason as Error);
  if (signal.aborted) stop();
  signal.addEventListener('abort', stop, { once: true });
  try {
    await source.pump((chunk) => writer.write(chunk));
    await writer.settled();
  } finally {
    signal.removeEventListener('abort', stop);
  }
}

/** Writes a small file atomically (partial, fsync, rename, fsync of the folder). */
export async function writeFileAtomic(target: string, data: string | Buffer): Promise<WriteResult> {
  const partial = path.join(path.dirname(target), partialFileName(path.basename(target), newWriterTag()));
  await mkdir(path.dirname(target), { recursive: true });
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  try {
    await writeFile(partial, bytes, { flag: 'wx' });
    await syncFile(partial);
    await rename(partial, target);
    await syncDir(path.dirname(target));
  } catch (error) {
    await rm(partial, { force: true });
    throw writeError(error, target);
  }
  return { size: bytes.length, xxh64: (await loadXxh64()).hash(bytes) };
}

async function syncFile(file: string): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** fsync of a directory makes a rename durable; some filesystems refuse it, which is harmless. */
export async function syncDir(dir: string): Promise<void> {
  let handle;
  try {
    handle = await open(dir, 'r');
    await handle.sync();
  } catch {
    // EINVAL/EISDIR on filesystems without directory fsync (some NFS/SMB mounts).
  } finally {
    await handle?.close();
  }
}

/** A write failure as the error to report: ENOSPC/EDQUOT and EACCES/EPERM/EROFS become PermanentErrors naming the file. */
export function writeError(error: unknown, target: string, signal?: AbortSignal): Error {
  if (signal?.aborted && signal.reason instanceof VmbackupError) return signal.reason;
  if (error instanceof VmbackupError) return error;
  const code = (error as { code?: unknown }).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new PermanentError('ENOSPC', `the backup filesystem is full: cannot write ${target} (${String(code)})`, { file: target }, { cause: error });
  }
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
    return new PermanentError('NOT_WRITABLE', `cannot write ${target} (${String(code)})`, { file: target }, { cause: error });
  }
  if (error instanceof Error) return error;
  return new Error(String(error));
}
