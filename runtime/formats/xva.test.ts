import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockSource } from './block-source.js';
import { TAR_END, tarEntry, TarErrorCode } from './tar.js';
import { generatedSource, readAll } from './test-sources.js';
import { encodeValue } from './xmlrpc.js';
import { readXva, verifyXva, xvaDiskWrites, XvaError, XvaErrorCode, xvaParts, xvaSize, xvaStream, type ReadXvaOptions, type XvaStreamOptions } from './xva.js';
import { loadXxh64, XXH64_EMPTY } from './xxh64.js';

// Needs python3, xxhsum (Debian package `xxhash`) and sha1sum.
const MiB = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), 'xva-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Flips bits of one byte in place (single-byte corruption). */
function flip(buf: Buffer, at: number, mask: number): void {
  buf[at] = buf[at]! ^ mask;
}

function ovaXml(disks: { ref: string; size: number }[]): string {
  return encodeValue(
    {
      version: { hostname: 'sim', date: '2024-05-01', product_version: '8.2.1', product_brand: 'XCP-ng', build_number: 'release/yangtze', xapi_major: '1', xapi_minor: '20', export_vsn: '2' },
      objects: [
        { class: 'VM', id: 'Ref:0', snapshot: { name_label: 'vm é', VBDs: disks.map((_, i) => `Ref:${100 + i}`) } },
        ...disks.map((d) => ({ class: 'VDI', id: d.ref, snapshot: { name_label: `disk ${d.ref}`, virtual_size: String(d.size) } })),
      ],
    },
    { int64: 'string' },
  );
}

// Ref:2: 10 MiB + 4 KiB; chunk 3 and 7 answered null, chunk 5 a zero Buffer, last chunk short.
const diskA = generatedSource({ size: 10 * MiB + 4096, seed: 2, kind: (r) => (r === 3 || r === 7 ? 'null' : r === 5 ? 'zero' : 'data') });
// Ref:10: first and last chunks zero (still written), last one 512 bytes.
const diskB = generatedSource({ size: 3 * MiB + 512, seed: 10, kind: (r) => (r === 0 || r === 3 ? 'null' : 'data') });
// Ref:7: a single short chunk. Ref:9: empty disk, no chunk.
const diskC = generatedSource({ size: 4096, seed: 7 });
const diskD = generatedSource({ size: 0, seed: 9 });
const DISKS = [
  { ref: 'Ref:2', source: diskA },
  { ref: 'Ref:7', source: diskC },
  { ref: 'Ref:9', source: diskD },
  { ref: 'Ref:10', source: diskB },
];
const OVA = ovaXml(DISKS.map((d) => ({ ref: d.ref, size: d.source.size })));
const EXPECTED_CHUNKS: [string, number[]][] = [
  ['Ref:10', [0, 1, 2, 3]],
  ['Ref:2', [0, 1, 2, 4, 6, 8, 9, 10]],
  ['Ref:7', [0]],
];

function expectedNames(ext: string): string[] {
  return ['ova.xml', ...EXPECTED_CHUNKS.flatMap(([ref, indexes]) => indexes.flatMap((i) => [`${ref}/${String(i).padStart(8, '0')}`, `${ref}/${String(i).padStart(8, '0')}${ext}`]))];
}

async function writeXva(options: XvaStreamOptions, name: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of xvaStream(options)) parts.push(part as Buffer);
  const buf = Buffer.concat(parts);
  writeFileSync(join(dir, name), buf);
  return buf;
}

async function* pieces(buf: Buffer, size = 64 * 1024): AsyncGenerator<Buffer> {
  for (let at = 0; at < buf.length; at += size) yield buf.subarray(at, at + size);
}

async function xvaFailure(buf: Buffer, options?: ReadXvaOptions): Promise<XvaError> {
  try {
    await verifyXva(pieces(buf), options);
  } catch (error) {
    if (error instanceof XvaError) return error;
    throw error;
  }
  throw new Error('expected an XvaError');
}

