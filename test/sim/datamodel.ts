/**
 * The subset of XAPI's data model the simulator serves: classes, their fields (names and wire
 * types as in xapi's `ocaml/idl/datamodel*.ml`), which fields have setters, and which set-valued
 * fields are maintained from the other side of a reference (XAPI's "Set(Ref)" relations:
 * `VM.VBDs` is every VBD whose `VM` points at it).
 *
 * Records always carry every field listed here, so `xen-api` (which derives a record class from
 * the first record it sees of a type) and Python clients see stable shapes.
 */

export const CLASS_NAMES = ['pool', 'host', 'SR', 'VDI', 'VBD', 'VM', 'VIF', 'network', 'VM_guest_metrics', 'task', 'session'] as const;
export type ClassName = (typeof CLASS_NAMES)[number];

export type FieldType = 'string' | 'int' | 'float' | 'bool' | 'datetime' | 'ref' | 'set' | 'map';

export interface FieldDef {
  type: FieldType;
  /** Default value for new records (never shared: cloned on use). */
  def?: unknown;
  /** Has a `set_<field>` (and, for maps/sets, `add_to_`/`remove_from_` or `add_`/`remove_`). */
  rw?: boolean;
  /** Target class of a `ref` field. */
  target?: ClassName;
  /** For a set of refs kept from the other side: the class and field pointing here. */
  reverse?: { cls: ClassName; field: string };
}

const str = (def = '', rw = false): FieldDef => ({ type: 'string', def, rw });
const int = (def = 0, rw = false): FieldDef => ({ type: 'int', def, rw });
const float = (def = 0, rw = false): FieldDef => ({ type: 'float', def, rw });
const bool = (def = false, rw = false): FieldDef => ({ type: 'bool', def, rw });
const date = (): FieldDef => ({ type: 'datetime', def: new Date(0) });
const ref = (target: ClassName, rw = false): FieldDef => ({ type: 'ref', target, rw });
const set = (rw = false): FieldDef => ({ type: 'set', def: [], rw });
const map = (rw = false): FieldDef => ({ type: 'map', def: {}, rw });
const rev = (cls: ClassName, field: string): FieldDef => ({ type: 'set', reverse: { cls, field } });

export interface ClassDef {
  fields: Record<string, FieldDef>;
  /** Listed by system.listMethods with a get_all_records, hence cached and watched by xen-api. */
  listed: boolean;
}

