import { readFile } from 'node:fs/promises';
import { z } from 'zod';

/**
 * The pool a simulator serves, as a JSON file. Only `credentials`, `hosts`, `srs` and `vms`
 * (and, inside them, the keys shown) are required; everything else has a default. Unknown keys
 * are refused so that a typo is reported rather than ignored.
 *
 * @example
 *   {
 *     "credentials": { "user": "root", "password": "secret" },
 *     "hosts": [{ "name_label": "xcp1" }, { "name_label": "xcp2" }],
 *     "srs": [{ "name_label": "Local storage", "size_gib": 100, "used_gib": 10 }],
 *     "vms": [{
 *       "name_label": "web1", "power_state": "Running",
 *       "disks": [{ "device": "xvda", "size_mib": 64, "fill": "pattern" }],
 *       "vifs": [{ "network": "Pool-wide network associated with eth0", "mac": "de:ad:be:ef:00:01" }]
 *     }]
 *   }
 */

export const PowerState = z.enum(['Halted', 'Paused', 'Running', 'Suspended']);
export type PowerState = z.infer<typeof PowerState>;

/** How a disk's bytes are made: deterministic data, all zeros, or mostly zeros with some data. */
export const Fill = z.enum(['pattern', 'zero', 'sparse']);
export type Fill = z.infer<typeof Fill>;

const StringMap = z.record(z.string(), z.string());

export const HostSpec = z.strictObject({
  name_label: z.string().min(1),
  /** Loopback address the host listens on; default 127.0.0.<index+1>. */
  address: z.ipv4().optional(),
  hostname: z.string().optional(),
  name_description: z.string().default(''),
  other_config: StringMap.default({}),
  tags: z.array(z.string()).default([]),
  /** Size of the `/host_backup` stream of this host. */
  backup_size_mib: z.number().positive().default(1),
});
export type HostSpec = z.infer<typeof HostSpec>;

export const SrSpec = z.strictObject({
  name_label: z.string().min(1),
  size_gib: z.number().positive(),
  used_gib: z.number().min(0),
  name_description: z.string().default(''),
  type: z.string().default('lvm'),
  /** A shared SR is reachable from every host; a local one only from `host` (export redirects). */
  shared: z.boolean().default(true),
  host: z.string().optional(),
  other_config: StringMap.default({}),
  tags: z.array(z.string()).default([]),
  /** The pool's default SR (the first SR when none says so). */
  default: z.boolean().default(false),
});
export type SrSpec = z.infer<typeof SrSpec>;

export const DiskSpec = z.strictObject({
  device: z.string().regex(/^[a-z]+[a-z0-9]*$/, 'a device name such as xvda'),
  size_mib: z.number().positive(),
  fill: Fill,
  name_label: z.string().optional(),
  name_description: z.string().default(''),
  /** SR name_label; default the pool's default SR. */
  sr: z.string().optional(),
  bootable: z.boolean().optional(),
  mode: z.enum(['RW', 'RO']).default('RW'),
  type: z.enum(['system', 'user', 'ephemeral', 'suspend', 'crashdump', 'metadata']).default('user'),
  read_only: z.boolean().default(false),
  sharable: z.boolean().default(false),
  other_config: StringMap.default({}),
  tags: z.array(z.string()).default([]),
  cbt_enabled: z.boolean().default(false),
});
export type DiskSpec = z.infer<typeof DiskSpec>;

export const VifSpec = z.strictObject({
  network: z.string().min(1),
  mac: z.string().regex(/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/, 'a MAC address such as de:ad:be:ef:00:01'),
  mtu: z.number().int().positive().default(1500),
  other_config: StringMap.default({}),
});
export type VifSpec = z.infer<typeof VifSpec>;

export const OsVersion = z.strictObject({
  name: z.string(),
  uname: z.string().default(''),
  distro: z.string().default(''),
  major: z.string().default(''),
  minor: z.string().default(''),
});