interface Member {
  name: string;
  size: number;
  mode: number;
  isreg: boolean;
  offset: number;
  offset_data: number;
}

function pythonList(file: string): Member[] {
  const script = `
import json, sys, tarfile
with tarfile.open(sys.argv[1], 'r:') as t:
    print(json.dumps([{'name': m.name, 'size': m.size, 'mode': m.mode, 'isreg': m.isreg(), 'offset': m.offset, 'offset_data': m.offset_data} for m in t]))
`;
  return JSON.parse(execFileSync('python3', ['-c', script, file], { encoding: 'utf8' })) as Member[];
}

function pythonExtract(file: string, into: string): void {
  execFileSync('python3', ['-c', 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])', file, into]);
}

describe('xvaStream, checked by Python tarfile and xxhsum', () => {
  let xva: Buffer;
  let members: Member[];
  beforeAll(async () => {
    xva = await writeXva({ ovaXml: OVA, disks: DISKS }, 'mixed.xva');
    members = pythonList(join(dir, 'mixed.xva'));
  });

  it('writes ova.xml first, then disks in ref order, skipping zero chunks but never the first or last', () => {
    expect(members.map((m) => m.name)).toEqual(expectedNames('.xxhash'));
    expect(members.every((m) => m.isreg && m.mode === 0o400)).toBe(true);
    expect(members[0]!.size).toBe(Buffer.byteLength(OVA));
  });

  it('gives full chunks 1 MiB and the last chunk the remainder', () => {
    const size = (name: string): number => members.find((m) => m.name === name)!.size;
    expect(size('Ref:2/00000000')).toBe(MiB);
    expect(size('Ref:2/00000010')).toBe(4096);
    expect(size('Ref:10/00000000')).toBe(MiB);
    expect(size('Ref:10/00000003')).toBe(512);
    expect(size('Ref:7/00000000')).toBe(4096);
    expect(size('Ref:7/00000000.xxhash')).toBe(16);
  });

  it('ends with exactly two zero blocks, as XAPI writes it', () => {
    const last = members.at(-1)!;
    const end = last.offset_data + Math.ceil(last.size / 512) * 512;
    expect(xva.length).toBe(end + 1024);
    expect(xva.subarray(end).equals(Buffer.alloc(1024))).toBe(true);
  });

  it('every .xxhash entry holds xxhsum of its chunk, in uppercase', () => {
    const out = join(dir, 'mixed-extracted');
    pythonExtract(join(dir, 'mixed.xva'), out);
    const chunks = members.filter((m) => !m.name.endsWith('.xxhash') && m.name !== 'ova.xml').map((m) => m.name);
    const lines = execFileSync('xxhsum', ['-H1', ...chunks], { cwd: out, encoding: 'utf8' }).trim().split('\n');
    expect(lines).toHaveLength(chunks.length);
    for (const line of lines) {
      const [hash, name] = line.split(/\s+/) as [string, string];
      expect(readFileSync(join(out, `${name}.xxhash`), 'latin1')).toBe(hash.toUpperCase());
    }
  });

  it('zero chunks that are written (first, last) hold zeros', () => {
    const start = members.find((m) => m.name === 'Ref:10/00000000')!.offset_data;
    expect(xva.subarray(start, start + MiB).equals(Buffer.alloc(MiB))).toBe(true);
  });

  it('writes legacy SHA-1 .checksum entries on request, matching sha1sum', async () => {
    await writeXva({ ovaXml: OVA, disks: DISKS, checksum: 'sha1' }, 'sha1.xva');
    const listed = pythonList(join(dir, 'sha1.xva'));
    expect(listed.map((m) => m.name)).toEqual(expectedNames('.checksum'));
    const out = join(dir, 'sha1-extracted');
    pythonExtract(join(dir, 'sha1.xva'), out);
    const chunks = listed.filter((m) => m.name.match(/\/\d{8}$/)).map((m) => m.name);
    const lines = execFileSync('sha1sum', chunks, { cwd: out, encoding: 'utf8' }).trim().split('\n');
    for (const line of lines) {
      const [hash, name] = line.split(/\s+/) as [string, string];
      expect(readFileSync(join(out, `${name}.checksum`), 'latin1')).toBe(hash);
    }
    expect((await verifyXva(pieces(readFileSync(join(dir, 'sha1.xva'))))).disks.map((d) => d.checksums)).toEqual([['sha1'], ['sha1'], ['sha1']]);
  });

  it('writes zero Buffers (only null ranges skipped) on request, as XAPI on VHD-backed SRs', async () => {
    await writeXva({ ovaXml: OVA, disks: [{ ref: 'Ref:2', source: diskA }], writeZeroBuffers: true }, 'allocated.xva');
    const chunks = pythonList(join(dir, 'allocated.xva')).filter((m) => /\/\d{8}$/.test(m.name)).map((m) => Number(m.name.slice(-8)));
    expect(chunks).toEqual([0, 1, 2, 4, 5, 6, 8, 9, 10]); // chunk 5 is a zero Buffer
    const report = await verifyXva(pieces(readFileSync(join(dir, 'allocated.xva'))));
    expect(report.disks[0]).toMatchObject({ ref: 'Ref:2', chunks: 9, bytes: diskA.size });
  });

  it('writes POSIX ustar headers on request', async () => {
    await writeXva({ ovaXml: OVA, disks: [{ ref: 'Ref:7', source: diskC }], tarFormat: 'ustar' }, 'ustar.xva');
    const listed = pythonList(join(dir, 'ustar.xva'));
    expect(listed.map((m) => [m.name, m.mode])).toEqual([
      ['ova.xml', 0o644],
      ['Ref:7/00000000', 0o644],
      ['Ref:7/00000000.xxhash', 0o644],
    ]);
  });
});

