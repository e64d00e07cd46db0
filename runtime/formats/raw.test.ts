import { describe, expect, it } from 'vitest';
import type { BlockSource } from './block-source.js';
import { rawParts, rawStream } from './raw.js';
import { generatedSource, readAll } from './test-sources.js';
import { ZERO_BUFFER } from './zero.js';

const MiB = 1 << 20;

describe('rawStream', () => {
  it.each([
    ['mixed data, null and zero regions, odd size', generatedSource({ size: 9 * MiB + 1536, seed: 4, kind: (r) => (r % 3 === 0 ? 'null' : r % 3 === 1 ? 'zero' : 'data') })],
    ['all null', { size: 5 * MiB, read: () => null } satisfies BlockSource],
    ['empty', { size: 0, read: () => null } satisfies BlockSource],
  ])('emits exactly the disk bytes: %s', async (_, source) => {
    const parts: Buffer[] = [];
    for await (const part of rawStream(source)) parts.push(part as Buffer);
    expect(Buffer.concat(parts).equals(await readAll(source))).toBe(true);
  });

  it('serves null ranges from the shared zero buffer (no allocation)', async () => {
    const parts: Buffer[] = [];
    for await (const part of rawParts({ size: 4 * MiB + 512, read: () => null })) parts.push(part);
    expect(parts.map((p) => p.length)).toEqual([2 * MiB, 2 * MiB, 512]);
    expect(parts.every((p) => p.buffer === ZERO_BUFFER.buffer)).toBe(true);
  });

  it('reads the source only as the consumer reads', async () => {
    let reads = 0;
    const inner = generatedSource({ size: 64 * MiB });
    const source: BlockSource = { size: inner.size, read: (o, l) => (reads++, inner.read(o, l)) };
    let received = 0;
    for await (const part of rawStream(source)) {
      received += (part as Buffer).length;
      if (received >= 4 * MiB) break;
    }
    expect(reads).toBeLessThanOrEqual(4);
  });

  it('refuses a source that returns the wrong length', async () => {
    await expect(async () => {
      for await (const _ of rawParts({ size: 4096, read: () => Buffer.alloc(1) })) void _;
    }).rejects.toThrow(/returned 1 bytes for \[0, \+4096\)/);
  });
});
