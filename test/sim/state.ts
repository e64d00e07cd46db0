import { CbtLogs } from './cbt.js';
import type { ClassName } from './datamodel.js';
import { Database, type Row } from './db.js';
import { CLUSTER_BLOCKS, GrownDisk, MemoryDisk, WRITE_BLOCK, WrittenDisk, ZeroDisk, diskFor, pickBlocks, pickRuns, type ChurnPattern, type SimDisk } from './disks.js';
import { allowedVbdDevices, possibleDevices, validDevice, xenDeviceName } from './devices.js';
import { ApiError } from './errors.js';
import { IdGenerator, NULL_REF, randomRef } from './ids.js';
import type { PoolSpec, VmSpec } from './pool-spec.js';

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

export interface HostInfo {
  readonly ref: string;
  readonly uuid: string;
  readonly name: string;
  readonly address: string;
  readonly backupSize: number;
}

/** VM operations XAPI checks (`vm_operations`), and the power states each is allowed in. */
const ALLOWED_POWER_STATES: Record<string, string[]> = {
  changing_memory_limits: ['Halted'],
  changing_shadow_memory: ['Halted'],
  changing_static_range: ['Halted'],
  changing_VCPUs: ['Halted'],
  make_into_template: ['Halted'],
  provision: ['Halted'],
  start: ['Halted'],
  start_on: ['Halted'],
  unpause: ['Paused'],
  resume: ['Suspended'],
  resume_on: ['Suspended'],
  clean_reboot: ['Running'],
  clean_shutdown: ['Running'],
  changing_VCPUs_live: ['Running'],
  migrate_send: ['Running'],
  pause: ['Running'],
  pool_migrate: ['Running'],
  suspend: ['Running'],
  snapshot_with_quiesce: ['Running'],
  changing_dynamic_range: ['Halted', 'Running'],
  clone: ['Halted'],
  copy: ['Halted'],
  destroy: ['Halted', 'Suspended'],
  export: ['Halted', 'Suspended'],
  hard_reboot: ['Paused', 'Running'],
  checkpoint: ['Paused', 'Suspended', 'Running'],
  hard_shutdown: ['Paused', 'Suspended', 'Running'],
  metadata_export: ['Halted', 'Paused', 'Suspended', 'Running'],
  revert: ['Halted', 'Paused', 'Suspended', 'Running'],
  snapshot: ['Halted', 'Paused', 'Suspended', 'Running'],
};

/** Order in which XAPI evaluates VM.allowed_operations. */
const LISTED_VM_OPERATIONS = [
  'snapshot', 'copy', 'clone', 'revert', 'checkpoint', 'snapshot_with_quiesce', 'start', 'start_on', 'pause', 'unpause',
  'clean_shutdown', 'clean_reboot', 'hard_shutdown', 'hard_reboot', 'suspend', 'resume', 'resume_on', 'export', 'destroy',
  'provision', 'changing_VCPUs_live', 'pool_migrate', 'migrate_send', 'make_into_template', 'changing_static_range',
  'changing_shadow_memory', 'changing_dynamic_range',
];

const TEMPLATE_OPERATIONS = ['changing_dynamic_range', 'changing_static_range', 'changing_memory_limits', 'changing_shadow_memory', 'changing_VCPUs', 'clone', 'copy', 'export', 'metadata_export', 'provision'];
const SNAPSHOT_OPERATIONS = ['revert', 'clone', 'copy', 'export', 'destroy', 'hard_shutdown', 'metadata_export'];
const DOM0_OPERATIONS = ['data_source_op', 'changing_memory_live', 'awaiting_memory_live', 'metadata_export', 'changing_dynamic_range', 'start'];
/** Groups of operations that may run at the same time on one VM (xapi_vm_lifecycle.ml). */
const CONCURRENT_GROUPS = [['clone', 'copy', 'export'], ['snapshot', 'checkpoint'], ['get_boot_record']];

const DEFAULT_TEMPLATES = ['Other install media', 'Debian Bookworm 12', 'Windows 10 (64-bit)'];

const TOOLS_SR_NAME = 'XCP-ng Tools';

/** SR types whose SM driver has VDI_CONFIG_CBT (the VHD-based ones); others refuse CBT calls. */
const CBT_SR_TYPES = new Set(['lvm', 'lvmoiscsi', 'lvmohba', 'ext', 'nfs', 'smb', 'file', 'xfs', 'gfs2']);

/** How long VDI.data_destroy waits for the VDI's VBDs to go (xapi_vdi.ml `data_destroy`). */
const DATA_DESTROY_WAIT_MS = 4000;
const TOOLS_ISO_NAME = 'guest-tools.iso';

/** VDI types a VBD may point at (xapi_vbd.ml `create`); others get VDI_INCOMPATIBLE_TYPE. */
const VBD_VDI_TYPES = new Set(['system', 'user', 'ephemeral', 'suspend', 'crashdump', 'metadata', 'rrd', 'pvs_cache']);

/** The fields of a VBD.create record, checked and with XAPI's defaults filled in. */
export interface VbdConstructor {
  VM: string;
  VDI: string;
  device: string;
  userdevice: string;
  bootable: boolean;
  mode: 'RO' | 'RW';
  type: 'CD' | 'Disk' | 'Floppy';
  unpluggable: boolean;
  empty: boolean;
  other_config: Record<string, string>;
  currently_attached: boolean;
  qos_algorithm_type: string;
  qos_algorithm_params: Record<string, string>;
}

/** A control domain or driver domain: shares disks safely (System_domains.is_system_domain). */
function isSystemDomain(vm: Record<string, unknown>): boolean {
  return vm.is_control_domain === true || (vm.other_config as Record<string, string>).is_system_domain === 'true';
}

/** Lowercase power state, as XAPI writes them in errors. */
function lc(state: string): string {
  return state.toLowerCase();
}

export interface SessionInfo {
  ref: string;
  user: string;
  originator: string;
  host: string;
}

/**
 * The pool the simulator serves: the database, the disks' contents, and XAPI's semantics for
 * the operations a backup uses (snapshot, destroy, power operations, sessions and tasks).
 */
export class SimState {
  readonly db = new Database();
  readonly ids: IdGenerator;
  readonly disks = new Map<string, SimDisk>();
  /** Changed-block tracking logs of the VDIs (cbt.ts). */
  readonly cbt = new CbtLogs();
  /** Guest writes played so far on each VDI (`churn`), the generation of the next ones. */
  private readonly writeRounds = new Map<string, number>();
  readonly hosts: HostInfo[];
  readonly poolRef: string;
  readonly masterRef: string;
  /** Local (non-shared) SR → the host that can reach it. */
  readonly srHost = new Map<string, string>();
  readonly sessionStats = { created: 0, loggedOut: 0, invalidated: 0 };
  private nextDomid = 1;
  private readonly credentials: { user: string; password: string };

  constructor(
    readonly spec: PoolSpec,
    readonly clock: () => Date = () => new Date(),
  ) {
    this.ids = new IdGenerator(spec.seed);
    this.credentials = spec.credentials;
    this.db.setComputer((_db, row) => this.computed(row));

    const poolUuid = this.ids.uuid('pool', spec.name_label);
    this.poolRef = this.ids.ref(poolUuid);
    this.hosts = spec.hosts.map((h, i) => {
      const uuid = this.ids.uuid('host', h.name_label);
      return { ref: this.ids.ref(uuid), uuid, name: h.name_label, address: h.address ?? `127.0.0.${i + 1}`, backupSize: Math.round(h.backup_size_mib * MIB) };
    });
    this.masterRef = this.hosts[0]!.ref;
    this.populate();
  }

  // --- population -------------------------------------------------------------------------

  private create(cls: ClassName, uuid: string, fields: Record<string, unknown>): string {
    const ref = this.ids.ref(uuid);
    this.db.create(cls, ref, { uuid, ...fields });
    return ref;
  }