describe('readXva / verifyXva / xvaDiskWrites', () => {
  let xva: Buffer;
  let members: Member[];
  beforeAll(async () => {
    xva = await writeXva({ ovaXml: OVA, disks: DISKS }, 'read.xva');
    members = pythonList(join(dir, 'read.xva'));
  });
  const at = (name: string): Member => members.find((m) => m.name === name)!;

  it('reassembles every disk exactly, reading the file as a stream', async () => {
    const disks = new Map<string, Buffer>(DISKS.map((d) => [d.ref, Buffer.alloc(d.source.size)]));
    for await (const write of xvaDiskWrites(createReadStream(join(dir, 'read.xva'), { highWaterMark: 100_000 }))) write.data.copy(disks.get(write.ref)!, write.offset);
    for (const { ref, source } of DISKS) expect(disks.get(ref)!.equals(await readAll(source)), ref).toBe(true);
  });

  it('yields ova.xml, chunks with disk offsets, then the end', async () => {
    const events = [];
    for await (const event of readXva(pieces(xva))) events.push(event.type === 'chunk' ? { ...event, data: event.data.length } : event);
    expect(events[0]).toEqual({ type: 'ova', xml: OVA, offset: 0 });
    expect(events.filter((e) => e.type === 'chunk' && e.ref === 'Ref:2').map((e) => e.type === 'chunk' && [e.index, e.offset, e.data])).toEqual(
      [0, 1, 2, 4, 6, 8, 9, 10].map((i) => [i, i * MiB, i === 10 ? 4096 : MiB]),
    );
    expect(events.at(-1)).toEqual({ type: 'end', entries: members.length, bytes: xva.length - 1024 });
  });

  it('summarises the archive', async () => {
    const report = await verifyXva(pieces(xva), { diskSizes: Object.fromEntries(DISKS.map((d) => [d.ref, d.source.size])) });
    expect(report.ovaXml).toBe(OVA);
    expect(report.entries).toBe(members.length);
    expect(report.disks).toEqual([
      { ref: 'Ref:10', chunks: 4, keepalives: 0, lastIndex: 3, bytes: 3 * MiB + 512, dataBytes: 3 * MiB + 512, checksums: ['xxhash'] },
      { ref: 'Ref:2', chunks: 8, keepalives: 0, lastIndex: 10, bytes: 10 * MiB + 4096, dataBytes: 7 * MiB + 4096, checksums: ['xxhash'] },
      { ref: 'Ref:7', chunks: 1, keepalives: 0, lastIndex: 0, bytes: 4096, dataBytes: 4096, checksums: ['xxhash'] },
    ]);
  });

  describe('corruption is caught, naming the chunk and its offset', () => {
    it('a flipped byte in a chunk', async () => {
      const m = at('Ref:2/00000004');
      const bad = Buffer.from(xva);
      flip(bad, m.offset_data + 12345, 0x40);
      const error = await xvaFailure(bad);
      expect(error).toMatchObject({ code: XvaErrorCode.BAD_CHECKSUM, entry: 'Ref:2/00000004', ref: 'Ref:2', index: 4, offset: m.offset });
      expect(error.message).toContain(`bad checksum for chunk Ref:2/00000004 (disk Ref:2 bytes ${4 * MiB}–${5 * MiB}, tar entry at byte ${m.offset})`);
    });

    it('a flipped byte in a checksum entry', async () => {
      const m = at('Ref:10/00000001.xxhash');
      const bad = Buffer.from(xva);
      flip(bad, m.offset_data + 5, 0x01);
      const error = await xvaFailure(bad);
      expect(error).toMatchObject({ code: XvaErrorCode.BAD_CHECKSUM, entry: 'Ref:10/00000001', index: 1, offset: at('Ref:10/00000001').offset });
      expect(error.message).toMatch(/xxhash stored "[0-9A-F]{16}", computed [0-9A-F]{16}/);
    });

    it('a flipped byte in ova.xml', async () => {
      const bad = Buffer.from(xva);
      flip(bad, 512 + OVA.indexOf('<struct>') + 1, 0x01);
      const error = await xvaFailure(bad);
      expect(error).toMatchObject({ code: XvaErrorCode.BAD_OVA, entry: 'ova.xml', offset: 0 });
    });

    it("a flipped byte in ova.xml's tar header", async () => {
      const bad = Buffer.from(xva);
      flip(bad, 2, 0x01);
      const error = await xvaFailure(bad);
      expect(error).toMatchObject({ code: TarErrorCode.BAD_HEADER_CHECKSUM, offset: 0 });
      expect(error.message).toMatch(/^invalid XVA: tar header at byte 0/);
    });

    it("a flipped byte in a chunk's tar header", async () => {
      const m = at('Ref:2/00000008');
      const bad = Buffer.from(xva);
      flip(bad, m.offset + 130, 0x01); // size field
      const error = await xvaFailure(bad);
      expect(error).toMatchObject({ code: TarErrorCode.BAD_HEADER_CHECKSUM, offset: m.offset });
    });

    it('a virtual_size in ova.xml that the data does not match', async () => {
      const ova = ovaXml(DISKS.map((d) => ({ ref: d.ref, size: d.ref === 'Ref:7' ? 8192 : d.source.size })));
      const bad = await writeXva({ ovaXml: ova, disks: DISKS }, 'size.xva');
      const error = await xvaFailure(bad);
      expect(error).toMatchObject({ code: XvaErrorCode.SIZE_MISMATCH, ref: 'Ref:7' });
      expect(error.message).toMatch(/disk Ref:7 ends at byte 4096 of its data but its size is 8192/);
    });

    it.each([
      ['inside a chunk', (m: (n: string) => Member) => m('Ref:2/00000006').offset_data + 1000, TarErrorCode.TRUNCATED, 'Ref:2/00000006'],
      ['between a chunk and its checksum', (m: (n: string) => Member) => m('Ref:2/00000006.xxhash').offset, TarErrorCode.NO_END, 'Ref:2/00000006'],
      ['before the end-of-archive', () => -1024, TarErrorCode.NO_END, 'Ref:7/00000000.xxhash'],
    ])('truncation %s', async (_, cut, code, entry) => {
      const n = cut(at);
      const error = await xvaFailure(xva.subarray(0, n < 0 ? xva.length + n : n));
      expect(error).toMatchObject({ code, entry });
      expect(error.message).toContain(entry);
    });

    it('data after the end-of-archive', async () => {
      const error = await xvaFailure(Buffer.concat([xva, Buffer.from('x')]));
      expect(error).toMatchObject({ code: TarErrorCode.DATA_AFTER_END, offset: xva.length });
    });
  });

  describe('structure errors', () => {
    const chunk = Buffer.alloc(MiB, 1);
    const small = Buffer.alloc(1000, 2);
    let xxh: Awaited<ReturnType<typeof loadXxh64>>;
    beforeAll(async () => {
      xxh = await loadXxh64();
    });
    const entry = (name: string, data: Buffer): Buffer[] => tarEntry(name, data, 'xapi');
    const withSum = (name: string, data: Buffer): Buffer[] => [...entry(name, data), ...entry(`${name}.xxhash`, Buffer.from(xxh.hash(data)))];
    const build = (...parts: Buffer[][]): Buffer => Buffer.concat([...parts.flat(), TAR_END]);
    const ova = (...refs: string[]): Buffer[] => entry('ova.xml', Buffer.from(ovaXml(refs.map((ref) => ({ ref, size: 100 * MiB })))));
    const noCheck = { checkOva: false };

    it.each([
      ['ova.xml not first', () => build(withSum('Ref:1/00000000', chunk), ova('Ref:1')), XvaErrorCode.OVA_NOT_FIRST, 'Ref:1/00000000'],
      ['a second ova.xml', () => build(ova('Ref:1'), ova('Ref:1')), XvaErrorCode.UNEXPECTED_ENTRY, 'ova.xml'],
      ['a missing checksum entry', () => build(ova('Ref:1'), entry('Ref:1/00000000', chunk), withSum('Ref:1/00000001', chunk)), XvaErrorCode.MISSING_CHECKSUM, 'Ref:1/00000001'],
      ['a checksum entry without chunk', () => build(ova('Ref:1'), entry('Ref:1/00000000.xxhash', Buffer.from(XXH64_EMPTY))), XvaErrorCode.ORPHAN_CHECKSUM, 'Ref:1/00000000.xxhash'],
      ['a chunk out of order', () => build(ova('Ref:1'), withSum('Ref:1/00000001', chunk), withSum('Ref:1/00000000', chunk)), XvaErrorCode.CHUNK_OUT_OF_ORDER, 'Ref:1/00000000'],
      ['a repeated chunk', () => build(ova('Ref:1'), withSum('Ref:1/00000001', chunk), withSum('Ref:1/00000001', chunk)), XvaErrorCode.CHUNK_OUT_OF_ORDER, 'Ref:1/00000001'],
      ['disks out of order', () => build(ova('Ref:2', 'Ref:10'), withSum('Ref:2/00000000', chunk), withSum('Ref:10/00000000', chunk)), XvaErrorCode.DISK_OUT_OF_ORDER, 'Ref:10/00000000'],
      ['a disk split in two', () => build(ova('Ref:1', 'Ref:2'), withSum('Ref:1/00000000', chunk), withSum('Ref:2/00000000', chunk), withSum('Ref:1/00000003', chunk)), XvaErrorCode.DISK_OUT_OF_ORDER, 'Ref:1/00000003'],
      ['a chunk larger than the first', () => build(ova('Ref:1'), withSum('Ref:1/00000000', small), withSum('Ref:1/00000001', chunk)), XvaErrorCode.BAD_CHUNK_SIZE, 'Ref:1/00000001'],
      ['a short chunk that is not the last', () => build(ova('Ref:1'), withSum('Ref:1/00000000', chunk), withSum('Ref:1/00000001', small), withSum('Ref:1/00000002', chunk)), XvaErrorCode.BAD_CHUNK_SIZE, 'Ref:1/00000002'],
      ['an empty first chunk', () => build(ova('Ref:1'), withSum('Ref:1/00000000', Buffer.alloc(0))), XvaErrorCode.BAD_CHUNK_SIZE, 'Ref:1/00000000'],
      ['an unknown entry', () => build(ova('Ref:1'), entry('README', small)), XvaErrorCode.UNEXPECTED_ENTRY, 'README'],
      ['a disk that is no VDI of ova.xml', () => build(ova('Ref:1'), withSum('Ref:3/00000000', chunk)), XvaErrorCode.UNEXPECTED_DISK, 'Ref:3/00000000'],
    ])('%s', async (_, make, code, name) => {
      const error = await xvaFailure(make(), code === XvaErrorCode.UNEXPECTED_DISK ? {} : noCheck);
      expect(error.code).toBe(code);
      expect(error.entry).toBe(name);
      expect(error.message).toContain(name);
    });

    it('a chunk past the disk size given by the caller', async () => {
      const error = await xvaFailure(build(ova('Ref:1'), withSum('Ref:1/00000000', chunk), withSum('Ref:1/00000005', chunk)), { diskSizes: { 'Ref:1': 3 * MiB } });
      expect(error).toMatchObject({ code: XvaErrorCode.SIZE_MISMATCH, entry: 'Ref:1/00000005', index: 5 });
      expect(error.message).toContain(`covers disk bytes ${5 * MiB}–${6 * MiB}, past the disk's size ${3 * MiB}`);
    });

    it('a disk the caller expects but the archive lacks', async () => {
      const error = await xvaFailure(build(ova('Ref:1'), withSum('Ref:1/00000000', small)), { diskSizes: { 'Ref:1': 1000, 'Ref:4': MiB } });
      expect(error).toMatchObject({ code: XvaErrorCode.MISSING_DISK, ref: 'Ref:4' });
    });

    it('an archive without any entry', async () => {
      expect((await xvaFailure(TAR_END)).code).toBe(XvaErrorCode.NO_OVA);
    });

    it("places data after XAPI's keepalive chunks at the right offsets", async () => {
      // XAPI: chunk 0, zero run, keepalive under number 5, then the chunk at offset 5 MiB as number 6.
      const data = Buffer.alloc(MiB, 9);
      const events = [];
      for await (const ev of readXva(pieces(build(ova('Ref:1'), withSum('Ref:1/00000000', chunk), withSum('Ref:1/00000005', Buffer.alloc(0)), withSum('Ref:1/00000006', data))), noCheck)) {
        if (ev.type === 'chunk') events.push([ev.index, ev.offset, ev.data.length]);
      }
      expect(events).toEqual([
        [0, 0, MiB],
        [5, 5 * MiB, 0],
        [6, 5 * MiB, MiB],
      ]);
    });
  });
});

