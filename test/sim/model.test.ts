import { describe, expect, it } from 'vitest';
import { readAll } from '../../runtime/formats/test-sources.js';
import { MemoryDisk, PatternDisk, SparseDisk, ZeroDisk } from './disks.js';
import { smallPool } from './fixtures.js';
import { PoolSpecError, generatePoolSpec, parsePoolSpec } from './pool-spec.js';
import { SimState } from './state.js';

const MIB = 1 << 20;

describe('disk contents', () => {
  it('pattern disks are deterministic, differ per disk and per block, and read the same at any alignment', async () => {
    const a = new PatternDisk(5 * MIB + 4096, 'seed/a');
    const again = new PatternDisk(5 * MIB + 4096, 'seed/a');
    const b = new PatternDisk(5 * MIB + 4096, 'seed/b');
    const whole = await readAll(a);
    expect(whole.equals(await readAll(again))).toBe(true);
    expect(whole.equals(await readAll(b))).toBe(false);
    // No two 4 KiB blocks are equal: misplaced data is always detected.
    const blocks = new Set<string>();
    for (let o = 0; o < whole.length; o += 4096) blocks.add(whole.subarray(o, o + 4096).toString('base64'));
    expect(blocks.size).toBe(whole.length / 4096);
    for (const [offset, length] of [[0, 10], [MIB - 3, 7], [MIB + 123, 2 * MIB], [5 * MIB, 4096], [0, 5 * MIB + 4096]] as const) {
      expect((a.read(offset, length) as Buffer).equals(whole.subarray(offset, offset + length))).toBe(true);
    }
    expect(() => a.read(5 * MIB, 8192)).toThrow(RangeError);
  });

  it('sparse disks hold data in a few chunks, answer null elsewhere, and say where the data is', async () => {
    const disk = new SparseDisk(64 * MIB, 'sparse-seed');
    let data = 0;
    for (let c = 0; c < 64; c++) {
      const chunk = disk.read(c * MIB, MIB);
      expect(disk.hasData(c * MIB, MIB)).toBe(chunk !== null);
      if (chunk !== null) {
        data += 1;
        expect(chunk.subarray(SparseDisk.DATA_PER_CHUNK).every((x) => x === 0)).toBe(true);
      }
    }
    expect(disk.read(0, MIB)).not.toBeNull();
    expect(data).toBeGreaterThan(1);
    expect(data).toBeLessThan(32);
    expect(disk.allocated).toBe(data * MIB);
    expect(new ZeroDisk(MIB).read(0, MIB)).toBeNull();
  });

  it('memory disks write at any alignment over a base, and snapshots are copy-on-write', async () => {
    const base = new PatternDisk(3 * MIB, 'base');
    const disk = new MemoryDisk(3 * MIB, base);
    await disk.write(MIB - 2, Buffer.from('abcd'));
    const snap = disk.snapshot();
    await disk.write(MIB - 2, Buffer.from('WXYZ'));
    await disk.write(2 * MIB, Buffer.alloc(MIB));
    const expected = await readAll(base);
    Buffer.from('abcd').copy(expected, MIB - 2);
    expect((await readAll(snap)).equals(expected)).toBe(true);
    const now = await readAll(disk);
    expect(now.subarray(MIB - 2, MIB + 2).toString()).toBe('WXYZ');
    expect(await disk.read(2 * MIB, MIB)).toBeNull();
    expect(disk.hasData(2 * MIB, MIB)).toBe(false);
  });
});

describe('pool files', () => {
  it('fills defaults and derives the same uuids and refs on every run', () => {
    const a = new SimState(parsePoolSpec(smallPool()));
    const b = new SimState(parsePoolSpec(smallPool()));
    const ids = (s: SimState) => s.db.all('VM').map((r) => [r.ref, r.fields.uuid, r.fields.name_label]);
    expect(ids(a)).toEqual(ids(b));
    const vdis = (s: SimState) => s.db.all('VDI').map((r) => r.fields.uuid);
    expect(vdis(a)).toEqual(vdis(b));
    const twins = a.db.all('VM').filter((r) => r.fields.name_label === 'twin');
    expect(new Set(twins.map((t) => t.fields.uuid)).size).toBe(2);
  });

  it('builds what XAPI always has: a dom0 per host, default templates, a tools SR, the pool', () => {
    const s = new SimState(parsePoolSpec(smallPool()));
    const dom0s = s.db.all('VM').filter((r) => r.fields.is_control_domain === true);
    expect(dom0s.map((d) => d.fields.resident_on)).toEqual(s.hosts.map((h) => h.ref));
    expect(s.db.all('host').map((h) => h.fields.control_domain)).toEqual(dom0s.map((d) => d.ref));
    expect(s.db.all('VM').filter((r) => r.fields.is_default_template === true).length).toBeGreaterThanOrEqual(3);
    expect(s.db.all('SR').some((r) => r.fields.is_tools_sr === true)).toBe(true);
    const pool = s.db.record('pool', s.poolRef);
    expect(pool.master).toBe(s.hosts[0]!.ref);
    expect(s.db.record('SR', pool.default_SR as string).name_label).toBe('NFS storage');
    const db1 = s.db.all('VM').find((r) => r.fields.name_label === 'db1')!;
    expect(s.db.record('VM', db1.ref).snapshots).toHaveLength(1);
    const record = s.db.record('VM', db1.ref);
    expect(Object.keys(record)).toEqual(expect.arrayContaining(['other_config', 'tags', 'blocked_operations', 'current_operations', 'allowed_operations']));
  });

  it('reports every problem with the key that has it', () => {
    const bad = { ...smallPool(), hosts: [{ name_label: 'a', address: '10.0.0.1' }], srs: [{ name_label: 's', size_gib: 1, used_gib: 2 }] };
    expect(() => parsePoolSpec(bad, 'pool.json')).toThrow(PoolSpecError);
    expect(() => parsePoolSpec(bad, 'pool.json')).toThrow(/pool\.json: .*hosts\[0\]\.address: must be a loopback address.*srs\[0\]\.used_gib: larger than size_gib/);
    expect(() => parsePoolSpec({ ...smallPool(), vms: [{ name_label: 'v', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 1, fill: 'zero' }, { device: 'xvda', size_mib: 1, fill: 'zero' }], vifs: [] }] })).toThrow(
      /vms\[0\]\.disks\[1\]\.device: xvda used twice/,
    );
  });

  it('takes a minimal pool file: a VM without vifs has no network interface', () => {
    const spec = parsePoolSpec({
      credentials: { user: 'root', password: 'pw' },
      hosts: [{ name_label: 'h1' }],
      srs: [{ name_label: 'sr', size_gib: 10, used_gib: 1 }],
      vms: [{ name_label: 'bare', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 1, fill: 'zero' }] }],
    });
    const s = new SimState(spec);
    const vm = s.db.all('VM').find((r) => r.fields.name_label === 'bare')!;
    const record = s.db.record('VM', vm.ref);
    expect(record.VIFs).toEqual([]);
    expect(record.VBDs).toHaveLength(1);
  });

  it('generates N small VMs, half running', () => {
    const spec = generatePoolSpec(300);
    expect(spec.vms).toHaveLength(300);
    expect(spec.vms.filter((v) => v.power_state === 'Running')).toHaveLength(150);
    expect(new Set(spec.vms.map((v) => v.vifs[0]!.mac)).size).toBe(300);
  });
});
