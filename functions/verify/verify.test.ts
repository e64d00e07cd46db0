import { cp, mkdtemp, open, readFile, readdir, rename, rm, truncate, utimes, writeFile } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readTar, tarEntry, tarPaddingLength } from '../../runtime/formats/tar.js';
import { verifyXva, XvaChecker, XvaError } from '../../runtime/formats/xva.js';
import { RestartError } from '../../runtime/errors.js';
import { writeStreamAtomic } from '../../runtime/storage/atomic.js';
import { Readable } from 'node:stream';
import type { TarEntry } from '../../runtime/formats/tar.js';
import { loadXxh64 } from '../../runtime/formats/xxh64.js';
import { localCtx } from '../../runtime/function.js';
import type { Ctx } from '../../runtime/function.js';
import { silentLogger } from '../../runtime/log.js';
import { checkManifest, Manifest } from '../../runtime/storage/manifest.js';
import { formatLegacyStamp, formatStamp } from '../../runtime/storage/naming.js';
import { XapiClient } from '../../runtime/xapi/client.js';
import { vmJob } from '../../test/helpers/jobs.js';
import { pool } from '../../test/sim/fixtures.js';
import { startSimulator } from '../../test/sim/server.js';
import type { Simulator } from '../../test/sim/server.js';
import { ExportOutput, exportFn } from '../export/export.js';
import { meta, MetaOutput } from '../meta/meta.js';
import { prune, PruneInput, PruneOutput } from '../prune/prune.js';
import { snapshot, SnapshotOutput } from '../snapshot/snapshot.js';
import { scanFile } from './scan.js';
import { verify, VerifyOutput } from './verify.js';
import type { Verified } from './verify.js';

/*
 * Sets made by the real snapshot → export → meta functions against the simulator (in
 * process), then verified by the real handler: untouched, then with one byte flipped at a
 * chosen place, truncated, or with a manifest that lies.
 */

let sim: Simulator;
let xapi: XapiClient;
let ctx: Ctx;
const sets: Record<'xva' | 'xva.gz' | 'xva.zst' | 'vhd' | 'raw', MetaOutput> = {} as never;
let tmp: string;

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'vmb-verify-'));
  sim = await startSimulator({
    pool: pool([
      {
        name_label: 'web1',
        power_state: 'Running',
        disks: [
          { device: 'xvda', size_mib: 3, fill: 'pattern' },
          { device: 'xvdb', size_mib: 5, fill: 'sparse' },
        ],
        vifs: [{ network: 'eth0', mac: 'aa:bb:cc:dd:ee:01' }],
      },
    ]),
  });
  xapi = await XapiClient.connect({ url: sim.url, user: 'root', password: 'secret' });
  ctx = localCtx({ log: silentLogger(), xapi });
  sets.xva = await backup('vm', { compress: 'none' });
  sets['xva.gz'] = await backup('vm', { compress: 'gzip' });
  sets['xva.zst'] = await backup('vm', { compress: 'zstd' });
  sets.vhd = await backup('vdi', { format: 'vhd' });
  sets.raw = await backup('vdi', { format: 'raw' });
}, 60_000);