export const DATAMODEL: Record<ClassName, ClassDef> = {
  pool: {
    listed: true,
    fields: {
      uuid: str(),
      name_label: str('', true),
      name_description: str('', true),
      master: ref('host'),
      default_SR: ref('SR', true),
      suspend_image_SR: ref('SR', true),
      crash_dump_SR: ref('SR', true),
      other_config: map(true),
      ha_enabled: bool(),
      ha_configuration: map(),
      tags: set(true),
      gui_config: map(true),
      blobs: map(),
      restrictions: map(),
      cpu_info: map(),
      allowed_operations: set(),
      current_operations: map(),
      wlb_enabled: bool(),
      redo_log_enabled: bool(),
      metadata_VDIs: set(),
    },
  },
  host: {
    listed: true,
    fields: {
      uuid: str(),
      name_label: str('', true),
      name_description: str('', true),
      address: str(),
      hostname: str(),
      enabled: bool(true),
      API_version_major: int(),
      API_version_minor: int(),
      API_version_vendor: str('XenSource'),
      API_version_vendor_implementation: map(),
      software_version: map(),
      other_config: map(true),
      tags: set(true),
      capabilities: set(),
      cpu_configuration: map(),
      cpu_info: map(),
      license_params: map(),
      edition: str('xcp-ng'),
      bios_strings: map(),
      logging: map(true),
      memory_overhead: int(),
      resident_VMs: rev('VM', 'resident_on'),
      control_domain: ref('VM'),
      PBDs: set(),
      PIFs: set(),
      host_CPUs: set(),
      metrics: ref('host'),
      suspend_image_sr: ref('SR', true),
      crash_dump_sr: ref('SR', true),
      external_auth_type: str(),
      external_auth_service_name: str(),
      allowed_operations: set(),
      current_operations: map(),
      sched_policy: str('credit'),
    },
  },
  SR: {
    listed: true,
    fields: {
      uuid: str(),
      name_label: str('', true),
      name_description: str('', true),
      allowed_operations: set(),
      current_operations: map(),
      VDIs: rev('VDI', 'SR'),
      PBDs: set(),
      virtual_allocation: int(),
      physical_utilisation: int(),
      physical_size: int(),
      type: str('lvm'),
      content_type: str('user'),
      shared: bool(false, true),
      other_config: map(true),
      tags: set(true),
      sm_config: map(true),
      blobs: map(),
      local_cache_enabled: bool(),
      introduced_by: ref('SR'),
      clustered: bool(),
      is_tools_sr: bool(),
    },
  },
  VDI: {
    listed: true,
    fields: {
      uuid: str(),
      name_label: str('', true),
      name_description: str('', true),
      allowed_operations: set(),
      current_operations: map(),
      SR: ref('SR'),
      VBDs: rev('VBD', 'VDI'),
      crash_dumps: set(),
      virtual_size: int(),
      physical_utilisation: int(),
      type: str('user'),
      sharable: bool(false, true),
      read_only: bool(false, true),
      other_config: map(true),
      storage_lock: bool(),
      location: str(),
      managed: bool(true),
      missing: bool(),
      parent: ref('VDI'),
      xenstore_data: map(true),
      sm_config: map(true),
      is_a_snapshot: bool(),
      snapshot_of: ref('VDI'),
      snapshots: rev('VDI', 'snapshot_of'),
      snapshot_time: date(),
      tags: set(true),
      allow_caching: bool(false, true),
      on_boot: str('persist', true),
      metadata_of_pool: ref('pool'),
      metadata_latest: bool(),
      is_tools_iso: bool(),
      cbt_enabled: bool(),
    },
  },
  VBD: {
    listed: true,
    fields: {
      uuid: str(),
      allowed_operations: set(),
      current_operations: map(),
      VM: ref('VM'),
      VDI: ref('VDI'),
      device: str(),
      userdevice: str('', true),
      bootable: bool(false, true),
      mode: str('RW', true),
      type: str('Disk', true),
      unpluggable: bool(false, true),
      storage_lock: bool(),
      empty: bool(),
      other_config: map(true),
      currently_attached: bool(),
      status_code: int(),
      status_detail: str(),
      runtime_properties: map(),
      qos_algorithm_type: str('', true),
      qos_algorithm_params: map(true),
      qos_supported_algorithms: set(),
      metrics: ref('VBD'),
    },
  },
  VM: {
    listed: true,
    fields: {
      uuid: str(),
      allowed_operations: set(),
      current_operations: map(),
      name_label: str('', true),
      name_description: str('', true),
      power_state: str('Halted'),
      user_version: int(1, true),
      is_a_template: bool(false, true),
      is_default_template: bool(),
      suspend_VDI: ref('VDI'),
      resident_on: ref('host'),
      scheduled_to_be_resident_on: ref('host'),
      affinity: ref('host', true),
      memory_overhead: int(),
      memory_target: int(),
      memory_static_max: int(),
      memory_dynamic_max: int(),
      memory_dynamic_min: int(),
      memory_static_min: int(),
      VCPUs_params: map(true),
      VCPUs_max: int(1),
      VCPUs_at_startup: int(1),
      actions_after_softreboot: str('soft_reboot'),
      actions_after_shutdown: str('destroy'),
      actions_after_reboot: str('restart'),
      actions_after_crash: str('restart'),
      consoles: set(),
      VIFs: rev('VIF', 'VM'),
      VBDs: rev('VBD', 'VM'),
      VUSBs: set(),
      crash_dumps: set(),
      VTPMs: set(),
      PV_bootloader: str('', true),
      PV_kernel: str('', true),
      PV_ramdisk: str('', true),
      PV_args: str('', true),
      PV_bootloader_args: str('', true),
      PV_legacy_args: str('', true),
      HVM_boot_policy: str('', true),
      HVM_boot_params: map(true),
      HVM_shadow_multiplier: float(1),
      platform: map(true),
      PCI_bus: str(),
      other_config: map(true),
      domid: int(-1),
      domarch: str(),
      last_boot_CPU_flags: map(),
      is_control_domain: bool(),
      metrics: ref('VM'),
      guest_metrics: ref('VM_guest_metrics'),
      last_booted_record: str(),
      recommendations: str('', true),
      xenstore_data: map(true),
      ha_always_run: bool(),
      ha_restart_priority: str(),
      is_a_snapshot: bool(),
      snapshot_of: ref('VM'),
      snapshots: rev('VM', 'snapshot_of'),
      snapshot_time: date(),
      transportable_snapshot_id: str(),
      blobs: map(),
      tags: set(true),
      blocked_operations: map(true),
      snapshot_info: map(),
      snapshot_metadata: str(),
      parent: ref('VM'),
      children: rev('VM', 'parent'),
      bios_strings: map(),
      protection_policy: ref('VM'),
      is_snapshot_from_vmpp: bool(),
      snapshot_schedule: ref('VM'),
      is_vmss_snapshot: bool(),
      appliance: ref('VM'),
      start_delay: int(0, true),
      shutdown_delay: int(0, true),
      order: int(0, true),
      VGPUs: set(),
      attached_PCIs: set(),
      suspend_SR: ref('SR', true),
      version: int(),
      generation_id: str(),
      hardware_platform_version: int(),
      has_vendor_device: bool(),
      requires_reboot: bool(),
      reference_label: str(),
      domain_type: str('hvm'),
      NVRAM: map(),
      pending_guidances: set(),
    },
  },
  VIF: {
    listed: true,
    fields: {
      uuid: str(),
      allowed_operations: set(),
      current_operations: map(),
      device: str(),
      network: ref('network'),
      VM: ref('VM'),
      MAC: str(),
      MTU: int(1500),
      other_config: map(true),
      currently_attached: bool(),
      status_code: int(),
      status_detail: str(),
      runtime_properties: map(),
      qos_algorithm_type: str('', true),
      qos_algorithm_params: map(true),
      qos_supported_algorithms: set(),
      metrics: ref('VIF'),
      MAC_autogenerated: bool(),
      locking_mode: str('network_default', true),
      ipv4_allowed: set(),
      ipv6_allowed: set(),
    },
  },
  network: {
    listed: true,
    fields: {
      uuid: str(),
      name_label: str('', true),
      name_description: str('', true),
      allowed_operations: set(),
      current_operations: map(),
      VIFs: rev('VIF', 'network'),
      PIFs: set(),
      MTU: int(1500, true),
      other_config: map(true),
      bridge: str(),
      managed: bool(true),
      blobs: map(),
      tags: set(true),
      default_locking_mode: str('unlocked'),
      assigned_ips: map(),
      purpose: set(),
    },
  },
  VM_guest_metrics: {
    listed: true,
    fields: {
      uuid: str(),
      os_version: map(),
      PV_drivers_version: map(),
      PV_drivers_up_to_date: bool(),
      memory: map(),
      disks: map(),
      networks: map(),
      other: map(),
      last_updated: date(),
      other_config: map(true),
      live: bool(),
      can_use_hotplug_vbd: str('unspecified'),
      can_use_hotplug_vif: str('unspecified'),
      PV_drivers_detected: bool(),
    },
  },
  task: {
    listed: true,
    fields: {
      uuid: str(),
      name_label: str(),
      name_description: str(),
      allowed_operations: set(),
      current_operations: map(),
      created: date(),
      finished: date(),
      status: str('pending', true),
      resident_on: ref('host'),
      progress: float(0, true),
      type: str(),
      result: str('', true),
      error_info: set(true),
      other_config: map(true),
      subtask_of: ref('task'),
      subtasks: rev('task', 'subtask_of'),
      backtrace: str(),
    },
  },
  // Not listed: xen-api refuses session.* calls through its cache machinery.
  session: {
    listed: false,
    fields: {
      uuid: str(),
      this_host: ref('host'),
      this_user: ref('session'),
      last_active: date(),
      pool: bool(),
      other_config: map(true),
      is_local_superuser: bool(true),
      subject: ref('session'),
      validation_time: date(),
      auth_user_sid: str(),
      auth_user_name: str(),
      rbac_permissions: set(),
      tasks: set(),
      parent: ref('session'),
      originator: str(),
    },
  },
};

/** Default value of a field, freshly allocated. */
export function defaultOf(def: FieldDef): unknown {
  switch (def.type) {
    case 'ref':
      return 'OpaqueRef:NULL';
    case 'set':
      return [];
    case 'map':
      return {};
    case 'datetime':
      return new Date((def.def as Date | undefined)?.getTime() ?? 0);
    default:
      return def.def;
  }
}

/** Case-insensitive lookup of a class name, as XAPI does for event classes. */
export function classByLowerName(name: string): ClassName | undefined {
  const lc = name.toLowerCase();
  return CLASS_NAMES.find((c) => c.toLowerCase() === lc);
}
