import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { generatedSource } from './test-sources.js';
import { loadXxh64, XXH64_EMPTY, xxh64Hex } from './xxh64.js';

// Needs the `xxhsum` command (Debian package `xxhash`).
const dir = mkdtempSync(join(tmpdir(), 'xxh64-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('xxh64', () => {
  it.each([
    ['', XXH64_EMPTY],
    ['a', 'D24EC4F1A98C6E5B'],
    ['abc', '44BC2CF5AD770999'],
  ])('hashes %j to the reference XXH64 %s', async (text, expected) => {
    const xxh = await loadXxh64();
    expect(xxh.hash(Buffer.from(text))).toBe(expected);
  });

  it('formats like %016LX: zero-padded uppercase', () => {
    expect(xxh64Hex(0xabcn)).toBe('0000000000000ABC');
    expect(xxh64Hex(0xffffffffffffffffn)).toBe('FFFFFFFFFFFFFFFF');
  });

  it('agrees with xxhsum on 1 MiB buffers and a short tail', async () => {
    const xxh = await loadXxh64();
    const src = generatedSource({ size: (3 << 20) + 777, seed: 9 });
    for (const [offset, length] of [
      [0, 1 << 20],
      [1 << 20, 1 << 20],
      [3 << 20, 777],
    ] as const) {
      const data = (await src.read(offset, length))!;
      const file = join(dir, `part-${offset}`);
      writeFileSync(file, data);
      const out = execFileSync('xxhsum', ['-H1', file], { encoding: 'utf8' });
      expect(xxh.hash(data)).toBe(out.split(/\s+/)[0]!.toUpperCase());
    }
  });

  it('incremental hashing equals one-shot hashing', async () => {
    const xxh = await loadXxh64();
    const data = (await generatedSource({ size: 5000, seed: 3 }).read(0, 5000))!;
    const state = xxh.create();
    state.update(data.subarray(0, 1)).update(data.subarray(1, 4000)).update(data.subarray(4000));
    expect(state.digest()).toBe(xxh.hash(data));
    expect(xxh.hashBigInt(data).toString(16).toUpperCase().padStart(16, '0')).toBe(xxh.hash(data));
  });

  it('caches one instance', async () => {
    expect(await loadXxh64()).toBe(await loadXxh64());
  });
});
