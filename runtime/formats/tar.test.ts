import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { decodeTarHeader, encodeTarHeader, readTar, TAR_END, tarEntry, TarError, TarErrorCode, TarFormat, type ReadTarOptions, type TarEntry } from './tar.js';

const dir = mkdtempSync(join(tmpdir(), 'tar-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Flips bits of one byte in place (single-byte corruption). */
function flip(buf: Buffer, at: number, mask: number): void {
  buf[at] = buf[at]! ^ mask;
}

/** Feeds a buffer in pieces of `size` bytes, as a stream would. */
async function* pieces(buf: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let at = 0; at < buf.length; at += size) yield buf.subarray(at, at + size);
}

async function collect(buf: Buffer, options?: ReadTarOptions, pieceSize = 4096): Promise<TarEntry[]> {
  const out: TarEntry[] = [];
  for await (const entry of readTar(pieces(buf, pieceSize), options)) out.push({ ...entry, data: Buffer.from(entry.data) });
  return out;
}

async function failure(buf: Buffer, options?: ReadTarOptions): Promise<TarError> {
  try {
    await collect(buf, options);
  } catch (error) {
    if (error instanceof TarError) return error;
    throw error;
  }
  throw new Error('expected a TarError');
}

function sha1(buf: Buffer): string {
  return createHash('sha1').update(buf).digest('hex');
}

const FILES: [string, Buffer][] = [
  ['ova.xml', Buffer.from('<value><struct></struct></value>\n')],
  ['empty', Buffer.alloc(0)],
  ['Ref:3/00000000', Buffer.alloc(511, 1)],
  ['Ref:3/00000000.xxhash', Buffer.from('EF46DB3751D8E999')],
  ['block', Buffer.alloc(512, 2)],
  ['block-and-one', Buffer.alloc(513, 3)],
  ['n'.repeat(100), Buffer.from('hundred-byte name')],
];

function archive(format: TarFormat, files: [string, Buffer][] = FILES): Buffer {
  return Buffer.concat([...files.flatMap(([name, data]) => tarEntry(name, data, format)), TAR_END]);
}

const LIST_PY = `
import json, sys, tarfile, hashlib
out = []
with tarfile.open(sys.argv[1], 'r:') as t:
    for m in t:
        f = t.extractfile(m)
        data = f.read() if f else b''
        out.append({'name': m.name, 'size': m.size, 'mode': m.mode, 'mtime': m.mtime, 'isreg': m.isreg(),
                    'type': m.type.decode('latin1'), 'offset': m.offset, 'sha1': hashlib.sha1(data).hexdigest()})
print(json.dumps(out))
`;

describe('encodeTarHeader', () => {
  it.each([
    // [format, field offset, length, expected bytes]
    ['ustar', 100, 8, '0000644\0'],
    ['ustar', 124, 12, '00000001750\0'],
    ['ustar', 156, 1, '0'],
    ['ustar', 257, 8, 'ustar\u000000'],
    ['xapi', 100, 8, '0000400\0'],
    ['xapi', 108, 8, '0000000\0'],
    ['xapi', 124, 12, '00000001750\0'],
    ['xapi', 136, 12, '00000000000\0'],
    ['xapi', 156, 1, '\0'],
    ['xapi', 257, 8, '\0'.repeat(8)],
  ] as const)('%s header: bytes %i+%i are %j', (format, start, length, expected) => {
    const header = encodeTarHeader({ name: 'x', size: 1000, format });
    expect(header.toString('latin1', start, start + length)).toBe(expected);
  });

  it.each([TarFormat.ustar, TarFormat.xapi])('%s checksum field holds the byte sum (field as spaces)', (format) => {
    const header = encodeTarHeader({ name: 'Ref:1/00000007', size: 1 << 20, format });
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : header[i]!;
    const field = header.toString('latin1', 148, 156);
    expect(parseInt(field, 8)).toBe(sum);
    expect(field).toMatch(format === 'xapi' ? /^[0-7]{7}\0$/ : /^[0-7]{6}\0 $/);
  });

  it('round-trips through decodeTarHeader', () => {
    const header = decodeTarHeader(encodeTarHeader({ name: 'a/b', size: 12345, mode: 0o600, mtime: 1_700_000_000 }), 0);
    expect(header).toMatchObject({ name: 'a/b', size: 12345, mode: 0o600, mtime: 1_700_000_000, typeflag: '0', format: 'ustar' });
  });

  it('splits a long ustar name into prefix and name', async () => {
    const name = `${'d'.repeat(120)}/${'f'.repeat(90)}`;
    const [entry] = await collect(Buffer.concat([...tarEntry(name, Buffer.from('x')), TAR_END]));
    expect(entry!.name).toBe(name);
  });

  it.each([
    [{ name: 'n'.repeat(101), size: 1, format: TarFormat.xapi }, TarErrorCode.NAME_TOO_LONG],
    [{ name: 'x', size: 2 ** 33, format: TarFormat.ustar }, TarErrorCode.ENTRY_TOO_LARGE],
  ])('refuses %j', (input, code) => {
    expect(() => encodeTarHeader(input)).toThrow(expect.objectContaining({ code }));
  });
});

describe('tar writer, checked by independent readers', () => {
  it.each([TarFormat.ustar, TarFormat.xapi])('Python tarfile reads every %s entry back', (format) => {
    const file = join(dir, `py-${format}.tar`);
    writeFileSync(file, archive(format));
    const listed = JSON.parse(execFileSync('python3', ['-c', LIST_PY, file], { encoding: 'utf8' })) as { name: string; size: number; mode: number; mtime: number; isreg: boolean; type: string; sha1: string }[];
    expect(listed.map((m) => [m.name, m.size, m.sha1, m.isreg])).toEqual(FILES.map(([name, data]) => [name, data.length, sha1(data), true]));
    for (const m of listed) {
      expect(m.mode).toBe(format === 'xapi' ? 0o400 : 0o644);
      expect(m.mtime).toBe(0);
      expect(m.type).toBe(format === 'xapi' ? '\0' : '0');
    }
  });

  it('GNU tar lists and extracts the xapi-style archive', () => {
    const file = join(dir, 'gnu-reads.tar');
    writeFileSync(file, archive(TarFormat.xapi));
    const names = execFileSync('tar', ['-tf', file], { encoding: 'utf8' }).trim().split('\n');
    expect(names).toEqual(FILES.map(([name]) => name));
    const out = join(dir, 'gnu-extract');
    mkdirSync(out);
    execFileSync('tar', ['-xf', file, '-C', out]);
    expect(readFileSync(join(out, 'block-and-one'))).toEqual(Buffer.alloc(513, 3));
  });
});

describe('readTar', () => {
  it.each(['gnu', 'ustar', 'v7', 'posix'])('reads an archive GNU tar made in %s format', async (format) => {
    const src = join(dir, `src-${format}`);
    mkdirSync(src);
    const files: [string, Buffer][] = [
      ['a.txt', Buffer.from('hello\n')],
      ['zero', Buffer.alloc(0)],
      ['mib', Buffer.alloc(1 << 20, 0x5a)],
      ['odd', Buffer.alloc(1000, 7)],
    ];
    for (const [name, data] of files) writeFileSync(join(src, name), data);
    const file = join(dir, `made-by-gnu-${format}.tar`);
    execFileSync('tar', [`--format=${format}`, '-cf', file, '-C', src, ...files.map(([n]) => n)]);
    const entries = (await collect(readFileSync(file), {}, 10_000)).filter((e) => e.typeflag === '0');
    expect(entries.map((e) => [e.name, e.size, sha1(e.data)])).toEqual(files.map(([name, data]) => [name, data.length, sha1(data)]));
  });

  it.each([1, 7, 512, 100_000])('gives the same entries whatever the input piece size (%i)', async (size) => {
    const entries = await collect(archive(TarFormat.xapi), {}, size);
    expect(entries.map((e) => [e.name, sha1(e.data)])).toEqual(FILES.map(([name, data]) => [name, sha1(data)]));
  });

  it('reports header and data offsets', async () => {
    const entries = await collect(archive(TarFormat.ustar));
    expect(entries.slice(0, 3).map((e) => [e.offset, e.dataOffset])).toEqual([
      [0, 512],
      [1024, 1536],
      [1536, 2048],
    ]);
  });

  it('reads base-256 numbers (GNU extension)', () => {
    const header = encodeTarHeader({ name: 'big', size: 0 });
    header.fill(0, 124, 136);
    header[124] = 0x80;
    header.writeUIntBE(2 ** 34, 130, 6);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : header[i]!;
    header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    expect(decodeTarHeader(header, 0)?.size).toBe(2 ** 34);
  });

  describe('errors name the problem and its byte offset', () => {
    const good = archive(TarFormat.xapi);

    it('header checksum mismatch', async () => {
      const bad = Buffer.from(good);
      flip(bad, 1536 + 3, 0x01); // name of the third entry
      const error = await failure(bad);
      expect(error.code).toBe(TarErrorCode.BAD_HEADER_CHECKSUM);
      expect(error.offset).toBe(1536);
      expect(error.message).toMatch(/byte 1536.*checksum mismatch/);
    });

    it('malformed number', async () => {
      const bad = Buffer.from(encodeTarHeader({ name: 'x', size: 10, format: 'xapi' }));
      bad.write('0000009', 124, 'latin1');
      let sum = 0;
      for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : bad[i]!;
      bad.write(`${sum.toString(8).padStart(7, '0')}\0`, 148, 'latin1');
      const error = await failure(Buffer.concat([bad, Buffer.alloc(1024)]));
      expect(error.code).toBe(TarErrorCode.BAD_HEADER);
      expect(error.message).toMatch(/size is not an octal number/);
    });

    it('truncated entry data', async () => {
      const error = await failure(good.subarray(0, 2048 + 100)); // inside Ref:3/00000000's data
      expect(error.code).toBe(TarErrorCode.TRUNCATED);
      expect(error.entry).toBe('Ref:3/00000000');
      expect(error.message).toMatch(/511 bytes expected from byte 2048, the archive ends after 100/);
    });

    it('truncated header block', async () => {
      const error = await failure(good.subarray(0, 1024 + 200));
      expect(error.code).toBe(TarErrorCode.TRUNCATED);
      expect(error.offset).toBe(1024);
    });

    it('missing end-of-archive', async () => {
      const error = await failure(good.subarray(0, good.length - 1024));
      expect(error.code).toBe(TarErrorCode.NO_END);
      expect(error.offset).toBe(good.length - 1024);
      expect(error.message).toContain(`after entry ${'n'.repeat(100)}`);
    });

    it('a single zero block at the end', async () => {
      const error = await failure(good.subarray(0, good.length - 512));
      expect(error.code).toBe(TarErrorCode.NO_END);
      expect(error.message).toMatch(/single zero block/);
    });

    it('a lone zero block between entries', async () => {
      const bad = Buffer.concat([...tarEntry('a', Buffer.from('x')), Buffer.alloc(512), ...tarEntry('b', Buffer.from('y')), TAR_END]);
      const error = await failure(bad);
      expect(error.code).toBe(TarErrorCode.BAD_END);
      expect(error.offset).toBe(1024);
    });

    it('data after the end-of-archive', async () => {
      const bad = Buffer.concat([good, Buffer.alloc(3000), Buffer.from('junk')]);
      const error = await failure(bad);
      expect(error.code).toBe(TarErrorCode.DATA_AFTER_END);
      expect(error.offset).toBe(good.length + 3000);
    });

    it('zero padding after the end is accepted by default, refused with trailing: none', async () => {
      const padded = Buffer.concat([good, Buffer.alloc(8192)]);
      expect(await collect(padded)).toHaveLength(FILES.length);
      expect((await failure(padded, { trailing: 'none' })).code).toBe(TarErrorCode.DATA_AFTER_END);
    });

    it('an entry larger than allowed, before reading it', async () => {
      const error = await failure(good, { maxEntrySize: 512 });
      expect(error.code).toBe(TarErrorCode.ENTRY_TOO_LARGE);
      expect(error.entry).toBe('block-and-one');
    });

    it('an empty input', async () => {
      expect((await failure(Buffer.alloc(0))).code).toBe(TarErrorCode.NO_END);
    });
  });
});
