import { execFileSync } from 'node:child_process';
import { createReadStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BlockSource } from './block-source.js';
import { generatedSource, readAll } from './test-sources.js';
import {
  encodeVhdHeader,
  formatUuid,
  vhdChecksum,
  vhdDiskWrites,
  VhdError,
  VhdErrorCode,
  vhdGeometry,
  vhdParts,
  vhdStream,
  verifyVhd,
  type ReadVhdOptions,
  type VhdStreamOptions,
} from './vhd.js';

// Needs qemu-img (Debian qemu-utils) and vhdiinfo (Debian libvhdi-utils).
const MiB = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), 'vhd-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Flips bits of one byte in place (single-byte corruption). */
function flip(buf: Buffer, at: number, mask: number): void {
  buf[at] = buf[at]! ^ mask;
}

const UUID = Buffer.from('0123456789abcdef0123456789abcdef', 'hex');

async function* pieces(buf: Buffer, size = 64 * 1024): AsyncGenerator<Buffer> {
  for (let at = 0; at < buf.length; at += size) yield buf.subarray(at, at + size);
}

async function writeVhd(source: BlockSource, name: string, options: VhdStreamOptions = {}): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of vhdStream(source, options)) parts.push(part as Buffer);
  const buf = Buffer.concat(parts);
  writeFileSync(join(dir, name), buf);
  return buf;
}

async function vhdFailure(buf: Buffer, options?: ReadVhdOptions): Promise<VhdError> {
  try {
    await verifyVhd(pieces(buf), options);
  } catch (error) {
    if (error instanceof VhdError) return error;
    throw error;
  }
  throw new Error('expected a VhdError');
}

async function reassemble(buf: Buffer, size: number): Promise<Buffer> {
  const disk = Buffer.alloc(size);
  for await (const { offset, data } of vhdDiskWrites(pieces(buf, 100_000))) data.copy(disk, offset);
  return disk;
}

function qemuToRaw(file: string, out: string, chs = false): Buffer {
  const args = chs ? ['convert', '-f', 'vpc', file, '-O', 'raw', out] : ['convert', '--image-opts', `driver=vpc,force_size_calc=current_size,file.filename=${file}`, '-O', 'raw', out];
  execFileSync('qemu-img', args);
  return readFileSync(out);
}

/** Sets a field and fixes the structure's checksum, to test checks behind the checksum. */
function patch(buf: Buffer, start: number, checksumAt: number, write: (b: Buffer) => void): Buffer {
  const out = Buffer.from(buf);
  const part = out.subarray(start, start + (checksumAt === 64 ? 512 : 1024));
  write(part);
  part.writeUInt32BE(vhdChecksum(part, checksumAt), checksumAt);
  return out;
}

// 10 MiB + 4 KiB: blocks 0, 2 (partly), 4 (short) hold data; block 1 answered null, block 3 a zero Buffer.
const source = generatedSource({
  size: 10 * MiB + 4096,
  regionSize: MiB,
  seed: 21,
  kind: (r) => (r === 2 || r === 3 ? 'null' : r === 6 || r === 7 ? 'zero' : r === 5 || r <= 1 || r >= 8 ? 'data' : 'null'),
});
const ALLOCATED = [0, 2, 4, 5]; // 2 MiB blocks with a non-zero byte

describe('vhdGeometry', () => {
  it.each([
    [10 * MiB, { cylinders: 301, heads: 4, sectorsPerTrack: 17 }],
    [10 * 1024 * MiB, { cylinders: 20805, heads: 16, sectorsPerTrack: 63 }],
    [127 * 1024 * MiB, { cylinders: 65278, heads: 16, sectorsPerTrack: 255 }],
    [2040 * 1024 * MiB, { cylinders: 65535, heads: 16, sectorsPerTrack: 255 }],
  ])('geometry of %i bytes', (size, expected) => {
    expect(vhdGeometry(size)).toEqual(expected);
  });

  // Below the CHS maximum (~127 GiB): above it the geometry is fixed at 65535/16/255.
  it.each([10 * MiB, 100 * MiB, 1 << 30, 10 * 1024 * MiB, 100 * 1024 * MiB])('agrees with qemu-img create for %i bytes', (size) => {
    // qemu grows the size until the geometry covers it and stores that geometry.
    const file = join(dir, `geom-${size}.vhd`);
    execFileSync('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=dynamic', file, String(size)]);
    const footer = readFileSync(file).subarray(0, 512);
    const total = size / 512;
    let i = 0;
    let g = vhdGeometry(size);
    while (g.cylinders * g.heads * g.sectorsPerTrack < total && i < 1_000_000) g = vhdGeometry((total + ++i) * 512);
    expect({ cylinders: footer.readUInt16BE(56), heads: footer[58], sectorsPerTrack: footer[59] }).toEqual(g);
  });
});

