import { beforeAll, describe, expect, it } from 'vitest';
import type { Readable } from 'node:stream';
import { generatedSource } from './test-sources.js';
import { verifyVhd, vhdStream } from './vhd.js';
import { verifyXva, xvaStream } from './xva.js';
import { rawStream } from './raw.js';

// A 1 GiB disk generated on the fly (data in every other 8 MiB region, the rest zero) goes
// through each writer, and through writer + validator. Memory must stay flat: the bound on
// RSS growth is loose (GC timing), far below the disk size. Throughput is printed, not asserted.
const GiB = 1 << 30;
const MiB = 1 << 20;
const source = generatedSource({ size: GiB, regionSize: 8 * MiB, seed: 77, kind: (r) => (r % 2 === 0 ? 'data' : 'null') });
const ova = '<value><struct><member><name>version</name><value><struct></struct></value></member><member><name>objects</name><value><array><data><value><struct><member><name>class</name><value>VDI</value></member><member><name>id</name><value>Ref:1</value></member><member><name>snapshot</name><value><struct><member><name>virtual_size</name><value>1073741824</value></member></struct></value></member></struct></value></data></array></value></member></struct></value>';
const RSS_BOUND = 96 * MiB;

interface Measure {
  bytes: number;
  seconds: number;
  rssGrowth: number;
}

async function measure(run: (sample: () => void) => Promise<number>): Promise<Measure> {
  global.gc?.();
  const before = process.memoryUsage().rss;
  let peak = before;
  const sample = (): void => {
    const rss = process.memoryUsage().rss;
    if (rss > peak) peak = rss;
  };
  const start = performance.now();
  const bytes = await run(sample);
  const seconds = (performance.now() - start) / 1000;
  sample();
  return { bytes, seconds, rssGrowth: peak - before };
}

async function drain(stream: Readable, sample: () => void): Promise<number> {
  let bytes = 0;
  let n = 0;
  for await (const part of stream) {
    bytes += (part as Buffer).length;
    if (++n % 64 === 0) sample();
  }
  return bytes;
}

/** Passes a stream through while sampling memory and counting bytes. */
async function* sampled(stream: Readable, sample: () => void, count: { bytes: number }): AsyncGenerator<Buffer> {
  let n = 0;
  for await (const part of stream) {
    if (++n % 64 === 0) sample();
    count.bytes += (part as Buffer).length;
    yield part as Buffer;
  }
}

function report(label: string, m: Measure): void {
  console.log(
    `${label}: 1 GiB disk in ${m.seconds.toFixed(2)} s = ${(GiB / MiB / m.seconds).toFixed(0)} MiB/s of disk, ${(m.bytes / MiB / m.seconds).toFixed(0)} MiB/s of stream (${(m.bytes / MiB).toFixed(0)} MiB), RSS +${(m.rssGrowth / MiB).toFixed(1)} MiB`,
  );
}

describe('streaming a 1 GiB disk', { timeout: 120_000 }, () => {
  // Warm up (WASM, JIT, pattern buffers) so the first measure is not charged for it.
  beforeAll(async () => {
    const small = generatedSource({ size: 64 * MiB, regionSize: 8 * MiB, seed: 77, kind: (r) => (r % 2 === 0 ? 'data' : 'null') });
    const noop = (): void => {};
    await drain(xvaStream({ ovaXml: ova, disks: [{ ref: 'Ref:1', source: small }], checksum: 'xxhash' }), noop);
    await drain(vhdStream(small), noop);
  });

  it('through the XVA writer with flat memory', async () => {
    const m = await measure((sample) => drain(xvaStream({ ovaXml: ova, disks: [{ ref: 'Ref:1', source }] }), sample));
    report('xvaStream', m);
    expect(m.bytes).toBeGreaterThan(GiB / 2);
    expect(m.rssGrowth).toBeLessThan(RSS_BOUND);
  });

  it('through the XVA writer and verifyXva with flat memory', async () => {
    let diskBytes = 0;
    const m = await measure(async (sample) => {
      const count = { bytes: 0 };
      const result = await verifyXva(sampled(xvaStream({ ovaXml: ova, disks: [{ ref: 'Ref:1', source }] }), sample, count));
      diskBytes = result.disks[0]!.bytes;
      return count.bytes;
    });
    report('xvaStream → verifyXva', m);
    expect(diskBytes).toBe(GiB);
    expect(m.rssGrowth).toBeLessThan(RSS_BOUND);
  });

  it('through the VHD writer with flat memory', async () => {
    const m = await measure((sample) => drain(vhdStream(source), sample));
    report('vhdStream', m);
    expect(m.bytes).toBe(2048 + 512 * 4 + 256 * (512 + 2 * MiB) + 512); // metadata, BAT of 512 entries, 256 data blocks, footer
    expect(m.rssGrowth).toBeLessThan(RSS_BOUND);
  });

  it('through the VHD writer and verifyVhd with flat memory', async () => {
    let allocated = 0;
    const m = await measure(async (sample) => {
      const count = { bytes: 0 };
      allocated = (await verifyVhd(sampled(vhdStream(source), sample, count))).allocatedBlocks;
      return count.bytes;
    });
    report('vhdStream → verifyVhd', m);
    expect(allocated).toBe(256);
    expect(m.rssGrowth).toBeLessThan(RSS_BOUND);
  });

  it('through the raw writer with flat memory', async () => {
    const m = await measure((sample) => drain(rawStream(source), sample));
    report('rawStream', m);
    expect(m.bytes).toBe(GiB);
    expect(m.rssGrowth).toBeLessThan(RSS_BOUND);
  });
});