  private populate(): void {
    const { spec } = this;
    const p = spec.product;
    const now = this.clock();

    spec.hosts.forEach((h, i) => {
      const info = this.hosts[i]!;
      this.db.create('host', info.ref, {
        uuid: info.uuid,
        name_label: h.name_label,
        name_description: h.name_description,
        address: info.address,
        hostname: h.hostname ?? h.name_label,
        API_version_major: p.api_major,
        API_version_minor: p.api_minor,
        software_version: {
          product_brand: p.brand,
          product_version: p.version,
          product_version_text: p.version.split('.').slice(0, 2).join('.'),
          product_version_text_short: p.version.split('.').slice(0, 2).join('.'),
          platform_name: 'XCP',
          platform_version: '3.2.1',
          build_number: p.build_number,
          xapi: `${p.xapi_major}.${p.xapi_minor}`,
          hostname: h.hostname ?? h.name_label,
          date: '2024-01-01',
        },
        other_config: h.other_config,
        tags: h.tags,
        capabilities: ['xen-3.0-x86_64', 'hvm-3.0-x86_32', 'hvm-3.0-x86_64'],
        cpu_info: { cpu_count: '8', socket_count: '1', vendor: 'GenuineIntel', modelname: 'Simulated CPU' },
        memory_overhead: 0,
        bios_strings: { 'bios-vendor': 'vmbackup-sim' },
      });
      const dom0Uuid = this.ids.uuid('dom0', h.name_label);
      const dom0 = this.create('VM', dom0Uuid, {
        name_label: `Control domain on host: ${h.name_label}`,
        name_description: 'The domain which manages physical devices and manages other domains',
        power_state: 'Running',
        is_control_domain: true,
        resident_on: info.ref,
        domid: 0,
        memory_static_max: 4 * GIB,
        memory_dynamic_max: 4 * GIB,
        memory_dynamic_min: 4 * GIB,
        memory_static_min: 4 * GIB,
        memory_target: 4 * GIB,
        VCPUs_max: 8,
        VCPUs_at_startup: 8,
        domain_type: 'pv',
        other_config: { storage_driver_domain: this.ids.ref(dom0Uuid), is_system_domain: 'true' },
      });
      this.db.update('host', info.ref, { control_domain: dom0 });
    });

    const srRefs = new Map<string, string>();
    spec.srs.forEach((s) => {
      const ref = this.create('SR', this.ids.uuid('SR', s.name_label), {
        name_label: s.name_label,
        name_description: s.name_description,
        type: s.type,
        content_type: 'user',
        shared: s.shared,
        physical_size: Math.round(s.size_gib * GIB),
        physical_utilisation: Math.round(s.used_gib * GIB),
        virtual_allocation: Math.round(s.used_gib * GIB),
        other_config: s.other_config,
        tags: s.tags,
        sm_config: { allocation: 'thin', use_vhd: 'true', devserial: 'scsi-sim' },
      });
      srRefs.set(s.name_label, ref);
      if (!s.shared) {
        const host = s.host === undefined ? this.masterRef : this.hosts.find((h) => h.name === s.host)!.ref;
        this.srHost.set(ref, host);
      }
    });
    const toolsSr = this.create('SR', this.ids.uuid('SR', TOOLS_SR_NAME), {
      name_label: TOOLS_SR_NAME,
      name_description: 'XCP-ng VM Tools ISOs',
      type: 'iso',
      content_type: 'iso',
      shared: true,
      is_tools_sr: true,
      physical_size: 64 * MIB,
      physical_utilisation: 64 * MIB,
      other_config: { 'xenserver_tools_sr': 'true' },
    });
    const defaultSrName = spec.srs.find((s) => s.default)?.name_label ?? spec.srs[0]!.name_label;
    const defaultSr = srRefs.get(defaultSrName)!;

    const networks = new Map<string, string>();
    const network = (name: string): string => {
      let ref = networks.get(name);
      if (ref === undefined) {
        const index = networks.size;
        ref = this.create('network', this.ids.uuid('network', name), {
          name_label: name,
          bridge: `xenbr${index}`,
          MTU: 1500,
          other_config: index === 0 ? { automatic: 'true' } : {},
        });
        networks.set(name, ref);
      }
      return ref;
    };
    network('Pool-wide network associated with eth0');
    for (const n of spec.networks) {
      const ref = network(n.name_label);
      if (n.purpose.length > 0) this.db.update('network', ref, { purpose: [...n.purpose] });
    }

    this.db.create('pool', this.poolRef, {
      uuid: this.ids.uuid('pool', spec.name_label),
      name_label: spec.name_label,
      name_description: spec.name_description,
      master: this.masterRef,
      default_SR: defaultSr,
      suspend_image_SR: defaultSr,
      crash_dump_SR: defaultSr,
      other_config: spec.other_config,
      cpu_info: { cpu_count: String(8 * spec.hosts.length), vendor: 'GenuineIntel' },
    });

    for (const name of [...DEFAULT_TEMPLATES, ...spec.templates]) {
      this.create('VM', this.ids.uuid('template', name), {
        name_label: name,
        name_description: `Template for ${name}`,
        is_a_template: true,
        is_default_template: true,
        power_state: 'Halted',
        memory_static_max: 2 * GIB,
        memory_dynamic_max: 2 * GIB,
        memory_dynamic_min: 2 * GIB,
        memory_static_min: 512 * MIB,
        other_config: { default_template: 'true', linux_template: name.startsWith('Windows') ? 'false' : 'true' },
        HVM_boot_policy: 'BIOS order',
        HVM_boot_params: { order: 'cdn' },
      });
    }

    const toolsIso = (name: string): string => {
      const existing = this.db.all('VDI').find((r) => r.fields.SR === toolsSr && r.fields.name_label === name);
      if (existing !== undefined) return existing.ref;
      const uuid = this.ids.uuid('iso', name);
      const ref = this.create('VDI', uuid, {
        name_label: name,
        SR: toolsSr,
        virtual_size: 64 * MIB,
        physical_utilisation: 64 * MIB,
        type: 'user',
        read_only: true,
        location: name,
        is_tools_iso: name === TOOLS_ISO_NAME,
      });
      this.disks.set(ref, new ZeroDisk(64 * MIB));
      return ref;
    };
    toolsIso(TOOLS_ISO_NAME);

    const seen = new Map<string, number>();
    for (const vm of spec.vms) {
      const rank = seen.get(vm.name_label) ?? 0;
      seen.set(vm.name_label, rank + 1);
      this.populateVm(vm, rank, { srRefs, defaultSr, network, toolsIso, now });
    }
  }

  private populateVm(
    vm: VmSpec,
    rank: number,
    ctx: { srRefs: Map<string, string>; defaultSr: string; network: (name: string) => string; toolsIso: (name: string) => string; now: Date },
  ): void {
    const uuid = vm.uuid ?? this.ids.uuid('VM', vm.name_label, String(rank));
    const live = vm.power_state === 'Running' || vm.power_state === 'Paused';
    const host = vm.host === undefined ? this.masterRef : this.hosts.find((h) => h.name === vm.host)!.ref;
    const memory = vm.memory_mib * MIB;
    let guestMetrics = NULL_REF;
    if (vm.os_version !== null) {
      guestMetrics = this.create('VM_guest_metrics', this.ids.uuid('guest_metrics', uuid), {
        os_version: { ...vm.os_version },
        PV_drivers_version: { major: '8', minor: '2', micro: '0', build: '1' },
        PV_drivers_up_to_date: true,
        PV_drivers_detected: true,
        networks: Object.fromEntries(vm.vifs.map((_, i) => [`${i}/ip`, `192.0.2.${(rank * 16 + i + 10) % 250}`])),
        memory: {},
        live,
        last_updated: ctx.now,
        can_use_hotplug_vbd: 'yes',
        can_use_hotplug_vif: 'yes',
      });
    }
    const vmRef = this.create('VM', uuid, {
      name_label: vm.name_label,
      name_description: vm.name_description,
      power_state: vm.power_state,
      is_a_template: vm.is_a_template,
      resident_on: live ? host : NULL_REF,
      domid: live ? this.nextDomid++ : -1,
      memory_static_max: memory,
      memory_dynamic_max: memory,
      memory_dynamic_min: memory,
      memory_static_min: Math.min(memory, 512 * MIB),
      memory_target: live ? memory : 0,
      VCPUs_max: vm.vcpus,
      VCPUs_at_startup: vm.vcpus,
      other_config: { base_template_name: 'Debian Bookworm 12', ...vm.other_config },
      tags: vm.tags,
      blocked_operations: vm.blocked_operations,
      platform: { 'device-model': 'qemu-upstream-compat', viridian: 'false', ...vm.platform },
      guest_metrics: guestMetrics,
      domain_type: vm.domain_type,
      HVM_boot_policy: vm.domain_type === 'pv' ? '' : 'BIOS order',
      HVM_boot_params: vm.domain_type === 'pv' ? {} : { order: 'cd' },
      generation_id: '0:0',
      hardware_platform_version: 2,
    });

    vm.disks.forEach((d, i) => {
      const vdiUuid = this.ids.uuid('VDI', uuid, d.device);
      const size = Math.round(d.size_mib * MIB);
      const content = diskFor(d.fill, size, `${this.spec.seed}/${vdiUuid}`);
      const sr = d.sr === undefined ? ctx.defaultSr : ctx.srRefs.get(d.sr)!;
      const vdiRef = this.create('VDI', vdiUuid, {
        name_label: d.name_label ?? `${vm.name_label} ${i}`,
        name_description: d.name_description,
        SR: sr,
        virtual_size: size,
        physical_utilisation: content.allocated,
        type: d.type,
        sharable: d.sharable,
        read_only: d.read_only,
        other_config: d.other_config,
        tags: d.tags,
        location: vdiUuid,
        sm_config: { vdi_type: 'vhd' },
        cbt_enabled: d.cbt_enabled,
      });
      this.disks.set(vdiRef, content);
      if (d.cbt_enabled) this.cbt.enable(vdiRef, size);
      this.create('VBD', this.ids.uuid('VBD', vdiUuid), {
        VM: vmRef,
        VDI: vdiRef,
        device: d.device,
        userdevice: String(i),
        bootable: d.bootable ?? i === 0,
        mode: d.mode,
        type: 'Disk',
        unpluggable: false,
        empty: false,
        currently_attached: live,
        qos_supported_algorithms: ['ionice'],
        other_config: { owner: '' },
      });
    });
    if (vm.cd !== false) {
      const userdevice = String(Math.max(3, vm.disks.length));
      this.create('VBD', this.ids.uuid('VBD', uuid, 'cd'), {
        VM: vmRef,
        VDI: vm.cd === true ? NULL_REF : ctx.toolsIso(vm.cd),
        device: `xvd${String.fromCharCode(97 + Number(userdevice))}`,
        userdevice,
        bootable: false,
        mode: 'RO',
        type: 'CD',
        unpluggable: true,
        empty: vm.cd === true,
        currently_attached: live,
      });
    }
    vm.vifs.forEach((v, i) => {
      this.create('VIF', this.ids.uuid('VIF', uuid, String(i)), {
        device: String(i),
        network: ctx.network(v.network),
        VM: vmRef,
        MAC: v.mac.toLowerCase(),
        MTU: v.mtu,
        other_config: v.other_config,
        currently_attached: live,
        qos_supported_algorithms: ['ratelimit'],
      });
    });

    const base = ctx.now.getTime() - 24 * 3600_000;
    vm.snapshots.forEach((s, i) => {
      const time = s.snapshot_time === undefined ? new Date(base + i * 3600_000) : new Date(s.snapshot_time);
      const snap = this.snapshotVm(vmRef, s.name_label, [], { time, skipChecks: true });
      const otherConfig = this.db.field<Record<string, string>>('VM', snap, 'other_config');
      this.db.update('VM', snap, { other_config: { ...otherConfig, ...s.other_config }, tags: s.tags, is_a_template: s.is_a_template });
    });
  }