describe('vhdStream', () => {
  let vhd: Buffer;
  beforeAll(async () => {
    vhd = await writeVhd(source, 'mixed.vhd', { uuid: UUID, timestamp: new Date('2024-05-01T00:00:00Z') });
  });

  it('lays out footer copy, header, BAT at 2048, allocated blocks in order, footer', () => {
    const blocks = Math.ceil(source.size / (2 * MiB));
    expect(vhd.length).toBe(2048 + 512 + ALLOCATED.length * (512 + 2 * MiB) + 512);
    expect(vhd.subarray(0, 512).equals(vhd.subarray(vhd.length - 512))).toBe(true);
    expect(vhd.toString('latin1', 0, 8)).toBe('conectix');
    expect(vhd.toString('latin1', 512, 520)).toBe('cxsparse');
    expect(Number(vhd.readBigUInt64BE(512 + 16))).toBe(2048);
    expect(vhd.readUInt32BE(512 + 28)).toBe(blocks);
    expect(vhd.readUInt32BE(512 + 32)).toBe(2 * MiB);
    const bat = Array.from({ length: blocks }, (_, i) => vhd.readUInt32BE(2048 + 4 * i));
    let sector = (2048 + 512) / 512;
    expect(bat).toEqual(Array.from({ length: blocks }, (_, i) => (ALLOCATED.includes(i) ? (sector += 4097) - 4097 : 0xffffffff)));
    for (let k = 0; k < ALLOCATED.length; k++) {
      const at = 2560 + k * (512 + 2 * MiB);
      expect(vhd.subarray(at, at + 512).equals(Buffer.alloc(512, 0xff))).toBe(true);
    }
  });

  it('writes the footer fields XAPI (vhd-tool) writes', () => {
    const f = vhd.subarray(0, 512);
    expect(f.readUInt32BE(8)).toBe(2);
    expect(f.readUInt32BE(12)).toBe(0x00010000);
    expect(Number(f.readBigUInt64BE(16))).toBe(512);
    expect(f.readUInt32BE(24)).toBe(Date.UTC(2024, 4, 1) / 1000 - 946684800);
    expect(f.toString('latin1', 28, 32)).toBe('caml');
    expect(Number(f.readBigUInt64BE(40))).toBe(source.size);
    expect(Number(f.readBigUInt64BE(48))).toBe(source.size);
    expect(f.readUInt32BE(60)).toBe(3);
    expect(f.readUInt32BE(64)).toBe(vhdChecksum(f, 64));
    expect(f.subarray(68, 84).equals(UUID)).toBe(true);
    expect(f.subarray(85).equals(Buffer.alloc(427))).toBe(true);
  });

  it('qemu-img reads it and converts it back to exactly the source bytes', async () => {
    const file = join(dir, 'mixed.vhd');
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-f', 'vpc', file], { encoding: 'utf8' })) as { format: string; 'virtual-size': number };
    expect(info.format).toBe('vpc');
    const g = vhdGeometry(source.size);
    expect(info['virtual-size']).toBe(g.cylinders * g.heads * g.sectorsPerTrack * 512); // "caml": qemu uses CHS
    expect(qemuToRaw(file, join(dir, 'mixed.raw')).equals(await readAll(source))).toBe(true);
  });

  it('qemu-img converts a CHS-exact disk without size options', async () => {
    const size = 300 * 4 * 17 * 512; // cylinders × heads × sectors: not a multiple of 2 MiB
    const exact = generatedSource({ size, seed: 8, kind: (r) => (r % 3 === 1 ? 'null' : 'data') });
    await writeVhd(exact, 'chs.vhd');
    expect(qemuToRaw(join(dir, 'chs.vhd'), join(dir, 'chs.raw'), true).equals(await readAll(exact))).toBe(true);
  });

  it('vhdiinfo reads it', () => {
    const out = execFileSync('vhdiinfo', [join(dir, 'mixed.vhd')], { encoding: 'utf8' });
    expect(out).toMatch(/Disk type\s*:\s*Dynamic/);
    expect(out).toContain(`(${source.size} bytes)`);
    expect(out).toContain(formatUuid(UUID));
  });

  it('without data it is metadata only', async () => {
    const empty = await writeVhd({ size: 64 * MiB, read: () => null }, 'empty.vhd');
    expect(empty.length).toBe(2048 + 512 + 512);
    expect(qemuToRaw(join(dir, 'empty.vhd'), join(dir, 'empty.raw')).equals(Buffer.alloc(64 * MiB))).toBe(true);
  });

  it('skips the allocation pass when told which blocks are allocated', async () => {
    let reads = 0;
    const counted: BlockSource = { size: source.size, read: (o, l) => (reads++, source.read(o, l)) };
    const buf = await writeVhd(counted, 'told.vhd', { uuid: UUID, timestamp: new Date('2024-05-01T00:00:00Z'), allocated: (b) => ALLOCATED.includes(b) });
    expect(reads).toBe(ALLOCATED.length);
    expect(buf.equals(vhd)).toBe(true);
  });

  it('refuses a size that is not a multiple of 512', async () => {
    await expect(async () => {
      for await (const _ of vhdParts({ size: 1000, read: () => null })) void _;
    }).rejects.toThrow(/multiple of 512/);
  });
});

