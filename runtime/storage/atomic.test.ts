import { mkdtemp, readdir, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { loadXxh64 } from '../formats/xxh64.js';
import { writeFileAtomic, writeStreamAtomic } from './atomic.js';

async function tmp(): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), 'vmb-atomic-'));
}

function chunks(n: number, size: number, failAt?: number): Readable {
  let i = 0;
  return new Readable({
    read() {
      if (i === failAt) {
        this.destroy(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }));
        return;
      }
      this.push(i < n ? Buffer.alloc(size, i++) : null);
    },
  });
}

describe('writeStreamAtomic', () => {
  it('writes the bytes, returns their size and XXH64, leaves no partial', async () => {
    const dir = await tmp();
    const target = path.join(dir, 'sub', 'a.xva');
    const result = await writeStreamAtomic(target, chunks(5, 1000));
    const data = await readFile(target);
    expect(result.size).toBe(5000);
    expect(data.length).toBe(5000);
    expect(result.xxh64).toBe((await loadXxh64()).hash(data));
    expect(await readdir(path.dirname(target))).toEqual(['a.xva']);
  });

  it('on a broken source: no target, no partial, the source error', async () => {
    const dir = await tmp();
    const target = path.join(dir, 'a.xva');
    await expect(writeStreamAtomic(target, chunks(5, 1000, 3))).rejects.toMatchObject({ code: 'ECONNRESET' });
    expect(await readdir(dir)).toEqual([]);
  });

  it('when commit refuses (XAPI task failed): no target, no partial', async () => {
    const dir = await tmp();
    const target = path.join(dir, 'a.xva');
    const refused = writeStreamAtomic(target, chunks(2, 10), {
      commit: async () => {
        throw Object.assign(new Error('VDI_IO_ERROR'), { code: 'VDI_IO_ERROR' });
      },
    });
    await expect(refused).rejects.toThrow('VDI_IO_ERROR');
    expect(await readdir(dir)).toEqual([]);
  });

  it('keeps an existing complete file when a rewrite fails', async () => {
    const dir = await tmp();
    const target = path.join(dir, 'a.xva');
    await writeFileAtomic(target, 'good');
    await expect(writeStreamAtomic(target, chunks(5, 10, 2))).rejects.toThrow();
    expect(await readFile(target, 'utf8')).toBe('good');
    expect(await readdir(dir)).toEqual(['a.xva']);
  });

  it('fails with STALLED when the source goes quiet', async () => {
    const dir = await tmp();
    const quiet = new Readable({ read() {} });
    quiet.push(Buffer.alloc(10));
    await expect(writeStreamAtomic(path.join(dir, 'a'), quiet, { idleTimeoutMs: 200 })).rejects.toMatchObject({ code: 'STALLED' });
    expect(await readdir(dir)).toEqual([]);
  });
});