  // --- computed fields ----------------------------------------------------------------------

  private computed(row: Row): Record<string, unknown> {
    if (row.cls === 'VM') return { allowed_operations: this.vmAllowedOperations(row.ref) };
    if (row.cls === 'VDI') return { allowed_operations: this.vdiAllowedOperations(row) };
    if (row.cls === 'task') {
      return { allowed_operations: row.fields.status === 'pending' ? ['cancel'] : [] };
    }
    return {};
  }

  private vdiAllowedOperations(row: Row): string[] {
    if (Object.keys(row.fields.current_operations as object).length > 0) return [];
    const sr = this.db.get('SR', row.fields.SR as string);
    if (sr?.fields.content_type === 'iso') return [];
    const attached = this.db.reverse('VBD', 'VDI', row.ref).some((v) => this.db.get('VBD', v)?.fields.currently_attached === true);
    const ops = ['clone', 'copy', 'snapshot', 'update', 'generate_config', 'resize_online'];
    if (!attached) ops.push('destroy', 'resize', 'forget');
    for (const op of ['enable_cbt', 'disable_cbt', 'data_destroy', 'list_changed_blocks']) if (this.vdiOperationError(row.ref, op) === undefined) ops.push(op);
    if (row.fields.type === 'cbt_metadata') return ops.filter((op) => !['clone', 'copy', 'snapshot', 'resize', 'resize_online', 'enable_cbt', 'disable_cbt'].includes(op));
    return ops;
  }

  // --- VM lifecycle checks (xapi_vm_lifecycle.ml) -------------------------------------------------

  /** The error XAPI would raise for `op` on this VM, or undefined when allowed. */
  vmOperationError(vmRef: string, op: string): ApiError | undefined {
    const row = this.db.require('VM', vmRef);
    const f = row.fields;
    const blocked = f.blocked_operations as Record<string, string>;
    if (Object.hasOwn(blocked, op)) return new ApiError('OPERATION_BLOCKED', [vmRef, blocked[op]]);
    const power = f.power_state as string;
    const allowed = ALLOWED_POWER_STATES[op] ?? ['Halted', 'Paused', 'Suspended', 'Running'];
    if (!allowed.includes(power)) return new ApiError('VM_BAD_POWER_STATE', [vmRef, allowed.map(lc).join(', '), lc(power)]);
    const current = Object.entries(f.current_operations as Record<string, string>);
    if (current.length > 0) {
      const ok = CONCURRENT_GROUPS.some((g) => g.includes(op) && current.every(([, o]) => g.includes(o)));
      if (!ok) {
        const [task, other] = current[0]!;
        return new ApiError('OTHER_OPERATION_IN_PROGRESS', ['VM', vmRef, other, task]);
      }
    }
    if (f.is_a_template === true && f.is_a_snapshot !== true) {
      const defaultTemplate = (f.other_config as Record<string, string>).default_template === 'true';
      if (!(TEMPLATE_OPERATIONS.includes(op) || (op === 'destroy' && !defaultTemplate))) return new ApiError('VM_IS_TEMPLATE', [vmRef, op]);
    }
    if (f.is_a_snapshot === true && !SNAPSHOT_OPERATIONS.includes(op)) return new ApiError('VM_IS_SNAPSHOT', [vmRef, op]);
    if (f.is_control_domain === true && !DOM0_OPERATIONS.includes(op)) {
      return new ApiError('OPERATION_NOT_ALLOWED', ['Operations on domain 0 are not allowed']);
    }
    return undefined;
  }

  assertVmOperation(vmRef: string, op: string): void {
    const error = this.vmOperationError(vmRef, op);
    if (error !== undefined) throw error;
  }

  vmAllowedOperations(vmRef: string): string[] {
    return LISTED_VM_OPERATIONS.filter((op) => this.vmOperationError(vmRef, op) === undefined);
  }

  /** Runs `fn` with `op` in the VM's current_operations under `taskRef`, as XAPI locks VMs. */
  async withVmOperation<T>(vmRef: string, op: string, taskRef: string, fn: () => Promise<T> | T): Promise<T> {
    this.assertVmOperation(vmRef, op);
    const ops = this.db.field<Record<string, string>>('VM', vmRef, 'current_operations');
    this.db.update('VM', vmRef, { current_operations: { ...ops, [taskRef]: op } });
    try {
      return await fn();
    } finally {
      if (this.db.has('VM', vmRef)) {
        const now = this.db.field<Record<string, string>>('VM', vmRef, 'current_operations');
        delete now[taskRef];
        this.db.update('VM', vmRef, { current_operations: now });
      }
    }
  }

  // --- storage ------------------------------------------------------------------------------

  private srUsage(srRef: string): { used: number; size: number } {
    const f = this.db.require('SR', srRef).fields;
    return { used: f.physical_utilisation as number, size: f.physical_size as number };
  }

  private adjustSr(srRef: string, delta: number): void {
    if (!this.db.has('SR', srRef)) return;
    const { used } = this.srUsage(srRef);
    this.db.update('SR', srRef, {
      physical_utilisation: Math.max(0, used + delta),
      virtual_allocation: Math.max(0, (this.db.field<number>('SR', srRef, 'virtual_allocation')) + delta),
    });
  }

  /** `SR_FULL [requested, maximum]` unless `bytes` more fit in the SR. */
  assertSrSpace(srRef: string, bytes: number): void {
    const { used, size } = this.srUsage(srRef);
    if (used + bytes > size) throw new ApiError('SR_FULL', [String(bytes), String(size)]);
  }

  /** VDI.snapshot: a new VDI sharing the content at this instant (xapi_vdi.ml snapshot_and_clone). */
  snapshotVdi(vdiRef: string, opts: { time?: Date } = {}): string {
    const src = this.db.require('VDI', vdiRef).fields;
    if (Object.keys(src.current_operations as object).length > 0) throw new ApiError('OTHER_OPERATION_IN_PROGRESS', ['VDI', vdiRef]);
    this.assertVdiOperation(vdiRef, 'snapshot');
    if (src.sharable === true) throw new ApiError('VDI_IS_SHARABLE', [vdiRef]);
    const ref = this.duplicateVdi(vdiRef, src.SR as string, {
      is_a_snapshot: true,
      snapshot_of: vdiRef,
      snapshot_time: opts.time ?? this.clock(),
      cbt_enabled: src.cbt_enabled,
    });
    if (src.cbt_enabled === true) this.cbt.snapshot(vdiRef, ref);
    return ref;
  }