describe('keepalive chunks from the writer', () => {
  it('are written during zero runs and the reader still reassembles the disk exactly', async () => {
    const source = generatedSource({ size: 12 * MiB, seed: 5, kind: (r) => (r === 0 || r === 6 || r === 11 ? 'data' : 'null') });
    let now = 0;
    const clock = (): number => (now += 10);
    const xva = await writeXva({ ovaXml: ovaXml([{ ref: 'Ref:1', size: source.size }]), disks: [{ ref: 'Ref:1', source }], keepaliveMs: 25, clock }, 'keepalive.xva');
    const members = pythonList(join(dir, 'keepalive.xva'));
    const keepalives = members.filter((m) => /\/\d{8}$/.test(m.name) && m.size === 0);
    expect(keepalives.length).toBeGreaterThan(0);
    expect(members.find((m) => m.name === `${keepalives[0]!.name}.xxhash`)).toBeDefined();
    const disk = Buffer.alloc(source.size);
    for await (const w of xvaDiskWrites(pieces(xva))) w.data.copy(disk, w.offset);
    expect(disk.equals(await readAll(source))).toBe(true);
    const report = await verifyXva(pieces(xva));
    expect(report.disks[0]).toMatchObject({ keepalives: keepalives.length, bytes: 12 * MiB, dataBytes: 3 * MiB });
    expect(report.disks[0]!.lastIndex).toBe(11 + keepalives.length);
  });
});

