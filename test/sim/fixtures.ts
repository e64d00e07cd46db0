import type { PoolSpecInput } from './pool-spec.js';

/**
 * A pool of one host and one shared SR holding `vms`: the pool of a test about its VMs.
 *
 * @example
 *   const sim = await startSimulator({ pool: pool([vm('web1', 'Halted')]) });
 */
export function pool(vms: PoolSpecInput['vms']): PoolSpecInput {
  return { credentials: { user: 'root', password: 'secret' }, hosts: [{ name_label: 'xcp1' }], srs: [{ name_label: 'NFS', size_gib: 100, used_gib: 10 }], vms };
}

/** A VM of one patterned disk of `mib` MiB, `xvda`, and no network. */
export const vm = (name: string, power: 'Running' | 'Halted' = 'Running', mib = 2) => ({
  name_label: name,
  power_state: power,
  disks: [{ device: 'xvda', size_mib: mib, fill: 'pattern' as const }],
  vifs: [],
});

/** `count` VMs of one 1 MiB disk, `vm-0001` …, every other one running (it gets a snapshot). */
export function smallVmsPool(count: number): PoolSpecInput {
  return pool(Array.from({ length: count }, (_, i) => vm(`vm-${String(i + 1).padStart(4, '0')}`, i % 2 === 0 ? 'Running' : 'Halted', 1)));
}

/**
 * Small pools for tests: two hosts, a shared SR and a local SR on the second host, and VMs
 * covering the cases a backup meets (running, halted, several disks of each fill, a CD, a
 * blocked export, an existing snapshot, a duplicate name, a non-ASCII name).
 *
 * @example
 *   const sim = await startSimulator({ pool: smallPool() });
 */
export function smallPool(overrides: Partial<PoolSpecInput> = {}): PoolSpecInput {
  return {
    credentials: { user: 'root', password: 'secret' },
    hosts: [{ name_label: 'xcp-a' }, { name_label: 'xcp-b' }],
    srs: [
      { name_label: 'NFS storage', size_gib: 100, used_gib: 10, type: 'nfs' },
      { name_label: 'Local storage b', size_gib: 50, used_gib: 1, shared: false, host: 'xcp-b' },
    ],
    vms: [
      {
        name_label: 'web1',
        power_state: 'Running',
        disks: [
          { device: 'xvda', size_mib: 4, fill: 'pattern' },
          { device: 'xvdb', size_mib: 3, fill: 'sparse' },
        ],
        vifs: [{ network: 'Pool-wide network associated with eth0', mac: 'de:ad:be:ef:00:01' }],
        cd: 'guest-tools.iso',
        other_config: { 'xo:owner': 'ops' },
        tags: ['prod'],
      },
      {
        name_label: 'db1',
        power_state: 'Halted',
        disks: [{ device: 'xvda', size_mib: 2, fill: 'zero' }],
        vifs: [{ network: 'Backup network', mac: 'de:ad:be:ef:00:02' }],
        cd: true,
        snapshots: [{ name_label: 'db1 nightly' }],
      },
      {
        name_label: 'locked',
        power_state: 'Halted',
        disks: [{ device: 'xvda', size_mib: 1, fill: 'pattern' }],
        vifs: [],
        blocked_operations: { export: 'exports are off for this VM', destroy: 'protected' },
      },
      {
        name_label: 'local-b',
        power_state: 'Halted',
        disks: [{ device: 'xvda', size_mib: 1, fill: 'pattern', sr: 'Local storage b' }],
        vifs: [],
      },
      { name_label: 'twin', power_state: 'Halted', disks: [], vifs: [] },
      { name_label: 'twin', power_state: 'Running', disks: [], vifs: [], os_version: null },
      { name_label: 'Café ünïcode ✓', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 1, fill: 'sparse' }], vifs: [] },
    ],
    ...overrides,
  };
}

/**
 * A pool for changed-block tracking: a halted VM with a pattern and a sparse disk (CBT off),
 * a running VM and a halted VM whose disks have CBT on.
 */
export function cbtPool(): PoolSpecInput {
  return {
    credentials: { user: 'root', password: 'secret' },
    hosts: [{ name_label: 'h1' }],
    srs: [{ name_label: 'sr', size_gib: 10, used_gib: 1, type: 'nfs' }],
    vms: [
      {
        name_label: 'app',
        power_state: 'Halted',
        disks: [
          { device: 'xvda', size_mib: 4, fill: 'pattern' },
          { device: 'xvdb', size_mib: 2, fill: 'sparse' },
        ],
        cd: 'guest-tools.iso',
      },
      { name_label: 'live', power_state: 'Running', disks: [{ device: 'xvda', size_mib: 2, fill: 'pattern', cbt_enabled: true }] },
      { name_label: 'other', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 4, fill: 'zero', cbt_enabled: true }] },
    ],
  };
}

/** Block indices whose bit is set in a list_changed_blocks bitmap (MSB first). */
export function decodeBitmap(base64: string): number[] {
  const bytes = Buffer.from(base64, 'base64');
  const out: number[] = [];
  for (let i = 0; i < bytes.length * 8; i++) if ((bytes[i >> 3]! & (0x80 >> (i & 7))) !== 0) out.push(i);
  return out;
}
