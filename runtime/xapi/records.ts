/**
 * The XAPI records vmbackup reads, typed with the fields it uses (xapi.md §3). Records come
 * from the `xen-api` client, which adds `$ref` (the OpaqueRef) and `$type`.
 */
export type Ref = string;
export const NULL_REF = 'OpaqueRef:NULL';

export type PowerState = 'Halted' | 'Paused' | 'Running' | 'Suspended';

export interface VmRecord {
  $ref: Ref;
  uuid: string;
  name_label: string;
  name_description: string;
  power_state: PowerState;
  is_a_template: boolean;
  is_a_snapshot: boolean;
  is_control_domain: boolean;
  snapshot_of: Ref;
  snapshots: Ref[];
  snapshot_time?: string;
  VBDs: Ref[];
  VIFs: Ref[];
  memory_dynamic_max: string | number;
  VCPUs_max: string | number;
  VCPUs_at_startup: string | number;
  other_config: Record<string, string>;
  blocked_operations: Record<string, string>;
  current_operations: Record<string, string>;
  guest_metrics: Ref;
  resident_on: Ref;
  tags: string[];
}

export interface VbdRecord {
  $ref: Ref;
  uuid: string;
  VM: Ref;
  VDI: Ref;
  device: string;
  userdevice: string;
  bootable: boolean;
  mode: 'RO' | 'RW';
  type: 'CD' | 'Disk' | 'Floppy';
  unpluggable: boolean;
  empty: boolean;
  currently_attached: boolean;
}

export interface VdiRecord {
  $ref: Ref;
  uuid: string;
  name_label: string;
  name_description: string;
  virtual_size: string | number;
  physical_utilisation: string | number;
  type: string;
  sharable: boolean;
  read_only: boolean;
  SR: Ref;
  VBDs: Ref[];
  snapshot_of: Ref;
  snapshots: Ref[];
  is_a_snapshot: boolean;
  other_config: Record<string, string>;
}

export interface VifRecord {
  $ref: Ref;
  uuid: string;
  device: string;
  network: Ref;
  MAC: string;
  MTU: string | number;
  other_config: Record<string, string>;
}

export interface NetworkRecord {
  $ref: Ref;
  uuid: string;
  name_label: string;
}

export interface SrRecord {
  $ref: Ref;
  uuid: string;
  name_label: string;
}

export interface HostRecord {
  $ref: Ref;
  uuid: string;
  name_label: string;
  hostname: string;
  address: string;
  enabled: boolean;
}

export interface PoolRecord {
  $ref: Ref;
  uuid: string;
  name_label: string;
  master: Ref;
  other_config: Record<string, string>;
}

export interface GuestMetricsRecord {
  $ref: Ref;
  uuid: string;
  os_version: Record<string, string>;
}

/** Record types by XAPI class name. */
export interface RecordTypes {
  VM: VmRecord;
  VBD: VbdRecord;
  VDI: VdiRecord;
  VIF: VifRecord;
  network: NetworkRecord;
  SR: SrRecord;
  host: HostRecord;
  pool: PoolRecord;
  VM_guest_metrics: GuestMetricsRecord;
}
export type RecordType = keyof RecordTypes;
