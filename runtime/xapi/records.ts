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
  /** Changed-block tracking is on (snapshots inherit it). */
  cbt_enabled: boolean;
  other_config: Record<string, string>;
}

/**
 * Where a VDI can be read over NBD (`VDI.get_nbd_info`): one per host that can reach its SR.
 * `exportname` carries the session (`/<vdi uuid>?session_id=<ref>`): it is a secret, and
 * the session must stay logged in while connecting. `cert` is the host's certificate (PEM),
 * `subject` the host name it is issued to.
 */
export interface NbdInfo {
  address: string;
  port: number;
  cert: string;
  exportname: string;
  subject: string;
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
  /** `nbd` (NBD over TLS) or `insecure_nbd` (plain NBD) when the pool serves NBD on it. */
  purpose: string[];
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