export const SnapshotSpec = z.strictObject({
  name_label: z.string().min(1),
  /** ISO 8601; default: one day before the simulator starts, one hour apart per snapshot. */
  snapshot_time: z.iso.datetime().optional(),
  other_config: StringMap.default({}),
  tags: z.array(z.string()).default([]),
  is_a_template: z.boolean().default(true),
});
export type SnapshotSpec = z.infer<typeof SnapshotSpec>;

export const VmSpec = z.strictObject({
  name_label: z.string(),
  power_state: PowerState,
  disks: z.array(DiskSpec),
  /** Default: none (a VM with no network interface). */
  vifs: z.array(VifSpec).default([]),
  name_description: z.string().default(''),
  /** Fixed uuid; default derived from the name (and its rank among VMs of the same name). */
  uuid: z.uuid().optional(),
  memory_mib: z.number().int().positive().default(1024),
  vcpus: z.number().int().positive().default(1),
  /** Guest tools' view of the OS; null for a VM without tools (no guest metrics). */
  os_version: OsVersion.nullable().default({ name: 'Debian GNU/Linux 12 (bookworm)', uname: '6.1.0-18-amd64', distro: 'debian', major: '12', minor: '5' }),
  other_config: StringMap.default({}),
  tags: z.array(z.string()).default([]),
  blocked_operations: StringMap.default({}),
  platform: StringMap.default({}),
  /** Host a running VM is resident on; default the master. */
  host: z.string().optional(),
  /** A CD drive: true for an empty drive, or the name of an ISO in the tools SR. */
  cd: z.union([z.boolean(), z.string()]).default(false),
  snapshots: z.array(SnapshotSpec).default([]),
  is_a_template: z.boolean().default(false),
  domain_type: z.enum(['hvm', 'pv', 'pvh']).default('hvm'),
});
export type VmSpec = z.infer<typeof VmSpec>;

export const PoolSpec = z.strictObject({
  credentials: z.strictObject({ user: z.string().min(1), password: z.string() }),
  hosts: z.array(HostSpec).min(1),
  srs: z.array(SrSpec).min(1),
  vms: z.array(VmSpec),
  name_label: z.string().default('pool'),
  name_description: z.string().default(''),
  other_config: StringMap.default({}),
  /** Seed of every generated uuid and byte pattern. */
  seed: z.string().default('vmbackup-sim'),
  /** Product reported in host.software_version and in ova.xml. */
  product: z
    .strictObject({
      brand: z.string().default('XCP-ng'),
      version: z.string().default('8.2.1'),
      build_number: z.string().default('release/yangtze/master/58'),
      api_major: z.number().int().default(2),
      api_minor: z.number().int().default(20),
      xapi_major: z.number().int().default(1),
      xapi_minor: z.number().int().default(20),
    })
    .default({ brand: 'XCP-ng', version: '8.2.1', build_number: 'release/yangtze/master/58', api_major: 2, api_minor: 20, xapi_major: 1, xapi_minor: 20 }),
  /** Default templates (is_default_template) besides those every pool gets. */
  templates: z.array(z.string()).default([]),
  /** Networks to create (besides those VIFs name), e.g. one with purpose `nbd` to serve NBD. */
  networks: z
    .array(z.strictObject({ name_label: z.string().min(1), purpose: z.array(z.enum(['nbd', 'insecure_nbd'])).default([]) }))
    .default([])
    .refine((nets) => !(nets.some((n) => n.purpose.includes('nbd')) && nets.some((n) => n.purpose.includes('insecure_nbd'))), {
      message: 'purposes nbd and insecure_nbd exclude each other (NETWORK_INCOMPATIBLE_PURPOSES)',
    }),
});
export type PoolSpec = z.infer<typeof PoolSpec>;
export type PoolSpecInput = z.input<typeof PoolSpec>;

/** A pool file that does not parse or does not match the schema; the message names the key. */
export class PoolSpecError extends Error {
  override name = 'PoolSpecError';
}

function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => {
      const path = issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('').replace(/^\./, '');
      return `${path === '' ? '(root)' : path}: ${issue.message}`;
    })
    .join('; ');
}