  /** VDI.destroy (xapi_vdi.ml): refused while attached; its VBDs go with it. */
  destroyVdi(vdiRef: string): void {
    const f = this.db.require('VDI', vdiRef).fields;
    const vbds = this.db.reverse('VBD', 'VDI', vdiRef);
    if (vbds.some((v) => this.db.get('VBD', v)?.fields.currently_attached === true)) throw new ApiError('VDI_IN_USE', [vdiRef, 'destroy']);
    if (Object.keys(f.current_operations as object).length > 0) {
      const [task, op] = Object.entries(f.current_operations as Record<string, string>)[0]!;
      throw new ApiError('OTHER_OPERATION_IN_PROGRESS', ['VDI', vdiRef, op, task]);
    }
    const sr = this.db.get('SR', f.SR as string);
    if (sr?.fields.content_type === 'iso') throw new ApiError('SR_OPERATION_NOT_SUPPORTED', [sr.ref]);
    this.db.destroy('VDI', vdiRef);
    for (const v of vbds) if (this.db.has('VBD', v)) this.db.destroy('VBD', v);
    this.disks.delete(vdiRef);
    this.cbt.remove(vdiRef);
    this.writeRounds.delete(vdiRef);
    this.adjustSr(f.SR as string, -(f.physical_utilisation as number));
  }

  /** VDI.create from a constructor record; content starts as zeros. */
  createVdi(record: Record<string, unknown>): string {
    const sr = record.SR as string;
    this.db.require('SR', sr);
    const size = record.virtual_size as number;
    const uuid = this.ids.next('VDI');
    const ref = this.create('VDI', uuid, {
      name_label: record.name_label ?? '',
      name_description: record.name_description ?? '',
      SR: sr,
      virtual_size: size,
      physical_utilisation: 0,
      type: record.type ?? 'user',
      sharable: record.sharable ?? false,
      read_only: record.read_only ?? false,
      other_config: record.other_config ?? {},
      xenstore_data: record.xenstore_data ?? {},
      sm_config: { vdi_type: 'vhd', ...((record.sm_config as Record<string, string>) ?? {}) },
      tags: record.tags ?? [],
      location: uuid,
    });
    this.disks.set(ref, new MemoryDisk(size));
    return ref;
  }

  /** Refreshes VDI.physical_utilisation (and the SR's) after its content changed. */
  refreshVdiUsage(vdiRef: string): void {
    const content = this.disks.get(vdiRef);
    if (content === undefined || !this.db.has('VDI', vdiRef)) return;
    const before = this.db.field<number>('VDI', vdiRef, 'physical_utilisation');
    if (before === content.allocated) return;
    this.db.update('VDI', vdiRef, { physical_utilisation: content.allocated });
    this.adjustSr(this.db.field<string>('VDI', vdiRef, 'SR'), content.allocated - before);
  }

  // --- changed-block tracking (xapi_vdi.ml check_operation_error, sm VDI.py) ---------------

  /** The error XAPI raises for `op` on this VDI (the CBT-related subset of its checks), or undefined. */
  vdiOperationError(vdiRef: string, op: string): ApiError | undefined {
    const f = this.db.require('VDI', vdiRef).fields;
    const srRef = f.SR as string;
    const sr = this.db.get('SR', srRef)?.fields;
    const attached = this.db.reverse('VBD', 'VDI', vdiRef).some((v) => {
      const vbd = this.db.get('VBD', v)?.fields;
      if (vbd?.currently_attached !== true) return false;
      // list_changed_blocks tolerates VBDs of snapshot VMs (VM.checkpoint leaves them attached).
      return !(op === 'list_changed_blocks' && this.db.get('VM', vbd.VM as string)?.fields.is_a_snapshot === true);
    });
    const live = ['snapshot', 'clone', 'enable_cbt', 'disable_cbt', 'data_destroy', 'mirror', 'resize_online'].includes(op);
    if (attached && !live && !(op === 'copy' && !this.hasRwAttach(vdiRef))) return new ApiError('VDI_IN_USE', [vdiRef, op]);
    const cbtOp = ['enable_cbt', 'disable_cbt', 'data_destroy', 'list_changed_blocks'].includes(op);
    if (cbtOp && (sr === undefined || !CBT_SR_TYPES.has(sr.type as string) || sr.content_type === 'iso')) return new ApiError('SR_OPERATION_NOT_SUPPORTED', [srRef]);
    const forMetadata = ['data_destroy', 'destroy', 'list_changed_blocks', 'forget', 'update', 'generate_config'];
    if (f.type === 'cbt_metadata' && !forMetadata.includes(op)) return new ApiError('VDI_INCOMPATIBLE_TYPE', [vdiRef, 'cbt_metadata']);
    if ((op === 'mirror' || op === 'set_on_boot') && f.cbt_enabled === true) return new ApiError('VDI_CBT_ENABLED', [vdiRef]);
    if (op === 'data_destroy') {
      if (f.is_a_snapshot !== true) return new ApiError('OPERATION_NOT_ALLOWED', [`VDI is not a snapshot: ${vdiRef}`]);
      if (f.cbt_enabled !== true) return new ApiError('VDI_NO_CBT_METADATA', [vdiRef]);
      if (sr?.is_tools_sr === true) return new ApiError('SR_OPERATION_NOT_SUPPORTED', [srRef]);
    }
    if (op === 'enable_cbt' || op === 'disable_cbt') {
      if (f.is_a_snapshot === true) return new ApiError('OPERATION_NOT_ALLOWED', [`VDI is a snapshot: ${vdiRef}`]);
      if (f.type !== 'user' && f.type !== 'system') return new ApiError('VDI_INCOMPATIBLE_TYPE', [vdiRef, f.type as string]);
      if (f.on_boot === 'reset') return new ApiError('VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION', []);
    }
    return undefined;
  }

  private hasRwAttach(vdiRef: string): boolean {
    return this.db.reverse('VBD', 'VDI', vdiRef).some((v) => {
      const vbd = this.db.get('VBD', v)?.fields;
      return vbd?.currently_attached === true && vbd.mode === 'RW';
    });
  }

  assertVdiOperation(vdiRef: string, op: string): void {
    const error = this.vdiOperationError(vdiRef, op);
    if (error !== undefined) throw error;
  }

  /** VDI.enable_cbt / VDI.disable_cbt: idempotent; enabling starts a new chain (no changes yet). */
  setCbt(vdiRef: string, enabled: boolean): void {
    this.assertVdiOperation(vdiRef, enabled ? 'enable_cbt' : 'disable_cbt');
    if (this.db.field<boolean>('VDI', vdiRef, 'cbt_enabled') === enabled) return;
    if (enabled) this.cbt.enable(vdiRef, this.db.field<number>('VDI', vdiRef, 'virtual_size'));
    else this.cbt.disable(vdiRef);
    this.db.update('VDI', vdiRef, { cbt_enabled: enabled });
  }

  /** VDI.list_changed_blocks: base64 bitmap of the 64 KiB blocks changed from `from` to `to`. */
  listChangedBlocks(from: string, to: string): string {
    this.db.require('VDI', from);
    this.assertVdiOperation(to, 'list_changed_blocks');
    return this.cbt.changed(from, to, this.db.field<number>('VDI', to, 'virtual_size')).toString('base64');
  }

