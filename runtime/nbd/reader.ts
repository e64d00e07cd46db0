import type { Duplex } from 'node:stream';

/** The stream ended (or failed) before the bytes a reader waited for arrived. */
export class StreamEndedError extends Error {
  override name = 'StreamEndedError';
  constructor(
    message: string,
    /** Bytes that were still expected. */
    readonly missing: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * Exact-length reads from a socket: `take(n)` resolves with the next n bytes. At most
 * `highWaterMark` bytes are buffered (the socket is paused beyond), so memory stays bounded
 * whatever the peer sends. `detach()` hands the socket back (e.g. to wrap it in TLS).
 */
export class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;
  private readonly onData = (chunk: Buffer) => {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.buffered >= this.highWaterMark) this.stream.pause();
    this.serve();
  };
  private readonly onEnd = () => this.fail(new StreamEndedError('connection closed by the peer', this.waiter?.n ?? 0));
  private readonly onError = (error: Error) => this.fail(new StreamEndedError(`connection failed: ${error.message}`, this.waiter?.n ?? 0, { cause: error }));

  constructor(
    private readonly stream: Duplex,
    private readonly highWaterMark = 4 << 20,
  ) {
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
  }

  /** Bytes received and not yet taken. */
  get pending(): number {
    return this.buffered;
  }

  take(n: number): Promise<Buffer> {
    if (this.waiter !== undefined) return Promise.reject(new Error('ByteReader: one take() at a time'));
    if (n === 0) return Promise.resolve(Buffer.alloc(0));
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.serve();
    });
  }

  private fail(error: Error): void {
    this.failure ??= error;
    const w = this.waiter;
    if (w !== undefined && this.buffered < w.n) {
      this.waiter = undefined;
      w.reject(this.failure);
    }
  }

  private serve(): void {
    const w = this.waiter;
    if (w === undefined) return;
    if (this.buffered < w.n) {
      if (this.failure !== undefined) {
        this.waiter = undefined;
        w.reject(this.failure);
      } else if (this.stream.isPaused()) this.stream.resume();
      return;
    }
    this.waiter = undefined;
    let out: Buffer;
    const first = this.chunks[0]!;
    if (first.length >= w.n) {
      out = first.subarray(0, w.n);
      if (first.length === w.n) this.chunks.shift();
      else this.chunks[0] = first.subarray(w.n);
    } else {
      out = Buffer.allocUnsafe(w.n);
      let at = 0;
      while (at < w.n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, w.n - at);
        c.copy(out, at, 0, k);
        at += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= w.n;
    if (this.buffered < this.highWaterMark && this.stream.isPaused() && this.failure === undefined) this.stream.resume();
    w.resolve(out);
  }

  /** Stops reading; returns bytes received and not taken. */
  detach(): Buffer {
    this.stream.off('data', this.onData);
    this.stream.off('end', this.onEnd);
    this.stream.off('close', this.onEnd);
    this.stream.off('error', this.onError);
    this.stream.pause();
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    this.buffered = 0;
    return rest;
  }
}