describe('xvaStream behaviour', () => {
  it('reads sources only as the consumer reads (backpressure)', async () => {
    let reads = 0;
    const inner = generatedSource({ size: 64 * MiB, seed: 3 });
    const source: BlockSource = { size: inner.size, read: (o, l) => (reads++, inner.read(o, l)) };
    let received = 0;
    for await (const part of xvaStream({ ovaXml: '<value/>', disks: [{ ref: 'Ref:1', source }] })) {
      received += (part as Buffer).length;
      if (received > 3 * MiB) break;
    }
    expect(reads).toBeLessThanOrEqual(6);
  });

  it('refuses a source that returns the wrong length', async () => {
    const source: BlockSource = { size: 2 * MiB, read: () => Buffer.alloc(10, 1) };
    await expect(async () => {
      for await (const _ of xvaParts({ ovaXml: '<value/>', disks: [{ ref: 'Ref:1', source }] })) void _;
    }).rejects.toThrow(/returned 10 bytes/);
  });

  it.each([['Ref:1/x'], ['']])('refuses the disk ref %j', async (ref) => {
    await expect(async () => {
      for await (const _ of xvaParts({ ovaXml: '', disks: [{ ref, source: diskC }] })) void _;
    }).rejects.toThrow(/invalid disk ref/);
  });

  it('hashes what it writes: SHA-1 of a chunk equals its .checksum', async () => {
    const parts: Buffer[] = [];
    for await (const p of xvaParts({ ovaXml: '', disks: [{ ref: 'Ref:7', source: diskC }], checksum: 'sha1' })) parts.push(p);
    const buf = Buffer.concat(parts);
    // ova.xml is empty: its header alone at 0, the chunk's header at 512, its data at 1024.
    const data = buf.subarray(1024, 1024 + 4096);
    expect(buf.toString('latin1', 1024 + 4096, 1024 + 4096 + 23)).toMatch(/^Ref:7\/00000000\.checksum$/);
    expect(buf.toString('latin1', 1024 + 4096 + 512, 1024 + 4096 + 512 + 40)).toBe(createHash('sha1').update(data).digest('hex'));
  });
});