  /**
   * VDI.data_destroy: waits (4 s, as XAPI) for the VDI's VBDs to be destroyed, then drops its
   * data and keeps its CBT log: the VDI becomes type `cbt_metadata`.
   */
  async dataDestroy(vdiRef: string, closed: Promise<void>): Promise<void> {
    this.assertVdiOperation(vdiRef, 'data_destroy');
    if (this.db.field<string>('VDI', vdiRef, 'type') === 'cbt_metadata') return;
    const vbds = () => (this.db.has('VDI', vdiRef) ? this.db.reverse('VBD', 'VDI', vdiRef) : []);
    if (vbds().length > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, DATA_DESTROY_WAIT_MS);
        const off = this.db.onChange(() => {
          if (vbds().length === 0) done();
        });
        void closed.then(done);
        function done() {
          clearTimeout(timer);
          off();
          resolve();
        }
      });
      if (vbds().length > 0) throw new ApiError('VDI_IN_USE', [vdiRef, 'data_destroy']);
    }
    this.db.require('VDI', vdiRef);
    const used = this.db.field<number>('VDI', vdiRef, 'physical_utilisation');
    this.disks.delete(vdiRef);
    this.db.update('VDI', vdiRef, { type: 'cbt_metadata', physical_utilisation: 0 });
    this.adjustSr(this.db.field<string>('VDI', vdiRef, 'SR'), -used);
  }

  /**
   * VDI.resize (a detached VDI) and VDI.resize_online (attached): grows the disk, the new
   * bytes zeros; shrinking is refused as the SM backend refuses it.
   */
  resizeVdi(vdiRef: string, size: number, online: boolean): void {
    this.assertVdiOperation(vdiRef, online ? 'resize_online' : 'resize');
    if (!online && this.db.reverse('VBD', 'VDI', vdiRef).some((v) => this.db.get('VBD', v)?.fields.currently_attached === true)) throw new ApiError('VDI_IN_USE', [vdiRef, 'resize']);
    const current = this.db.field<number>('VDI', vdiRef, 'virtual_size');
    if (!Number.isSafeInteger(size) || size < current) throw new ApiError('SR_BACKEND_FAILURE_79', ['', `VDI Invalid size [opterr=shrinking from ${current} to ${size} is not supported]`, '']);
    if (size === current) return;
    this.disks.set(vdiRef, new GrownDisk(this.readableContent(vdiRef), size));
    this.cbt.resize(vdiRef, size);
    this.db.update('VDI', vdiRef, { virtual_size: size });
  }

  /** The VDI's content for a reader (NBD, exports): refused for cbt_metadata, as XAPI does. */
  readableContent(vdiRef: string): SimDisk {
    const f = this.db.require('VDI', vdiRef).fields;
    if (f.type === 'cbt_metadata') throw new ApiError('VDI_INCOMPATIBLE_TYPE', [vdiRef, 'cbt_metadata']);
    return this.disks.get(vdiRef) ?? new ZeroDisk(f.virtual_size as number);
  }

  /** A guest (or an import) wrote [offset, offset + length) of the VDI: CBT records it. */
  noteWrite(vdiRef: string, offset: number, length: number): void {
    if (this.db.get('VDI', vdiRef)?.fields.cbt_enabled === true) this.cbt.noteWrite(vdiRef, offset, length);
  }

  /**
   * Guest writes between two backups: rewrites `percent` % of the 64 KiB blocks of each
   * disk of the VM (not of its snapshots) with new deterministic bytes; CBT records them.
   * `scattered` (the default) picks the blocks anywhere; `clustered` in 1 MiB-aligned runs of
   * 16 contiguous blocks, as a guest's writes fall. The same pool, VM and sequence of calls
   * always write the same blocks and bytes. Returns, per VDI ref, the blocks written.
   */
  churn(vmRef: string, percent: number, pattern: ChurnPattern = 'scattered'): Map<string, number[]> {
    this.db.require('VM', vmRef);
    const vm = this.db.record('VM', vmRef);
    if (vm.is_a_snapshot === true || vm.is_control_domain === true) throw new ApiError('OPERATION_NOT_ALLOWED', ['guest writes need a plain VM']);
    if (!(percent >= 0 && percent <= 100)) throw new RangeError(`percent must be within 0..100, not ${percent}`);
    if (pattern !== 'scattered' && pattern !== 'clustered') throw new RangeError(`pattern must be scattered or clustered, not ${JSON.stringify(pattern)}`);
    const written = new Map<string, number[]>();
    for (const vbd of vm.VBDs as string[]) {
      const b = this.db.require('VBD', vbd).fields;
      if (b.type !== 'Disk' || b.empty === true || b.VDI === NULL_REF) continue;
      const vdi = b.VDI as string;
      const content = this.disks.get(vdi);
      if (content === undefined || this.db.field<string>('VDI', vdi, 'type') === 'cbt_metadata') continue;
      const uuid = this.db.field<string>('VDI', vdi, 'uuid');
      const round = (this.writeRounds.get(vdi) ?? 0) + 1;
      this.writeRounds.set(vdi, round);
      const total = Math.ceil(content.size / WRITE_BLOCK);
      const seed = `${this.spec.seed}/churn/${uuid}/${round}`;
      const blocks = pattern === 'clustered' ? pickRuns(total, (total * percent) / 100, CLUSTER_BLOCKS, `${seed}/clustered`) : pickBlocks(total, (total * percent) / 100, seed);
      this.disks.set(vdi, WrittenDisk.write(content, `${this.spec.seed}/${uuid}`, blocks, round));
      for (const block of blocks) this.noteWrite(vdi, block * WRITE_BLOCK, WRITE_BLOCK);
      this.refreshVdiUsage(vdi);
      written.set(vdi, blocks);
    }
    return written;
  }

  /** VDI.clone: a new VDI with the same content (not a snapshot; CBT off). */
  cloneVdi(vdiRef: string): string {
    this.assertVdiOperation(vdiRef, 'clone');
    return this.duplicateVdi(vdiRef, this.db.field<string>('VDI', vdiRef, 'SR'));
  }

  /** VDI.copy: a full copy of the VDI into `srRef`. */
  copyVdi(vdiRef: string, srRef: string): string {
    this.assertVdiOperation(vdiRef, 'copy');
    this.db.require('SR', srRef);
    return this.duplicateVdi(vdiRef, srRef);
  }

  /** A new VDI in `srRef` with the VDI's fields and bytes at this instant, plus `extra`. */
  private duplicateVdi(vdiRef: string, srRef: string, extra: Record<string, unknown> = {}): string {
    const src = this.db.record('VDI', vdiRef);
    const content = this.readableContent(vdiRef);
    this.assertSrSpace(srRef, content.allocated);
    const uuid = this.ids.next('VDI');
    const ref = this.create('VDI', uuid, {
      name_label: src.name_label,
      name_description: src.name_description,
      SR: srRef,
      virtual_size: src.virtual_size,
      physical_utilisation: content.allocated,
      type: src.type,
      sharable: src.sharable,
      read_only: false,
      other_config: src.other_config,
      xenstore_data: src.xenstore_data,
      on_boot: src.on_boot,
      allow_caching: src.allow_caching,
      location: uuid,
      sm_config: { vdi_type: 'vhd' },
      ...extra,
    });
    this.disks.set(ref, content instanceof MemoryDisk ? content.snapshot() : content);
    this.adjustSr(srRef, content.allocated);
    return ref;
  }

  /** network.add_purpose: `nbd` and `insecure_nbd` exclude each other across the pool. */
  addNetworkPurpose(networkRef: string, value: string): void {
    const current = this.db.require('network', networkRef).fields.purpose as string[];
    if (value !== 'nbd' && value !== 'insecure_nbd') throw new ApiError('ENUM_INVALID', ['network_purpose', value]);
    if (current.includes(value)) return;
    const conflicting = value === 'nbd' ? 'insecure_nbd' : 'nbd';
    if (this.db.all('network').some((n) => (n.fields.purpose as string[]).includes(conflicting))) {
      throw new ApiError('NETWORK_INCOMPATIBLE_PURPOSES', [value, conflicting]);
    }
    this.db.update('network', networkRef, { purpose: [...current, value] });
  }

  /** A read-only VBD of the host's control domain, attached: how xapi-nbd serves a VDI. */
  attachToControlDomain(vdiRef: string, hostRef: string): string {
    const dom0 = this.db.field<string>('host', hostRef, 'control_domain');
    const used = new Set(this.db.reverse('VBD', 'VM', dom0).map((v) => this.db.field<string>('VBD', v, 'userdevice')));
    let n = 0;
    while (used.has(String(n))) n++;
    return this.create('VBD', this.ids.next('VBD'), {
      VM: dom0,
      VDI: vdiRef,
      device: `xvd${String.fromCharCode(97 + (n % 26))}`,
      userdevice: String(n),
      bootable: false,
      mode: 'RO',
      type: 'Disk',
      unpluggable: true,
      empty: false,
      currently_attached: true,
      other_config: { 'xapi-nbd': 'true' },
    });
  }

  // --- VBDs (xapi_vbd.ml, xapi_vbd_helpers.ml, xapi_vm_helpers.ml) -------------------------

  /** The `device` and `userdevice` strings of a VM's VBDs: the devices it already uses. */
  private usedVbdDevices(vmRef: string): string[] {
    return this.db.reverse('VBD', 'VM', vmRef).flatMap((v) => {
      const f = this.db.require('VBD', v).fields;
      return [f.device as string, f.userdevice as string];
    });
  }

  /** Whether the VM runs (or will run) with a device model: HVM. */
  private isHvm(vmRef: string): boolean {
    return this.db.field<string>('VM', vmRef, 'domain_type') === 'hvm';
  }

  /** VM.get_allowed_VBD_devices: free disk numbers, lowest first ("1", "2", …). */
  allowedVbdDevices(vmRef: string): string[] {
    const vm = this.db.require('VM', vmRef).fields;
    return allowedVbdDevices({ hvm: this.isHvm(vmRef), controlDomain: vm.is_control_domain === true, used: this.usedVbdDevices(vmRef) });
  }

  /**
   * VBD.create from a constructor record (fields checked by the caller), as xapi_vbd.ml
   * `create`: the VBD is created unplugged (device '') unless the VM is suspended; XAPI
   * does not refuse a running or halted VM here (VBD.plug does what a running VM needs).
   * `userdevice` "autodetect" takes the first free device.
   */
  createVbd(r: VbdConstructor): string {
    const vm = this.db.require('VM', r.VM).fields;
    const suspended = vm.power_state === 'Suspended';
    if (!r.empty) {
      const type = this.db.require('VDI', r.VDI).fields.type as string;
      if (!VBD_VDI_TYPES.has(type)) throw new ApiError('VDI_INCOMPATIBLE_TYPE', [r.VDI, type]);
    }
    if (r.type === 'CD' && r.mode !== 'RO') throw new ApiError('VBD_CDS_MUST_BE_READONLY', []);
    if (r.type !== 'CD' && r.empty) throw new ApiError('VBD_NOT_REMOVABLE_MEDIA', ['in constructor']);
    if (r.mode === 'RW' && this.db.field<boolean>('VDI', r.VDI, 'read_only')) throw new ApiError('VDI_READONLY', [r.VDI]);
    const migrating = Object.entries(vm.current_operations as Record<string, string>).find(([, op]) => op === 'migrate_send' || op === 'pool_migrate');
    if (migrating !== undefined) throw new ApiError('OTHER_OPERATION_IN_PROGRESS', ['VM', r.VM, migrating[1], migrating[0]]);

    const used = this.usedVbdDevices(r.VM);
    let possible: string[];
    if (r.type === 'Floppy') {
      if (!this.isHvm(r.VM)) throw new ApiError('NOT_IMPLEMENTED', ["VBD of type 'floppy' is not supported on PV domain"]);
      const taken = new Set(used.flatMap(possibleDevices));
      possible = ['fda', 'fdb'].filter((d) => !possibleDevices(d).some((k) => taken.has(k)));
    } else {
      possible = this.allowedVbdDevices(r.VM);
    }
    if (!validDevice(r.userdevice)) throw new ApiError('INVALID_DEVICE', [r.userdevice]);
    let userdevice = r.userdevice;
    if (userdevice === 'autodetect') {
      if (possible.length === 0) throw new ApiError('INVALID_DEVICE', [userdevice]);
      userdevice = possible[0]!;
    }
    const taken = new Set(used.flatMap(possibleDevices));
    if (possibleDevices(userdevice).some((d) => taken.has(d))) throw new ApiError('DEVICE_ALREADY_EXISTS', [userdevice]);

    const otherConfig = { ...r.other_config };
    if (!r.empty) {
      // The SM driver may name the VBD backend for its VDIs (Xapi_globs.vbd_backend_key).
      const kind = this.db.field<Record<string, string>>('VDI', r.VDI, 'sm_config')['backend-kind'];
      if (kind !== undefined) otherConfig['backend-kind'] = kind;
    }
    return this.create('VBD', this.ids.next('VBD'), {
      VM: r.VM,
      VDI: r.VDI,
      device: suspended ? r.device : '',
      userdevice,
      bootable: r.bootable,
      mode: r.mode,
      type: r.type,
      unpluggable: r.unpluggable,
      empty: r.empty,
      other_config: otherConfig,
      currently_attached: suspended ? r.currently_attached : false,
      qos_algorithm_type: r.qos_algorithm_type,
      qos_algorithm_params: r.qos_algorithm_params,
      qos_supported_algorithms: [],
    });
  }

  /**
   * The error XAPI raises for a VBD `plug`, `unplug` or `unplug_force` (the checks of
   * xapi_vbd_helpers.ml `valid_operations` these operations meet, in its order), or undefined.
   */
  vbdOperationError(vbdRef: string, op: 'plug' | 'unplug' | 'unplug_force'): ApiError | undefined {
    const vbd = this.db.require('VBD', vbdRef).fields;
    const vmRef = vbd.VM as string;
    const vm = this.db.require('VM', vmRef).fields;
    const power = vm.power_state as string;
    const plugged = vbd.currently_attached === true;
    if (op !== 'plug' && vbd.unpluggable !== true) return new ApiError('VBD_NOT_UNPLUGGABLE', [vbdRef]);
    if (power === 'Running') {
      if (op === 'plug' && plugged) return new ApiError('DEVICE_ALREADY_ATTACHED', [vbdRef]);
      if (op !== 'plug' && !plugged) return new ApiError('DEVICE_ALREADY_DETACHED', [vbdRef]);
    } else {
      return new ApiError('VM_BAD_POWER_STATE', [vmRef, 'running', lc(power)]);
    }
    if (op !== 'unplug_force') {
      const busy = Object.values(vm.current_operations as Record<string, string>).find((o) => ['clean_shutdown', 'hard_shutdown', 'suspend', 'pause'].includes(o));
      if (busy !== undefined) return new ApiError('OPERATION_NOT_ALLOWED', [`Current operation on VM:${vmRef} is ${busy}`]);
    }
    if (this.isHvm(vmRef)) {
      const gm = this.db.get('VM_guest_metrics', vm.guest_metrics as string)?.fields;
      const hotplug = gm?.can_use_hotplug_vbd;
      if (hotplug === 'no') return new ApiError('OPERATION_NOT_ALLOWED', ['VM states it does not support VBD hotplug.']);
      const drivers = gm !== undefined && (gm.PV_drivers_detected === true || (gm.PV_drivers_version as Record<string, string>).major !== undefined);
      if (hotplug !== 'yes' && !drivers) return new ApiError('VM_MISSING_PV_DRIVERS', [vmRef]);
      if (vbd.type === 'CD') return new ApiError('OPERATION_NOT_ALLOWED', ['HVM CDROMs cannot be hotplugged/unplugged, only inserted or ejected']);
    }
    if (op === 'plug' && vbd.empty !== true && !plugged) {
      const vdiRef = vbd.VDI as string;
      const vdi = this.db.require('VDI', vdiRef).fields;
      if (vdi.managed !== true) return new ApiError('VDI_NOT_MANAGED', [vbdRef]);
      const vdiOp = Object.entries(vdi.current_operations as Record<string, string>).find(([, o]) => o !== 'mirror' && o !== 'copy');
      if (vdiOp !== undefined) return new ApiError('OTHER_OPERATION_IN_PROGRESS', ['VDI', vdiRef, vdiOp[1], vdiOp[0]]);
      const others = this.db.reverse('VBD', 'VDI', vdiRef).filter((v) => {
        if (v === vbdRef) return false;
        const o = this.db.get('VBD', v)?.fields;
        if (o === undefined || o.currently_attached !== true) return false;
        const owner = this.db.get('VM', o.VM as string)?.fields;
        return owner !== undefined && owner.power_state !== 'Suspended' && !isSystemDomain(owner);
      });
      const needWrite = vbd.mode === 'RW';
      const someoneWrites = others.some((v) => this.db.field<string>('VBD', v, 'mode') === 'RW');
      if (vdi.sharable !== true && !isSystemDomain(vm) && (someoneWrites || (needWrite && others.length > 0))) return new ApiError('VDI_IN_USE', [vdiRef]);
      if (needWrite && vdi.read_only === true) return new ApiError('VDI_READONLY', [vdiRef]);
    }
    return undefined;
  }

  /**
   * VBD.plug: hotplugs the disk into the running VM (`currently_attached`, and the `device`
   * the guest sees). An HVM guest's disks must be read-write (CA-83260).
   */
  plugVbd(vbdRef: string): void {
    const error = this.vbdOperationError(vbdRef, 'plug');
    if (error !== undefined) throw error;
    const vbd = this.db.require('VBD', vbdRef).fields;
    const vm = this.db.require('VM', vbd.VM as string).fields;
    if (vm.is_control_domain !== true && this.isHvm(vbd.VM as string) && vbd.type !== 'CD' && vbd.mode === 'RO') {
      throw new ApiError('DISK_VBD_MUST_BE_READWRITE_FOR_HVM', [vbdRef]);
    }
    const disk = possibleDevices(vbd.userdevice as string).map((k) => Number(k.split(':')[1]))[0];
    const device = vbd.device !== '' || disk === undefined ? (vbd.device as string) : xenDeviceName(disk);
    this.db.update('VBD', vbdRef, { currently_attached: vbd.empty !== true, device });
  }

  /** VBD.unplug / VBD.unplug_force: detaches the disk from the running VM. */
  unplugVbd(vbdRef: string, op: 'unplug' | 'unplug_force'): void {
    const error = this.vbdOperationError(vbdRef, op);
    if (error !== undefined) throw error;
    this.db.update('VBD', vbdRef, { currently_attached: false });
  }

  /** VBD.destroy: refused while attached (unplug first); the VDI stays. */
  destroyVbd(vbdRef: string): void {
    const vbd = this.db.require('VBD', vbdRef).fields;
    if (vbd.currently_attached === true) {
      const vmUuid = this.db.get('VM', vbd.VM as string)?.fields.uuid ?? vbd.VM;
      throw new ApiError('OPERATION_NOT_ALLOWED', [`VBD '${vbd.uuid as string}' still attached to '${String(vmUuid)}'`]);
    }
    this.db.destroy('VBD', vbdRef);
  }

  /** Whether NBD clients must use TLS (a network has purpose `nbd`), may not, or are refused. */
  nbdMode(): 'tls' | 'plain' | 'off' {
    const purposes = this.db.all('network').flatMap((n) => n.fields.purpose as string[]);
    if (purposes.includes('nbd')) return 'tls';
    if (purposes.includes('insecure_nbd')) return 'plain';
    return 'off';
  }

  /**
   * VDI.pool_migrate (storage migration of a disk attached to a running VM): refused for
   * cbt_metadata (VDI_INCOMPATIBLE_TYPE) and CBT-enabled VDIs (VDI_CBT_ENABLED), as
   * xapi_vm_migrate.ml does. The simulator moves the VDI in place and returns its ref.
   */
  poolMigrateVdi(vdiRef: string, srRef: string): string {
    const f = this.db.require('VDI', vdiRef).fields;
    this.db.require('SR', srRef);
    if (f.type === 'cbt_metadata') throw new ApiError('VDI_INCOMPATIBLE_TYPE', [vdiRef, 'cbt_metadata']);
    if (f.cbt_enabled === true) throw new ApiError('VDI_CBT_ENABLED', [vdiRef]);
    const attached = this.db.reverse('VBD', 'VDI', vdiRef).some((v) => this.db.get('VBD', v)?.fields.currently_attached === true);
    if (!attached) throw new ApiError('VDI_NEEDS_VM_FOR_MIGRATE', [vdiRef]);
    const used = f.physical_utilisation as number;
    if (srRef !== f.SR) {
      this.assertSrSpace(srRef, used);
      this.adjustSr(f.SR as string, -used);
      this.adjustSr(srRef, used);
      this.db.update('VDI', vdiRef, { SR: srRef });
    }
    return vdiRef;
  }

  // --- VM operations ----------------------------------------------------------------------

  /**
   * VM.snapshot (xapi_vm_clone.ml): VDI snapshots of every disk not in `ignoreVdis`, then a VM
   * record that is a halted template with `snapshot_of` set, the VM's other_config and tags
   * (not its blocked_operations), copies of its VBDs (owning the new disks) and VIFs.
   */
  snapshotVm(vmRef: string, newName: string, ignoreVdis: string[], opts: { time?: Date; skipChecks?: boolean; srFull?: boolean } = {}): string {
    if (opts.skipChecks !== true) this.assertVmOperation(vmRef, 'snapshot');
    const vm = this.db.record('VM', vmRef);
    const time = opts.time ?? this.clock();
    const vbds = (vm.VBDs as string[]).filter((v) => !ignoreVdis.includes(this.db.field<string>('VBD', v, 'VDI')));
    const cloned: { vbd: string; vdi: string }[] = [];
    try {
      for (const vbd of vbds) {
        const r = this.db.require('VBD', vbd).fields;
        if (r.empty === true || r.VDI === NULL_REF) cloned.push({ vbd, vdi: NULL_REF });
        else if (r.type === 'CD') cloned.push({ vbd, vdi: r.VDI as string });
        else {
          if (opts.srFull === true) {
            const vdi = this.db.require('VDI', r.VDI as string).fields;
            const { size } = this.srUsage(vdi.SR as string);
            throw new ApiError('SR_FULL', [String(vdi.virtual_size), String(size)]);
          }
          cloned.push({ vbd, vdi: this.snapshotVdi(r.VDI as string, { time }) });
        }
      }
    } catch (error) {
      for (const c of cloned) {
        const t = this.db.get('VBD', c.vbd)?.fields.type;
        if (t === 'Disk' && c.vdi !== NULL_REF && this.db.has('VDI', c.vdi)) this.destroyVdi(c.vdi);
      }
      throw error;
    }
    const otherConfig = { ...(vm.other_config as Record<string, string>) };
    delete otherConfig.default_template;
    delete otherConfig.xensource_internal;
    if (vm.is_a_template === true && otherConfig.base_template_name === undefined) otherConfig.base_template_name = vm.name_label as string;
    let guestMetrics = NULL_REF;
    if (vm.guest_metrics !== NULL_REF && this.db.has('VM_guest_metrics', vm.guest_metrics as string)) {
      const gm = this.db.record('VM_guest_metrics', vm.guest_metrics as string);
      const gmUuid = this.ids.next('VM_guest_metrics');
      guestMetrics = this.create('VM_guest_metrics', gmUuid, { ...gm, uuid: gmUuid, live: false });
    }
    const copied: Record<string, unknown> = {};
    for (const k of [
      'name_description', 'user_version', 'affinity', 'memory_overhead', 'memory_static_max', 'memory_dynamic_max',
      'memory_dynamic_min', 'memory_static_min', 'VCPUs_params', 'VCPUs_max', 'VCPUs_at_startup', 'actions_after_softreboot',
      'actions_after_shutdown', 'actions_after_reboot', 'actions_after_crash', 'HVM_boot_policy', 'HVM_boot_params',
      'HVM_shadow_multiplier', 'platform', 'PV_kernel', 'PV_ramdisk', 'PV_args', 'PV_bootloader', 'PV_bootloader_args',
      'PV_legacy_args', 'PCI_bus', 'last_boot_CPU_flags', 'is_control_domain', 'last_booted_record', 'recommendations',
      'xenstore_data', 'ha_restart_priority', 'tags', 'bios_strings', 'generation_id', 'hardware_platform_version',
      'has_vendor_device', 'reference_label', 'domain_type', 'NVRAM',
    ]) {
      copied[k] = vm[k];
    }
    const uuid = this.ids.next('VM');
    const snap = this.create('VM', uuid, {
      ...copied,
      name_label: newName,
      power_state: 'Halted',
      is_a_template: true,
      is_default_template: false,
      is_a_snapshot: true,
      snapshot_of: vmRef,
      snapshot_time: time,
      snapshot_info: { 'power-state-at-snapshot': vm.power_state as string, 'disk-snapshot-type': 'crash_consistent' },
      snapshot_metadata: '',
      parent: vm.parent,
      other_config: otherConfig,
      guest_metrics: guestMetrics,
      domid: -1,
    });
    this.db.update('VM', vmRef, { parent: snap });
    for (const { vbd, vdi } of cloned) {
      const r = this.db.require('VBD', vbd).fields;
      const otherConfigVbd = { ...(r.other_config as Record<string, string>) };
      if (r.type === 'Disk' && otherConfigVbd.owner === undefined) otherConfigVbd.owner = '';
      this.create('VBD', this.ids.next('VBD'), {
        VM: snap,
        VDI: vdi,
        device: r.device,
        userdevice: r.userdevice,
        bootable: r.bootable,
        mode: r.mode,
        type: r.type,
        unpluggable: r.unpluggable,
        empty: vdi === NULL_REF,
        other_config: otherConfigVbd,
        qos_algorithm_type: r.qos_algorithm_type,
        qos_algorithm_params: r.qos_algorithm_params,
        qos_supported_algorithms: r.qos_supported_algorithms,
        currently_attached: false,
      });
    }
    for (const vif of vm.VIFs as string[]) {
      const r = this.db.require('VIF', vif).fields;
      this.create('VIF', this.ids.next('VIF'), {
        device: r.device,
        network: r.network,
        VM: snap,
        MAC: r.MAC,
        MTU: r.MTU,
        other_config: r.other_config,
        MAC_autogenerated: r.MAC_autogenerated,
        locking_mode: r.locking_mode,
        qos_algorithm_type: r.qos_algorithm_type,
        qos_algorithm_params: r.qos_algorithm_params,
        qos_supported_algorithms: r.qos_supported_algorithms,
        currently_attached: false,
      });
    }
    return snap;
  }

  /** VM.destroy: the record, its VBDs, VIFs and guest metrics; never its disks. */
  destroyVm(vmRef: string): void {
    this.assertVmOperation(vmRef, 'destroy');
    const vm = this.db.record('VM', vmRef);
    for (const v of vm.VBDs as string[]) this.db.destroy('VBD', v);
    for (const v of vm.VIFs as string[]) this.db.destroy('VIF', v);
    if (vm.guest_metrics !== NULL_REF && this.db.has('VM_guest_metrics', vm.guest_metrics as string)) {
      this.db.destroy('VM_guest_metrics', vm.guest_metrics as string);
    }
    // Children (the VM after its latest snapshot) now descend from this VM's parent.
    for (const child of vm.children as string[]) this.db.update('VM', child, { parent: vm.parent });
    this.db.destroy('VM', vmRef);
  }

  private setAttached(vmRef: string, attached: boolean): void {
    const vm = this.db.record('VM', vmRef);
    for (const v of vm.VBDs as string[]) {
      const empty = this.db.field<boolean>('VBD', v, 'empty');
      this.db.update('VBD', v, { currently_attached: attached && !empty });
    }
    for (const v of vm.VIFs as string[]) this.db.update('VIF', v, { currently_attached: attached });
    const gm = vm.guest_metrics as string;
    if (gm !== NULL_REF && this.db.has('VM_guest_metrics', gm)) this.db.update('VM_guest_metrics', gm, { live: attached, last_updated: this.clock() });
  }

  startVm(vmRef: string, paused: boolean, host?: string, op = 'start'): void {
    this.assertVmOperation(vmRef, op);
    const affinity = this.db.field<string>('VM', vmRef, 'affinity');
    const on = host ?? (this.db.has('host', affinity) ? affinity : this.masterRef);
    const memory = this.db.field<number>('VM', vmRef, 'memory_dynamic_max');
    this.db.update('VM', vmRef, { power_state: paused ? 'Paused' : 'Running', resident_on: on, domid: this.nextDomid++, memory_target: memory });
    this.setAttached(vmRef, true);
  }

  shutdownVm(vmRef: string, op: 'clean_shutdown' | 'hard_shutdown'): void {
    this.assertVmOperation(vmRef, op);
    this.db.update('VM', vmRef, { power_state: 'Halted', resident_on: NULL_REF, domid: -1, memory_target: 0 });
    this.setAttached(vmRef, false);
  }

  setPowerState(vmRef: string, op: 'pause' | 'unpause' | 'clean_reboot' | 'hard_reboot'): void {
    this.assertVmOperation(vmRef, op);
    if (op === 'pause') this.db.update('VM', vmRef, { power_state: 'Paused' });
    else if (op === 'unpause') this.db.update('VM', vmRef, { power_state: 'Running' });
    else this.db.update('VM', vmRef, { domid: this.nextDomid++ });
  }

  // --- sessions ---------------------------------------------------------------------------

  checkCredentials(user: string, password: string): boolean {
    return user === this.credentials.user && password === this.credentials.password;
  }

  createSession(user: string, originator: string, hostRef: string, pool = false): string {
    const ref = randomRef();
    this.db.create('session', ref, {
      uuid: this.ids.next('session'),
      this_host: hostRef,
      last_active: this.clock(),
      validation_time: this.clock(),
      pool,
      auth_user_name: user,
      originator,
      is_local_superuser: true,
    });
    this.sessionStats.created += 1;
    return ref;
  }

  destroySession(ref: string, reason: 'logout' | 'invalidated'): void {
    if (!this.db.has('session', ref)) return;
    this.db.destroy('session', ref);
    if (reason === 'logout') this.sessionStats.loggedOut += 1;
    else this.sessionStats.invalidated += 1;
  }

  liveSessions(): SessionInfo[] {
    return this.db.all('session').map((r) => ({
      ref: r.ref,
      user: r.fields.auth_user_name as string,
      originator: r.fields.originator as string,
      host: r.fields.this_host as string,
    }));
  }

  /** Drops every session, as a toolstack restart does: clients get SESSION_INVALID. */
  invalidateAllSessions(): number {
    const refs = this.db.all('session').map((r) => r.ref);
    for (const ref of refs) this.destroySession(ref, 'invalidated');
    return refs.length;
  }

  // --- tasks ------------------------------------------------------------------------------

  createTask(label: string, description: string): string {
    const uuid = this.ids.next('task');
    const ref = this.ids.ref(uuid);
    this.db.create('task', ref, {
      uuid,
      name_label: label,
      name_description: description,
      created: this.clock(),
      status: 'pending',
      resident_on: this.masterRef,
      progress: 0,
    });
    return ref;
  }

  isTaskPending(ref: string): boolean {
    const s = this.db.get('task', ref)?.fields.status;
    return s === 'pending' || s === 'cancelling';
  }

  setTaskProgress(ref: string, progress: number): void {
    if (!this.db.has('task', ref) || !this.isTaskPending(ref)) return;
    const rounded = Math.min(1, Math.max(0, Math.round(progress * 100) / 100));
    if (this.db.field<number>('task', ref, 'progress') !== rounded) this.db.update('task', ref, { progress: rounded });
  }

  /** Marks the task successful with `result`, an XML-RPC `<value>` string ('' for none). */
  completeTask(ref: string, result: string): void {
    if (!this.db.has('task', ref) || !this.isTaskPending(ref)) return;
    if (this.db.field<string>('task', ref, 'status') === 'cancelling') {
      this.cancelledTask(ref);
      return;
    }
    this.db.update('task', ref, { status: 'success', progress: 1, result, finished: this.clock(), current_operations: {} });
  }

  failTask(ref: string, error: ApiError): void {
    if (!this.db.has('task', ref) || !this.isTaskPending(ref)) return;
    if (error.code === 'TASK_CANCELLED') {
      this.cancelledTask(ref);
      return;
    }
    this.db.update('task', ref, { status: 'failure', error_info: error.description, finished: this.clock(), current_operations: {} });
  }

  cancelledTask(ref: string): void {
    if (!this.db.has('task', ref)) return;
    this.db.update('task', ref, { status: 'cancelled', error_info: ['TASK_CANCELLED', ref], finished: this.clock(), current_operations: {} });
  }

  /** task.cancel: a pending task goes to `cancelling`; the operation notices and stops. */
  requestCancel(ref: string): void {
    this.db.require('task', ref);
    if (this.db.field<string>('task', ref, 'status') === 'pending') this.db.update('task', ref, { status: 'cancelling' });
  }

  isCancelling(ref: string | undefined): boolean {
    return ref !== undefined && this.db.get('task', ref)?.fields.status === 'cancelling';
  }

  // --- lookups ----------------------------------------------------------------------------

  hostByAddress(address: string): HostInfo | undefined {
    return this.hosts.find((h) => h.address === address);
  }

  /**
   * The VMs a VDI belongs to, for the `vm` fault filter: the VMs of its VBDs and, for a VDI
   * snapshot no VBD holds (one `VDI.snapshot` made), those of the disk it is a snapshot of.
   */
  vmsOfVdi(vdiRef: string): string[] {
    const vms = new Set<string>();
    for (let vdi = vdiRef, seen = new Set<string>(); vdi !== NULL_REF && !seen.has(vdi); ) {
      seen.add(vdi);
      for (const vbd of this.db.reverse('VBD', 'VDI', vdi)) vms.add(this.db.field<string>('VBD', vbd, 'VM'));
      vdi = (this.db.get('VDI', vdi)?.fields.snapshot_of as string | undefined) ?? NULL_REF;
    }
    return [...vms];
  }

  /** VM matching a name or uuid (or whose snapshot_of does). */
  vmMatches(vmRef: string, filter: string): boolean {
    const row = this.db.get('VM', vmRef);
    if (row === undefined) return false;
    if (row.fields.name_label === filter || row.fields.uuid === filter) return true;
    const of = row.fields.snapshot_of as string;
    return of !== NULL_REF && of !== vmRef && this.vmMatches(of, filter);
  }

  vdiMatches(vdiRef: string, filter: string): boolean {
    const row = this.db.get('VDI', vdiRef);
    if (row === undefined) return false;
    if (row.fields.name_label === filter || row.fields.uuid === filter) return true;
    const of = row.fields.snapshot_of as string;
    return of !== NULL_REF && of !== vdiRef && this.vdiMatches(of, filter);
  }

  /** The host that can read this SR from its local storage, or undefined for a shared SR. */
  hostOfSr(srRef: string): string | undefined {
    return this.srHost.get(srRef);
  }
}