/** Validates a pool spec object (already parsed JSON); cross-references are checked too. */
export function parsePoolSpec(input: unknown, source = 'pool spec'): PoolSpec {
  const result = PoolSpec.safeParse(input);
  if (!result.success) throw new PoolSpecError(`${source}: ${describeIssues(result.error)}`);
  const spec = result.data;
  const problems: string[] = [];
  const hostNames = new Set(spec.hosts.map((h) => h.name_label));
  const srNames = new Set(spec.srs.map((s) => s.name_label));
  if (hostNames.size !== spec.hosts.length) problems.push('hosts: host name_labels must be unique');
  if (srNames.size !== spec.srs.length) problems.push('srs: SR name_labels must be unique');
  const addresses = spec.hosts.map((h, i) => h.address ?? `127.0.0.${i + 1}`);
  if (new Set(addresses).size !== addresses.length) problems.push('hosts: addresses must be unique');
  spec.hosts.forEach((h, i) => {
    if (h.address !== undefined && !h.address.startsWith('127.')) problems.push(`hosts[${i}].address: must be a loopback address (127.x.y.z)`);
  });
  spec.srs.forEach((sr, i) => {
    if (sr.used_gib > sr.size_gib) problems.push(`srs[${i}].used_gib: larger than size_gib`);
    if (sr.host !== undefined && !hostNames.has(sr.host)) problems.push(`srs[${i}].host: no host named ${JSON.stringify(sr.host)}`);
  });
  spec.vms.forEach((vm, i) => {
    if (vm.host !== undefined && !hostNames.has(vm.host)) problems.push(`vms[${i}].host: no host named ${JSON.stringify(vm.host)}`);
    const devices = new Set<string>();
    vm.disks.forEach((d, j) => {
      if (d.sr !== undefined && !srNames.has(d.sr)) problems.push(`vms[${i}].disks[${j}].sr: no SR named ${JSON.stringify(d.sr)}`);
      if (devices.has(d.device)) problems.push(`vms[${i}].disks[${j}].device: ${d.device} used twice`);
      devices.add(d.device);
    });
  });
  if (problems.length > 0) throw new PoolSpecError(`${source}: ${problems.join('; ')}`);
  return spec;
}

/** Reads and validates a pool file. */
export async function loadPoolSpec(file: string): Promise<PoolSpec> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new PoolSpecError(`pool file ${file}: cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new PoolSpecError(`pool file ${file}: not valid JSON (${(error as Error).message})`);
  }
  return parsePoolSpec(json, `pool file ${file}`);
}

/**
 * A pool of `count` small VMs (16 MiB disks), half of them running, for `--generate N`.
 *
 * @example
 *   generatePoolSpec(3).vms.map((v) => v.name_label)   // ['vm-001', 'vm-002', 'vm-003']
 */
export function generatePoolSpec(count: number, base?: PoolSpecInput): PoolSpec {
  const fills = ['pattern', 'sparse', 'zero'] as const;
  const vms: z.input<typeof VmSpec>[] = Array.from({ length: count }, (_, i) => {
    const n = String(i + 1).padStart(3, '0');
    return {
      name_label: `vm-${n}`,
      power_state: i % 2 === 0 ? 'Running' : 'Halted',
      disks: [{ device: 'xvda', size_mib: 16, fill: fills[i % fills.length]! }],
      vifs: [{ network: 'Pool-wide network associated with eth0', mac: `02:00:00:${[(i >> 16) & 255, (i >> 8) & 255, i & 255].map((b) => b.toString(16).padStart(2, '0')).join(':')}` }],
    };
  });
  const input: PoolSpecInput = base ?? {
    credentials: { user: 'root', password: 'password' },
    hosts: [{ name_label: 'xcp-host-1' }],
    srs: [{ name_label: 'Local storage', size_gib: 500, used_gib: 20 }],
    vms: [],
  };
  return parsePoolSpec({ ...input, vms: [...(input.vms ?? []), ...vms] }, '--generate');
}