describe('xvaSize', () => {
  it.each([['xxhash'], ['sha1']] as const)('equals the length xvaStream writes with writeZeroBuffers (%s), from the allocation alone', async (checksum) => {
    const kinds: ('data' | 'zero' | 'null')[] = ['null', 'data', 'zero', 'null', 'null', 'data', 'null'];
    const a = generatedSource({ size: 7 * MiB - 4096, kind: (r) => kinds[r]! });
    const b = generatedSource({ size: 3 * MiB, kind: () => 'null', seed: 2 });
    const allocated = (n: number) => (offset: number) => n === 0 && kinds[Math.floor(offset / MiB)] !== 'null';
    const ova = ovaXml([{ ref: 'Ref:1', size: a.size }, { ref: 'Ref:2', size: b.size }]);
    let streamed = 0;
    for await (const p of xvaParts({ ovaXml: ova, disks: [{ ref: 'Ref:1', source: a }, { ref: 'Ref:2', source: b }], writeZeroBuffers: true, checksum })) streamed += p.length;
    const size = await xvaSize({ ovaXml: ova, checksum, disks: [{ ref: 'Ref:1', size: a.size, allocated: allocated(0) }, { ref: 'Ref:2', size: b.size, allocated: allocated(1) }] });
    expect(size).toBe(streamed);
    // The zero region is written (a Buffer), the null ones are not: fewer chunks than regions.
    const all = await xvaSize({ ovaXml: ova, checksum, disks: [{ ref: 'Ref:1', size: a.size, allocated: () => true }, { ref: 'Ref:2', size: b.size, allocated: () => true }] });
    expect(all).toBeGreaterThan(size);
  });
});
