/**
 * Pulls exact byte counts out of an async stream of buffers, tracking the absolute position.
 * Used by the tar, XVA and VHD readers. Holds at most what the last `read(n)` asked for plus
 * the remainder of one input chunk: memory is bounded by the largest single read, never by
 * the size of the input.
 *
 * `read(n)` returns a view of the input chunk when the bytes are contiguous (no copy), or a
 * fresh buffer when they span chunks. It returns fewer than `n` bytes only at end of input.
 * The producer must not reuse the buffers it yields (Node streams never do).
 *
 * @example
 *   const r = new ByteReader(fs.createReadStream(file));
 *   const header = await r.read(512);  // header.length < 512 ⇒ input ended
 *   await r.skip(1024);
 *   r.position;                        // 1536 bytes consumed
 */
export class ByteReader {
  /** Absolute offset of the next byte `read` returns. */
  position = 0;
  private readonly iterator: AsyncIterator<Uint8Array | string>;
  private chunks: Buffer[] = [];
  private head = 0; // offset into chunks[0]
  private buffered = 0;
  private ended = false;

  constructor(input: AsyncIterable<Uint8Array | string>) {
    this.iterator = input[Symbol.asyncIterator]();
  }

  private async fill(n: number): Promise<void> {
    while (this.buffered < n && !this.ended) {
      const next = await this.iterator.next();
      if (next.done) {
        this.ended = true;
        break;
      }
      const value = next.value;
      const buf = typeof value === 'string' ? Buffer.from(value) : Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
      if (buf.length > 0) {
        this.chunks.push(buf);
        this.buffered += buf.length;
      }
    }
  }

  private consume(n: number): void {
    this.buffered -= n;
    this.position += n;
    while (n > 0) {
      const first = this.chunks[0]!;
      const left = first.length - this.head;
      if (n < left) {
        this.head += n;
        return;
      }
      n -= left;
      this.chunks.shift();
      this.head = 0;
    }
  }

  /** Up to `n` bytes; fewer only when the input has ended. */
  async read(n: number): Promise<Buffer> {
    await this.fill(n);
    const take = Math.min(n, this.buffered);
    if (take === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length - this.head >= take) {
      out = first.subarray(this.head, this.head + take);
    } else {
      out = Buffer.allocUnsafe(take);
      let copied = 0;
      let index = 0;
      let from = this.head;
      while (copied < take) {
        const chunk = this.chunks[index]!;
        const count = Math.min(chunk.length - from, take - copied);
        chunk.copy(out, copied, from, from + count);
        copied += count;
        index += 1;
        from = 0;
      }
    }
    this.consume(take);
    return out;
  }

  /** Skips up to `n` bytes without keeping them; returns how many were skipped. */
  async skip(n: number): Promise<number> {
    let skipped = 0;
    while (skipped < n) {
      await this.fill(1);
      if (this.buffered === 0) break;
      const count = Math.min(this.buffered, n - skipped);
      this.consume(count);
      skipped += count;
    }
    return skipped;
  }

  /** True when no byte is left. */
  async atEnd(): Promise<boolean> {
    await this.fill(1);
    return this.buffered === 0;
  }

  /** Stops pulling from the input (lets a stream source release its resources). */
  async close(): Promise<void> {
    this.chunks = [];
    this.buffered = 0;
    if (!this.ended) {
      this.ended = true;
      await this.iterator.return?.();
    }
  }
}