describe('verifyVhd / vhdDiskWrites', () => {
  let vhd: Buffer;
  beforeAll(async () => {
    vhd = await writeVhd(source, 'read.vhd', { uuid: UUID, timestamp: new Date('2024-05-01T00:00:00Z') });
  });

  it('summarises the VHD', async () => {
    const report = await verifyVhd(pieces(vhd), { size: source.size });
    expect(report).toMatchObject({
      diskType: 'dynamic',
      size: source.size,
      uuid: formatUuid(UUID),
      timestamp: new Date('2024-05-01T00:00:00Z'),
      creatorApp: 'caml',
      blockSize: 2 * MiB,
      maxTableEntries: 6,
      allocatedBlocks: ALLOCATED.length,
      fileBytes: vhd.length,
    });
    expect(report.parent).toBeUndefined();
  });

  it('reassembles the exact disk bytes', async () => {
    expect((await reassemble(vhd, source.size)).equals(await readAll(source))).toBe(true);
  });

  it('reads a file stream', async () => {
    const report = await verifyVhd(createReadStream(join(dir, 'read.vhd'), { highWaterMark: 77_777 }));
    expect(report.fileBytes).toBe(vhd.length);
  });

  it('reads a VHD that qemu-img wrote (BAT at 1536, creator qem2)', async () => {
    const raw = await readAll(source);
    writeFileSync(join(dir, 'src.raw'), raw);
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=dynamic,force_size=on', join(dir, 'src.raw'), join(dir, 'qemu.vhd')]);
    const qemu = readFileSync(join(dir, 'qemu.vhd'));
    const report = await verifyVhd(pieces(qemu));
    expect(report).toMatchObject({ diskType: 'dynamic', size: source.size, creatorApp: 'qem2' });
    expect(report.header.tableOffset).toBe(1536);
    expect((await reassemble(qemu, source.size)).equals(raw)).toBe(true);
  });

  it('yields only the sectors whose bitmap bit is set', async () => {
    const bad = Buffer.from(vhd);
    bad[2560] = 0x0f; // block 0: sectors 0–3 clear
    bad[2560 + 1] = 0xfe; // sector 15 clear
    const writes: [number, number][] = [];
    for await (const w of vhdDiskWrites(pieces(bad))) if (w.offset < 2 * MiB) writes.push([w.offset, w.data.length]);
    expect(writes).toEqual([
      [4 * 512, 11 * 512],
      [16 * 512, 2 * MiB - 16 * 512],
    ]);
  });

  describe('corruption is reported precisely', () => {
    it.each([
      ['footer copy cookie', 3, VhdErrorCode.BAD_FOOTER_COOKIE, 0, /cookie is "conEctix"/],
      ['footer copy current size', 50, VhdErrorCode.BAD_FOOTER_CHECKSUM, 64, /footer at byte 0: checksum stored 0x[0-9a-f]{8}, computed/],
      ['footer copy uuid', 70, VhdErrorCode.BAD_FOOTER_CHECKSUM, 64, /checksum/],
      ['header cookie', 512 + 1, VhdErrorCode.BAD_HEADER_COOKIE, 512, /dynamic header at byte 512: cookie/],
      ['header max table entries', 512 + 31, VhdErrorCode.BAD_HEADER_CHECKSUM, 512 + 36, /dynamic header at byte 512: checksum stored/],
      ['header parent name area', 512 + 100, VhdErrorCode.BAD_HEADER_CHECKSUM, 512 + 36, /checksum/],
    ])('flipped byte in the %s', async (_, at, code, offset, message) => {
      const bad = Buffer.from(vhd);
      flip(bad, at, 0x20);
      const error = await vhdFailure(bad);
      expect(error).toMatchObject({ code, offset });
      expect(error.message).toMatch(message);
    });

    it('flipped byte in the final footer', async () => {
      const bad = Buffer.from(vhd);
      flip(bad, vhd.length - 512 + 50, 0x01);
      const error = await vhdFailure(bad);
      expect(error).toMatchObject({ code: VhdErrorCode.FOOTER_MISMATCH, offset: vhd.length - 512 + 50 });
      expect(error.message).toMatch(/differs from the copy at byte 0 first at byte \d+ \(current size\) \(VHD footer at byte \d+: checksum stored/);
    });

    it('BAT entry moved before the previous block', async () => {
      const bad = Buffer.from(vhd);
      bad.writeUInt32BE(vhd.readUInt32BE(2048), 2048 + 4 * 2); // block 2 → block 0's sector
      const error = await vhdFailure(bad);
      expect(error).toMatchObject({ code: VhdErrorCode.BAT_NOT_ASCENDING, block: 2, offset: 2048 + 8 });
    });

    it('BAT entry pointing into the metadata', async () => {
      const bad = Buffer.from(vhd);
      bad[2048 + 3] = 4; // block 0 → sector 4 (byte 2048, the BAT itself)
      bad[2048 + 2] = 0;
      const error = await vhdFailure(bad);
      expect(error).toMatchObject({ code: VhdErrorCode.BAT_ENTRY_OUT_OF_RANGE, block: 0, offset: 2048 });
      expect(error.message).toMatch(/points at byte 2048, inside the metadata/);
    });

    it('a flipped byte in the last BAT entry', async () => {
      const bad = Buffer.from(vhd);
      flip(bad, 2048 + 4 * 5, 0x40); // block 5 now points far past the end of the file
      const error = await vhdFailure(bad);
      expect(error).toMatchObject({ code: VhdErrorCode.TRUNCATED, block: 5 });
      expect(error.message).toMatch(/BAT entry 5 points at byte \d+, past the end of the file/);
    });

    it('BAT entry allocating a block past the disk size', async () => {
      const bigger = patch(vhd, 512, 36, (h) => h.writeUInt32BE(7, 28)); // 7 entries: entry 6 is padding 0xFFFFFFFF
      const bad = Buffer.from(bigger);
      bad.writeUInt32BE(100_000, 2048 + 4 * 6);
      const error = await vhdFailure(bad);
      expect(error).toMatchObject({ code: VhdErrorCode.BAT_ENTRY_OUT_OF_RANGE, block: 6 });
      expect(error.message).toMatch(/past the disk's size/);
    });

    it.each([
      ['a block size that is not a power of two', (h: Buffer) => h.writeUInt32BE(3 * MiB, 32), VhdErrorCode.BAD_BLOCK_SIZE],
      ['too few BAT entries for the size', (h: Buffer) => h.writeUInt32BE(2, 28), VhdErrorCode.BAT_TOO_SMALL],
      ['a table offset inside the header', (h: Buffer) => h.writeBigUInt64BE(1024n, 16), VhdErrorCode.BAD_TABLE_OFFSET],
      ['a data offset that is not all ones', (h: Buffer) => h.writeBigUInt64BE(0n, 8), VhdErrorCode.BAD_HEADER],
    ])('a header with %s', async (_, write, code) => {
      expect((await vhdFailure(patch(vhd, 512, 36, write))).code).toBe(code);
    });

    it.each([
      ['a fixed disk', 2, /fixed VHD/],
      ['an unknown disk type', 9, /unknown disk type 9/],
    ])('%s', async (_, type, message) => {
      const error = await vhdFailure(patch(vhd, 0, 64, (f) => f.writeUInt32BE(type, 60)));
      expect(error).toMatchObject({ code: VhdErrorCode.UNSUPPORTED_DISK_TYPE, offset: 60 });
      expect(error.message).toMatch(message);
    });

    it('a size other than expected', async () => {
      expect((await vhdFailure(vhd, { size: 20 * MiB })).code).toBe(VhdErrorCode.SIZE_MISMATCH);
    });

    it.each([
      ['inside a block', 2560 + 512 + 1000, VhdErrorCode.TRUNCATED, /inside block 0 \(bytes 2560–/],
      ['inside the BAT', 2100, VhdErrorCode.TRUNCATED, /the BAT expected at bytes 2048–2560/],
      ['before the final footer', -512, VhdErrorCode.TRUNCATED, /final footer is missing/],
      ['inside the final footer', -100, VhdErrorCode.TRUNCATED, /final footer is missing/],
    ])('truncated %s', async (_, cut, code, message) => {
      const error = await vhdFailure(vhd.subarray(0, cut < 0 ? vhd.length + cut : cut));
      expect(error.code).toBe(code);
      expect(error.message).toMatch(message);
    });

    it('data after the final footer', async () => {
      const error = await vhdFailure(Buffer.concat([vhd, Buffer.alloc(1)]));
      expect(error).toMatchObject({ code: VhdErrorCode.DATA_AFTER_FOOTER, offset: vhd.length });
    });
  });
});

describe('differencing VHDs', () => {
  const parentUuid = Buffer.from('fedcba9876543210fedcba9876543210', 'hex');
  // Changed blocks: 1 (data) and 3 (zeroed in the child); null = unchanged.
  const diff: BlockSource = {
    size: 8 * MiB,
    read: (offset, length) => (offset === 2 * MiB ? Buffer.alloc(length, 0x11) : offset === 6 * MiB ? Buffer.alloc(length) : null),
  };
  let vhd: Buffer;
  beforeAll(async () => {
    vhd = await writeVhd(diff, 'diff.vhd', { uuid: UUID, parent: { uuid: parentUuid, timestamp: new Date('2024-04-01T00:00:00Z'), name: 'base é.vhd' } });
  });

  it('stores changed blocks, zeroed ones included, and the parent fields', async () => {
    const report = await verifyVhd(pieces(vhd));
    expect(report).toMatchObject({ diskType: 'differencing', allocatedBlocks: 2 });
    expect(report.parent).toMatchObject({ uuid: formatUuid(parentUuid), timestamp: new Date('2024-04-01T00:00:00Z'), name: 'base é.vhd' });
    expect(report.parent!.locators).toHaveLength(1);
    expect(report.parent!.locators[0]).toMatchObject({ code: 'MacX', dataOffset: 1536 });
    expect(report.parent!.locators[0]!.data!.toString('utf8')).toBe('file://base é.vhd');
    const writes: [number, number, number][] = [];
    for await (const w of vhdDiskWrites(pieces(vhd))) writes.push([w.offset, w.data.length, w.data[0]!]);
    expect(writes).toEqual([
      [2 * MiB, 2 * MiB, 0x11],
      [6 * MiB, 2 * MiB, 0],
    ]);
  });

  it('vhdiinfo sees a differencing disk and its parent', () => {
    const out = execFileSync('vhdiinfo', [join(dir, 'diff.vhd')], { encoding: 'utf8' });
    expect(out).toMatch(/Disk type\s*:\s*Differential/);
    expect(out).toContain(formatUuid(parentUuid));
  });

  it('is refused with a clear error where only dynamic VHDs are expected', async () => {
    const error = await vhdFailure(vhd, { dynamicOnly: true });
    expect(error).toMatchObject({ code: VhdErrorCode.UNSUPPORTED_DISK_TYPE });
    expect(error.message).toMatch(/differencing VHD not supported/);
  });

  it('encodes the parent name as UTF-16BE', () => {
    const header = encodeVhdHeader({ maxTableEntries: 1, parent: { uuid: parentUuid, timestamp: 0, name: 'aé', locators: [] } });
    expect(header.subarray(64, 68)).toEqual(Buffer.from([0x00, 0x61, 0x00, 0xe9]));
  });
});