afterAll(async () => {
  await xapi?.close();
  await sim?.close();
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

async function backup(
  mode: 'vm' | 'vdi',
  opts: { compress?: 'none' | 'gzip' | 'zstd'; format?: 'raw' | 'vhd'; backupDir?: string; stamp?: string },
): Promise<MetaOutput> {
  const vm = sim.state.vm('web1');
  const backupDir = opts.backupDir ?? (await mkdtemp(path.join(tmp, 'src-')));
  const input = vmJob({
    runId: 'test-run',
    vm: { uuid: String(vm.uuid), name: 'web1' },
    backupDir,
    mode,
    disks: mode === 'vdi' ? ['xvda', 'xvdb'] : [],
    stamp: opts.stamp ?? formatStamp(new Date()),
    compress: opts.compress ?? 'none',
    format: opts.format ?? 'raw',
    // verify_after_backup on: meta passes it on, so verify checks the set.
    verify: true,
  });
  const snap = SnapshotOutput.parse(await snapshot.handle(input, ctx));
  const exported = ExportOutput.parse(await exportFn.handle(snap, ctx));
  return MetaOutput.parse(await meta.handle(exported, ctx));
}

/**
 * The pipeline input of a set as if its export had not checked it as written (a compressed
 * XVA, a disk export): verify then reads every file back. The tests that damage a set at
 * rest use it; a set the export checked is only confirmed (size, hash in the manifest).
 */
function readBack<T extends MetaOutput>(set: T): T {
  return { ...set, files: set.files.map(({ checkedAsWritten: _checked, ...f }) => f) };
}

/** A fresh copy of a set in its own backup dir: the pipeline input that points at it (read back, see readBack). */
async function copyOf(set: MetaOutput): Promise<MetaOutput & { dir: string }> {
  const backupDir = await mkdtemp(path.join(tmp, 'copy-'));
  await cp(path.join(set.backupDir, set.folder), path.join(backupDir, set.folder), { recursive: true });
  return readBack({ ...set, backupDir, dir: path.join(backupDir, set.folder) });
}

async function run(input: unknown): Promise<VerifyOutput> {
  return VerifyOutput.parse(await verify.handle(verify.subject.schema.parse(input), ctx));
}

async function verified(input: unknown): Promise<Verified> {
  const out = await run(input);
  expect(out.verified).not.toBeNull();
  return out.verified!;
}

function fileOf(set: MetaOutput, format: string, disk?: string): string {
  return set.files.find((f) => f.format === format && (disk === undefined || f.disk === disk))!.name;
}

async function flip(file: string, offset: number, mask = 0x01): Promise<void> {
  const fh = await open(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, offset);
    b[0] = b[0]! ^ mask;
    await fh.write(b, 0, 1, offset);
  } finally {
    await fh.close();
  }
}

async function tarEntries(file: string): Promise<TarEntry[]> {
  const out: TarEntry[] = [];
  for await (const e of readTar(createReadStream(file))) out.push({ ...e, data: Buffer.alloc(0) });
  return out;
}

async function manifestOf(dir: string, set: MetaOutput): Promise<Manifest> {
  return Manifest.parse(JSON.parse(await readFile(path.join(dir, set.manifest), 'utf8')));
}

describe('verify: untouched backups pass', () => {
  it.each(['xva', 'xva.gz', 'xva.zst', 'vhd', 'raw'] as const)('%s set', async (format) => {
    const set = await copyOf(sets[format]);
    const out = await run(set);
    const v = out.verified!;
    expect(v.error).toBeUndefined();
    expect(v).toMatchObject({ ok: true, legacy: false, recorded: true, manifest: set.manifest });
    // Every file of the manifest was read to its end, sized and hashed.
    const manifest = await manifestOf(set.dir, set);
    expect(v.files.map((f) => f.name)).toEqual(manifest.files.map((f) => f.name));
    for (const f of v.files) {
      expect(f.ok).toBe(true);
      expect(f.checks).toEqual(expect.arrayContaining(['size', 'xxh64']));
      expect(f.xxh64).toBe(manifest.files.find((m) => m.name === f.name)!.xxh64);
    }
    const data = v.files.filter((f) => f.format !== 'meta');
    if (format.startsWith('xva')) expect(data[0]!.checks).toContain('xva');
    if (format === 'vhd') expect(data.every((f) => f.checks.includes('vhd') && f.checks.includes('virtual-size'))).toBe(true);
    if (format === 'raw') expect(data.every((f) => f.checks.includes('virtual-size'))).toBe(true);
    expect(v.files.filter((f) => f.format === 'meta').every((f) => f.checks.includes('meta'))).toBe(true);
    // The result is in the manifest, the manifest still vouches for the same files.
    expect(manifest.verify).toEqual({ at: v.at, ok: true });
    expect(await checkManifest(set.dir, set.manifest)).toMatchObject({ valid: true });
    // The output is a prune input; its manifest entry describes the rewritten manifest.
    const prune = PruneInput.parse(out);
    expect(prune).toMatchObject({ folder: 'web1', maxBackups: 2, protect: [v.stamp] });
    const entry = out.files!.find((f) => f.format === 'manifest')!;
    const bytes = await readFile(path.join(set.dir, set.manifest));
    expect(entry).toMatchObject({ size: bytes.length, xxh64: (await loadXxh64()).hash(bytes) });
  });

  it('a redelivered verify passes again (the verify field it added is not a change of the manifest)', async () => {
    const set = await copyOf(sets.xva);
    const first = await run(set);
    expect(first.verified!.ok).toBe(true);
    const again = await verified(set); // the meta output's manifest size and XXH64, as a redelivery carries them
    expect(again.ok).toBe(true);
  });

  it('verify: false returns at once with verified: null and writes nothing', async () => {
    const set = await copyOf(sets.xva);
    const before = await readFile(path.join(set.dir, set.manifest), 'utf8');
    await flip(path.join(set.dir, fileOf(set, 'xva')), 5000);
    const out = await run({ ...set, verify: false });
    expect(out.verified).toBeNull();
    expect(PruneInput.parse(out).maxBackups).toBe(2);
    expect(await readFile(path.join(set.dir, set.manifest), 'utf8')).toBe(before);
  });

  it('works from {backupDir, folder, stamp} alone', async () => {
    const set = await copyOf(sets.raw);
    const stamp = set.protect[0]!;
    const out = await run({ backupDir: set.backupDir, folder: 'web1', stamp });
    expect(out.verified).toMatchObject({ ok: true, stamp, recorded: true });
    expect(out.verified!.files).toHaveLength(4);
    expect(out).toMatchObject({ runId: 'verify', jobId: 'verify', verify: true });
    await expect(run({ backupDir: set.backupDir, folder: 'web1' })).rejects.toThrow(/stamp/);
    await expect(run({ backupDir: set.backupDir, folder: 'web1', stamp: '20200101-000000' })).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
  });
});

describe('verify: XVA damage is caught and placed', () => {
  async function xvaCase(format: 'xva') {
    const set = await copyOf(sets[format]);
    const name = fileOf(set, format);
    const file = path.join(set.dir, name);
    return { set, name, file, entries: await tarEntries(file) };
  }

  it('a flipped byte in a data chunk: that chunk, its number and its tar offset', async () => {
    const { set, name, file, entries } = await xvaCase('xva');
    const chunk = entries.find((e) => /^Ref:\d+\/00000001$/.test(e.name))!;
    await flip(file, chunk.dataOffset + 4321);
    const v = await verified(set);
    expect(v.ok).toBe(false);
    expect(v.error).toMatchObject({ file: name, code: 'XVA_BAD_CHECKSUM', chunk: chunk.name, index: 1, offset: chunk.offset, entry: chunk.name });
    expect(v.error!.message).toBe(`${name}: chunk ${chunk.name} fails its XXH64 checksum at byte ${chunk.offset}`);
    // Recorded: the set is marked bad, the manifest still lists the same files and parses.
    const manifest = await manifestOf(set.dir, set);
    expect(manifest.verify).toEqual({ at: v.at, ok: false, error: v.error!.message });
    expect(manifest.files.map((f) => f.name)).toEqual(set.files.filter((f) => f.format !== 'manifest').map((f) => f.name));
    expect(await checkManifest(set.dir, set.manifest)).toMatchObject({ valid: true });
  });

  it('a flipped byte in a checksum entry', async () => {
    const { set, name, file, entries } = await xvaCase('xva');
    const sum = entries.find((e) => e.name.endsWith('.xxhash'))!;
    await flip(file, sum.dataOffset + 7);
    const v = await verified(set);
    expect(v.error).toMatchObject({ file: name, code: 'XVA_BAD_CHECKSUM', chunk: sum.name.replace('.xxhash', '') });
  });

  it('a flipped byte in a tar header', async () => {
    const { set, name, file, entries } = await xvaCase('xva');
    const header = entries[3]!;
    await flip(file, header.offset + 2);
    const v = await verified(set);
    expect(v.error).toMatchObject({ file: name, code: 'TAR_BAD_HEADER_CHECKSUM', offset: header.offset });
    expect(v.error!.message).toContain(`tar header at byte ${header.offset}`);
  });

  it('a flipped byte in ova.xml: its structure (format check) or a value (XXH64 against the manifest)', async () => {
    const broken = await xvaCase('xva');
    const ova = broken.entries[0]!;
    const xml = (await readFile(broken.file)).subarray(ova.dataOffset, ova.dataOffset + ova.size).toString('latin1');
    await flip(broken.file, ova.dataOffset + xml.indexOf('<struct>') + 1, 0x20); // <struct> → <Struct>
    const v1 = await verified(broken.set);
    expect(v1.error).toMatchObject({ file: broken.name, code: 'XVA_BAD_OVA', offset: 0, entry: 'ova.xml' });

    const changed = await xvaCase('xva');
    await flip(changed.file, changed.entries[0]!.dataOffset + xml.indexOf('web1') + 1, 0x01); // web1 → wdb1
    const v2 = await verified(changed.set);
    expect(v2.error).toMatchObject({ file: changed.name, code: 'VERIFY_XXH64_MISMATCH' });
    expect(v2.files.find((f) => f.name === changed.name)!.checks).toEqual(['xva', 'size', 'xxh64']);
  });

  it('a truncated XVA: where it ends', async () => {
    const { set, name, file, entries } = await xvaCase('xva');
    const cut = entries[5]!.dataOffset + 1000;
    await truncate(file, cut);
    const v = await verified(set);
    expect(v.error).toMatchObject({ file: name, code: 'TAR_TRUNCATED' });
    expect(v.error!.offset).toBeGreaterThanOrEqual(entries[5]!.offset);
    expect(v.error!.offset).toBeLessThanOrEqual(cut);
  });

  it('a missing end-of-archive (the last 1024 bytes cut)', async () => {
    const { set, name, file } = await xvaCase('xva');
    const size = (await readFile(file)).length;
    await truncate(file, size - 1024);
    const v = await verified(set);
    expect(v.error).toMatchObject({ file: name, code: 'TAR_NO_END', offset: size - 1024 });
  });
});

describe('verify: reused read buffers', () => {
  it('an ova.xml larger than the read pool: the checker copies what it keeps, so the pooled read passes like the plain one', async () => {
    const set = await copyOf(sets.xva);
    const name = fileOf(set, 'xva');
    const file = path.join(set.dir, name);
    const original = await readFile(file);
    const ova = (await tarEntries(file))[0]!;
    const empty = '<name>name_description</name><value></value>';
    const xml = original.subarray(ova.dataOffset, ova.dataOffset + ova.size).toString('utf8');
    expect(xml).toContain(empty);
    const big = Buffer.from(xml.replace(empty, `<name>name_description</name><value>${'x'.repeat(40 << 20)}</value>`));
    const rest = original.subarray(ova.dataOffset + ova.size + tarPaddingLength(ova.size));
    const rebuilt = Buffer.concat([...tarEntry('ova.xml', big, 'xapi'), rest]);
    await writeFile(file, rebuilt);

    // A 40 MiB ova.xml outgrows 8 × 4 MiB reused buffers: the XVA checker copies it as it passes.
    const pooled = await scanFile(file, { check: (s) => verifyXva(s) });
    expect(pooled.failure).toBeUndefined();
    const plain = await scanFile(file, { check: (s) => verifyXva(s), pooled: false });
    expect(plain.failure).toBeUndefined();
    expect(plain.xxh64).toBe((await loadXxh64()).hash(rebuilt));
    expect(pooled.xxh64).toBe(plain.xxh64);

    // And the handler passes the set.
    const manifestFile = path.join(set.dir, set.manifest);
    const manifest = JSON.parse(await readFile(manifestFile, 'utf8')) as Manifest;
    const entry = manifest.files.find((f) => f.name === name)!;
    manifest.bytes += rebuilt.length - entry.size;
    entry.size = rebuilt.length;
    entry.xxh64 = plain.xxh64!;
    await writeFile(manifestFile, JSON.stringify(manifest, null, 2) + '\n');
    const v = await verified({ ...set, files: undefined });
    expect(v.error).toBeUndefined();
    expect(v.ok).toBe(true);
  });
});

describe('verify: compressed XVAs are checked through the decompressor', () => {
  it.each(['xva.gz', 'xva.zst'] as const)('%s: a flipped byte in the middle, in the trailer, and a truncation', async (format) => {
    for (const place of ['middle', 'trailer', 'truncate'] as const) {
      const set = await copyOf(sets[format]);
      const name = fileOf(set, format);
      const file = path.join(set.dir, name);
      const size = (await readFile(file)).length;
      if (place === 'middle') await flip(file, Math.floor(size / 2), 0x10);
      else if (place === 'trailer') await flip(file, size - 2);
      else await truncate(file, Math.floor(size * 0.7));
      const v = await verified(set);
      expect(v.ok, `${format} ${place}`).toBe(false);
      expect(v.error!.file).toBe(name);
      expect(v.error!.code).toMatch(/^(VERIFY_DECOMPRESS_FAILED|XVA_|TAR_)/);
      expect(v.error!.offset, `${format} ${place}: ${v.error!.message}`).toBeTypeOf('number');
      expect(v.error!.message.startsWith(`${name}: `)).toBe(true);
    }
  });

  it('gzip: a flipped CRC is the decompressor’s verdict, with the place in the file', async () => {
    const set = await copyOf(sets['xva.gz']);
    const name = fileOf(set, 'xva.gz');
    const file = path.join(set.dir, name);
    const size = (await readFile(file)).length;
    await flip(file, size - 6); // inside the CRC32 of the gzip trailer
    const v = await verified(set);
    expect(v.error).toMatchObject({ file: name, code: 'VERIFY_DECOMPRESS_FAILED' });
    expect(v.error!.message).toMatch(/gzip data is corrupt near byte \d+ of the file \(incorrect data check\)/);
  });

  it('zstd: a flipped content checksum is zstd’s verdict', async () => {
    const set = await copyOf(sets['xva.zst']);
    const name = fileOf(set, 'xva.zst');
    const file = path.join(set.dir, name);
    const size = (await readFile(file)).length;
    await flip(file, size - 1); // last byte: the frame's content checksum
    const v = await verified(set);
    expect(v.error).toMatchObject({ file: name, code: 'VERIFY_DECOMPRESS_FAILED' });
    expect(v.error!.message).toMatch(/zstd data is corrupt near byte \d+ of the file \(.*checksum/i);
  });
});

describe('verify: what is not the backup\'s fault is an error, not a result', () => {
  it('no zstd program: ZSTD_NOT_AVAILABLE, nothing recorded', async () => {
    const set = await copyOf(sets['xva.zst']);
    const before = await readFile(path.join(set.dir, set.manifest), 'utf8');
    const saved = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      await expect(run(set)).rejects.toMatchObject({ code: 'ZSTD_NOT_AVAILABLE', message: expect.stringMatching(/zstd program is not installed/) });
    } finally {
      process.env.PATH = saved;
    }
    expect(await readFile(path.join(set.dir, set.manifest), 'utf8')).toBe(before);
  });

  it('a shutdown aborts it; it reports liveness while reading', async () => {
    const set = await copyOf(sets.raw);
    const abort = new AbortController();
    abort.abort(new Error('SIGTERM'));
    await expect(verify.handle(verify.subject.schema.parse(set), { ...ctx, signal: abort.signal })).rejects.toThrow();
    let beats = 0;
    await verify.handle(verify.subject.schema.parse(set), { ...ctx, heartbeat: () => (beats += 1) });
    expect(beats).toBeGreaterThan(0);
  });
});

describe('verify: VHD damage', () => {
  async function vhdCase() {
    const set = await copyOf(sets.vhd);
    const name = fileOf(set, 'vhd', 'xvda');
    return { set, name, file: path.join(set.dir, name) };
  }

  it.each([
    ['footer copy', 30, 'VHD_BAD_FOOTER_CHECKSUM', 64],
    ['dynamic header', 512 + 40, 'VHD_BAD_HEADER_CHECKSUM', 512 + 36],
    ['BAT', 2048 + 3, 'VHD_BAT_ENTRY_OUT_OF_RANGE', 2048],
  ] as const)('a flipped byte in the %s', async (_what, at, code, offset) => {
    const { set, name, file } = await vhdCase();
    await flip(file, at);
    const v = await verified(set);
    expect(v.error).toMatchObject({ file: name, code, offset });
    if (code === 'VHD_BAT_ENTRY_OUT_OF_RANGE') expect(v.error!.block).toBe(0);
  });

  it('a flipped byte in the final footer, and in a block (XXH64 against the manifest)', async () => {
    const a = await vhdCase();
    const size = (await readFile(a.file)).length;
    await flip(a.file, size - 512 + 30);
    expect((await verified(a.set)).error).toMatchObject({ file: a.name, code: 'VHD_FOOTER_MISMATCH', offset: size - 512 + 30 });

    const b = await vhdCase();
    await flip(b.file, 2048 + 512 + 512 + 12345); // data of the first block
    expect((await verified(b.set)).error).toMatchObject({ file: b.name, code: 'VERIFY_XXH64_MISMATCH' });
  });

  it('a truncated VHD', async () => {
    const { set, name, file } = await vhdCase();
    await truncate(file, 4096);
    const v = await verified(set);
    expect(v.error).toMatchObject({ file: name, code: 'VHD_TRUNCATED' });
  });
});

describe('verify: raw disks and .meta files', () => {
  it('a flipped byte in a raw disk: XXH64 against the manifest', async () => {
    const set = await copyOf(sets.raw);
    const name = fileOf(set, 'raw', 'xvdb');
    await flip(path.join(set.dir, name), 3 << 20);
    const v = await verified(set);
    expect(v.error).toMatchObject({ file: name, code: 'VERIFY_XXH64_MISMATCH' });
    expect(v.files.find((f) => f.name === fileOf(set, 'raw', 'xvda'))!.ok).toBe(true);
  });

  it('a truncated raw disk: its size against the manifest', async () => {
    const set = await copyOf(sets.raw);
    const name = fileOf(set, 'raw', 'xvda');
    await truncate(path.join(set.dir, name), 1 << 20);
    const v = await verified(set);
    expect(v.error).toMatchObject({ file: name, code: 'VERIFY_SIZE_MISMATCH', offset: 1 << 20 });
    expect(v.error!.message).toBe(`${name}: ${1 << 20} bytes, the manifest records ${3 << 20}: the file is truncated`);
  });

  it('raw and vhd sizes are compared with virtual_size in the .meta (a set consistent with a wrong .meta)', async () => {
    for (const format of ['raw', 'vhd'] as const) {
      const set = await copyOf(sets[format]);
      await rewriteMeta(set, (text) => text.replace('virtual_size=3145728', 'virtual_size=4194304'));
      const v = await verified(set);
      const name = fileOf(set, format, 'xvda');
      expect(v.error).toMatchObject({ file: name, code: format === 'raw' ? 'VERIFY_VIRTUAL_SIZE_MISMATCH' : 'VHD_SIZE_MISMATCH' });
    }
  });

  it('a flipped byte in a .meta, and a .meta that does not parse', async () => {
    const set = await copyOf(sets.raw);
    const metaName = fileOf(set, 'meta', undefined);
    await flip(path.join(set.dir, metaName), 10);
    expect((await verified(set)).error).toMatchObject({ file: metaName, code: 'VERIFY_XXH64_MISMATCH' });

    const set2 = await copyOf(sets.xva);
    await rewriteMeta(set2, (text) => text.replace('******* DISK *******', '******* DISC *******'));
    const v = await verified(set2);
    expect(v.error).toMatchObject({ file: fileOf(set2, 'meta'), code: 'VERIFY_META_INVALID' });
    expect(v.error!.message).toMatch(/does not parse: \.meta line \d+/);
  });
});

describe('verify: the manifest', () => {
  it('no manifest: an incomplete set fails, its files are still format-checked', async () => {
    const set = await copyOf(sets.xva);
    await rm(path.join(set.dir, set.manifest));
    const v = await verified(set);
    expect(v).toMatchObject({ ok: false, recorded: false, error: { code: 'VERIFY_NO_MANIFEST', file: set.manifest } });
    expect(v.files.every((f) => f.ok)).toBe(true);
    expect(v.files.find((f) => f.format === 'xva')!.checks).toEqual(['xva']);
  });

  it('a manifest that is not JSON, or lies about its bytes, is named; nothing is recorded', async () => {
    const set = await copyOf(sets.xva);
    const file = path.join(set.dir, set.manifest);
    const text = await readFile(file, 'utf8');
    await writeFile(file, text.slice(0, 40));
    const v = await verified({ ...set, files: undefined });
    expect(v).toMatchObject({ ok: false, recorded: false, error: { code: 'VERIFY_MANIFEST_INVALID', file: set.manifest } });
    expect(await readFile(file, 'utf8')).toBe(text.slice(0, 40));

    await writeFile(file, text.replace(/"bytes": \d+/, '"bytes": 12'));
    expect((await verified({ ...set, files: undefined })).error).toMatchObject({ code: 'VERIFY_MANIFEST_INVALID' });
  });

  it('in the pipeline, a manifest that changed since meta wrote it is named', async () => {
    const set = await copyOf(sets.xva);
    const file = path.join(set.dir, set.manifest);
    const text = await readFile(file, 'utf8');
    await writeFile(file, text.replace('"runId": "test-run"', '"runId": "test-rux"'));
    expect((await verified(set)).error).toMatchObject({ code: 'VERIFY_MANIFEST_CHANGED', file: set.manifest });
    // Alone (no record of what meta wrote), the same manifest is only checked for sense.
    expect((await verified({ ...set, files: undefined })).ok).toBe(true);
  });

  it('a file listed in the manifest but missing', async () => {
    const set = await copyOf(sets.raw);
    const name = fileOf(set, 'raw', 'xvdb');
    await rm(path.join(set.dir, name));
    expect((await verified(set)).error).toMatchObject({ file: name, code: 'VERIFY_FILE_MISSING' });
  });

  it('a read-only manifest: the result is returned, not recorded, with a warning', async () => {
    if (process.getuid?.() === 0) return; // root writes anyway; nothing to observe
    const set = await copyOf(sets.raw);
    const { chmod } = await import('node:fs/promises');
    await chmod(set.dir, 0o555);
    try {
      const v = await verified(set);
      expect(v).toMatchObject({ ok: true, recorded: false });
      expect(v.warnings.join('\n')).toMatch(/not recorded/);
    } finally {
      await chmod(set.dir, 0o755);
    }
  });
});

describe('verify: VmBackup sets (no manifest)', () => {
  it('format checks only, and says so; a damaged legacy XVA still fails', async () => {
    const set = await copyOf(sets.xva);
    const legacy = formatLegacyStamp(new Date('2024-01-02T03:04:05Z'));
    const stamp = set.protect[0]!;
    for (const name of await readdir(set.dir)) {
      if (name.endsWith('.json')) await rm(path.join(set.dir, name));
      else await rename(path.join(set.dir, name), path.join(set.dir, name.replace(stamp, legacy)));
    }
    const input = { backupDir: set.backupDir, folder: 'web1', stamp: legacy };
    const v = await verified(input);
    expect(v).toMatchObject({ ok: true, legacy: true, recorded: false });
    expect(v.warnings[0]).toMatch(/VmBackup set: it has no manifest.*format checks only/);
    expect(v.files.map((f) => f.checks)).toEqual([['xva'], ['meta']]);

    const xva = path.join(set.dir, `backup_${legacy}.xva`);
    const entries = await tarEntries(xva);
    await flip(xva, entries.find((e) => e.name.endsWith('/00000000'))!.dataOffset + 1);
    expect((await verified(input)).error).toMatchObject({ code: 'XVA_BAD_CHECKSUM', file: `backup_${legacy}.xva` });
  });
});

describe('verify then prune: a set that failed verification does not count', () => {
  it('keeps the older good set with max_backups 1; a later prune moves the bad one aside, once', async () => {
    const backupDir = await mkdtemp(path.join(tmp, 'prune-'));
    await backup('vm', { backupDir, stamp: '20240101-000000' });
    const newer = await backup('vm', { backupDir, stamp: '20240102-000000' });
    const dir = path.join(backupDir, 'web1');
    const xva = path.join(dir, fileOf(newer, 'xva'));
    await flip(xva, (await tarEntries(xva)).find((e) => e.name.endsWith('/00000000'))!.dataOffset + 99);
    const out = await run({ ...readBack(newer), maxBackups: 1 });
    expect(out.verified!.ok).toBe(false);

    // The run's prune: this run's set is protected, the older good set is the newest complete one.
    const pruned = PruneOutput.parse(await prune.handle(PruneInput.parse(out), ctx));
    expect(pruned.kept).toEqual(['20240101-000000']);
    expect(pruned.deleted).toEqual([]);
    expect(pruned.quarantined).toEqual([]);
    expect(pruned.warnings.join('\n')).toMatch(/backup set 20240102-000000 does not count \(failed verification at .*: backup_20240102-000000\.xva: chunk Ref:\d+\/00000000 fails its XXH64 checksum/);
    // A later prune (nothing protected) moves the bad set aside, whole, and says so once.
    const later = PruneOutput.parse(await prune.handle(PruneInput.parse({ ...out, protect: [] }), ctx));
    expect(later.kept).toEqual(['20240101-000000']);
    expect(later.deleted).toEqual([]);
    expect(later.quarantined).toEqual(['20240102-000000']);
    expect(later.warnings).toEqual([`web1: backup set 20240102-000000 failed verification: moved aside to ${path.join(dir, '.failed', '20240102-000000')}, deleted after 30 days`]);
    expect((await readdir(path.join(dir, '.failed', '20240102-000000'))).sort()).toEqual(['backup_20240102-000000.json', 'backup_20240102-000000.meta', 'backup_20240102-000000.xva']);
    expect((await readdir(dir)).filter((n) => n.includes('20240102'))).toEqual([]);
    const again = PruneOutput.parse(await prune.handle(PruneInput.parse({ ...out, protect: [] }), ctx));
    expect(again.warnings).toEqual([]);
    expect(again.kept).toEqual(['20240101-000000']);
    // failed_keep_days later it is gone; the good set stays.
    const old = new Date(Date.now() - 31 * 86_400_000);
    await utimes(path.join(dir, '.failed', '20240102-000000'), old, old);
    PruneOutput.parse(await prune.handle(PruneInput.parse({ ...out, protect: [] }), ctx));
    expect(await readdir(path.join(dir, '.failed'))).toEqual([]);
    expect((await readdir(dir)).filter((n) => n.includes('20240101'))).toHaveLength(3);
  });
});

/** Rewrites a set's .meta files and keeps the manifest consistent with them (a wrong but coherent set). */
async function rewriteMeta(set: MetaOutput & { dir: string }, edit: (text: string) => string): Promise<void> {
  const xxh = await loadXxh64();
  const manifestFile = path.join(set.dir, set.manifest);
  const manifest = JSON.parse(await readFile(manifestFile, 'utf8')) as Manifest;
  for (const f of manifest.files.filter((f) => f.format === 'meta')) {
    const text = edit(await readFile(path.join(set.dir, f.name), 'utf8'));
    await writeFile(path.join(set.dir, f.name), text);
    f.size = Buffer.byteLength(text);
    f.xxh64 = xxh.hash(Buffer.from(text));
  }
  await writeFile(manifestFile, JSON.stringify(manifest, null, 2) + '\n');
  set.files = set.files.filter((f) => f.format !== 'manifest'); // the pipeline's record of the manifest no longer holds
}

describe('verify after an export that checked the XVA as written', () => {
  it('a good export: checked as written, and verify confirms it without reading it back; the check equals the file check', async () => {
    const set = sets.xva;
    const name = fileOf(set, 'xva');
    const written = set.files.find((f) => f.name === name)!;
    expect(written.checkedAsWritten?.detail).toMatch(/^\d+ disk\(s\), \d+ bytes in \d+ chunks, xxhash checksums$/);
    // The manifest the meta phase wrote carries the same hash and the check.
    const manifest = Manifest.parse(JSON.parse(await readFile(path.join(set.backupDir, set.folder, set.manifest), 'utf8')));
    expect(manifest.files.find((f) => f.name === name)).toMatchObject({ xxh64: written.xxh64, size: written.size, checkedAsWritten: written.checkedAsWritten });

    const copy = await copyOf(set);
    const v = await verified({ ...copy, files: set.files });
    expect(v.ok).toBe(true);
    expect(v.asWritten).toBe(true);
    const file = v.files.find((f) => f.name === name)!;
    expect(file).toMatchObject({ ok: true, asWritten: true, bytes: 0, xxh64: written.xxh64, checks: ['xva', 'size', 'xxh64'] });
    // Only the .meta was read.
    expect(v.bytes).toBe(v.files.filter((f) => f.format === 'meta').reduce((n, f) => n + f.bytes, 0));

    // Read back from disk (as `vmbackup verify` does): the same findings and the same hash.
    const back = await verified(copy);
    const reread = back.files.find((f) => f.name === name)!;
    expect(reread.asWritten).toBeUndefined();
    expect(reread.bytes).toBe(written.size);
    expect(reread.xxh64).toBe(written.xxh64);
    expect(reread.detail).toBe(written.checkedAsWritten!.detail);
    expect(file.detail).toBe(`${reread.detail}; checked as written`);
  });

  it('a file cut after it was checked: its size no longer matches, found without reading it', async () => {
    const copy = await copyOf(sets.xva);
    const name = fileOf(copy, 'xva');
    const size = sets.xva.files.find((f) => f.name === name)!.size;
    await truncate(path.join(copy.dir, name), size - 1024);
    const v = await verified({ ...copy, files: sets.xva.files });
    expect(v.ok).toBe(false);
    expect(v.error).toMatchObject({ file: name, code: 'VERIFY_SIZE_MISMATCH', offset: size - 1024 });
    expect(v.error!.message).toMatch(/truncated/);
    expect(v.files.find((f) => f.name === name)!.bytes).toBe(0);
  });

  it('a corrupted chunk from XAPI fails the export, naming the chunk; nothing is left', async () => {
    const backupDir = await mkdtemp(path.join(tmp, 'corrupt-'));
    const fault = sim.faults.add({ http: 'export', vm: 'web1', action: { kind: 'corrupt', at_byte: (2 << 20) + 4096 } });
    let error: unknown;
    try {
      await backup('vm', { backupDir });
    } catch (e) {
      error = e;
    } finally {
      sim.faults.remove(fault);
    }
    expect(error).toBeInstanceOf(RestartError);
    expect(error).toMatchObject({ code: 'XVA_BAD_CHECKSUM', data: { file: expect.stringMatching(/\.xva$/), chunk: expect.stringMatching(/^Ref:\d+\/\d{8}$/) } });
    expect((error as Error).message).toMatch(/^checked as written: backup_\d{8}-\d{6}\.xva: chunk Ref:\d+\/\d{8} fails its XXH64 checksum at byte \d+; the export was discarded$/);
    expect(await readdir(path.join(backupDir, 'web1')).catch(() => [])).toEqual([]);
  });

  it('a stream that ends early but cleanly fails the write: no file, no .partial', async () => {
    const bytes = await readFile(path.join(sets.xva.backupDir, sets.xva.folder, fileOf(sets.xva, 'xva')));
    const dir = await mkdtemp(path.join(tmp, 'cut-'));
    const target = path.join(dir, 'backup_20240101-000000.xva');
    for (const cut of [bytes.length - 1024, (3 << 20) + 100, 700]) {
      const checker = await XvaChecker.create();
      const source = Readable.from((function* () {
        for (let at = 0; at < cut; at += 65536) yield bytes.subarray(at, Math.min(cut, at + 65536));
      })());
      const write = writeStreamAtomic(target, source, { inspect: { push: (c) => checker.push(c), end: () => void checker.end() } });
      await expect(write).rejects.toBeInstanceOf(XvaError);
      await expect(write).rejects.toMatchObject({ code: expect.stringMatching(/^TAR_(NO_END|TRUNCATED)$/) });
      expect(await readdir(dir)).toEqual([]);
    }
    // The whole stream passes, and the checker finds what verifyXva finds in the file.
    const checker = await XvaChecker.create();
    let report: unknown;
    await writeStreamAtomic(target, Readable.from([bytes]), { inspect: { push: (c) => checker.push(c), end: () => (report = checker.end()) } });
    expect(report).toEqual(await verifyXva(createReadStream(target)));
  });
});
