import { setTimeout as delay } from 'node:timers/promises';
import type { XmlRpcValue } from '../../runtime/formats/xmlrpc.js';
import { CLASS_NAMES, DATAMODEL, type ClassName, type FieldDef } from './datamodel.js';
import { ApiError, toApiError } from './errors.js';
import { eventFrom, eventInject } from './events.js';
import type { FaultAction, FaultSubject, Faults } from './faults.js';
import { NULL_REF } from './ids.js';
import type { HostInfo, SimState, VbdConstructor } from './state.js';
import { compileWhere } from './where.js';
import { toXmlValue, wireField, wireRecord } from './wire.js';

/**
 * XAPI's RPC surface as the simulator serves it: method registry, dispatch and the XAPI rules
 * around it (from ocaml/idl/ocaml_backend/gen_server.ml and server_helpers.ml):
 *
 * - names are `Class.method` or `Class_method`; `Async.` runs the call as a task;
 * - arity is checked first: `MESSAGE_PARAMETER_COUNT_MISMATCH [method, expected, received]`,
 *   counts without the session; methods with optional parameters accept extra arguments;
 * - then the session: `SESSION_INVALID [ref]`;
 * - unknown names give `MESSAGE_METHOD_UNKNOWN [name as called]`; `Async.` on a method
 *   without an async form gives `Fault ["No async mode for this operation (rpc: …)"]`;
 * - on a pool member every call fails with `HOST_IS_SLAVE [master address]`;
 * - `system.listMethods` lists every synchronous name (`Class.method`).
 */

type ParamType = 'string' | 'ref' | 'bool' | 'int' | 'float' | 'map' | 'set' | 'struct' | 'any';

interface ParamDef {
  name: string;
  type: ParamType;
  optional?: boolean;
}

export interface CallContext {
  readonly state: SimState;
  readonly host: HostInfo;
  readonly session: string | undefined;
  /** The task of an `Async.` call. */
  readonly task: string | undefined;
  /** Resolves when the simulator closes (ends long polls). */
  readonly closed: Promise<void>;
  /** An injected `sr-full` fault applies to this call. */
  readonly srFull: boolean;
  readonly options: RpcOptions;
}

interface MethodDef {
  name: string;
  params: ParamDef[];
  session: boolean;
  async: boolean;
  removed?: boolean;
  handler: (ctx: CallContext, args: unknown[]) => unknown;
}

export interface RpcOptions {
  /** XAPI sleeps 5 s before SESSION_AUTHENTICATION_FAILED; default here 0. */
  authFailureDelayMs: number;
  /** The simulator's NBD server, for VDI.get_nbd_info. */
  nbd?: {
    /** Port every host's NBD server listens on (XAPI: 10809). */
    readonly port: number;
    /** PEM of the certificate the NBD server presents after STARTTLS. */
    cert(): Promise<string>;
    /** The host name that certificate is issued to. */
    readonly subject: string;
  };
}

/** What the transport must do with a call. */
export type RpcOutcome =
  | { kind: 'value'; value: XmlRpcValue; bare?: boolean }
  | { kind: 'error'; error: ApiError }
  | { kind: 'reset' }
  | { kind: 'http-500' };

const p = (name: string, type: ParamType, optional = false): ParamDef => ({ name, type, optional });

function paramTypeOf(def: FieldDef): ParamType {
  switch (def.type) {
    case 'string':
      return 'string';
    case 'int':
      return 'int';
    case 'float':
      return 'float';
    case 'bool':
      return 'bool';
    case 'ref':
      return 'ref';
    case 'set':
      return 'set';
    case 'map':
      return 'map';
    case 'datetime':
      return 'any';
  }
}

function coerce(param: ParamDef, value: unknown): unknown {
  const bad = () => new ApiError('FIELD_TYPE_ERROR', [param.name]);
  switch (param.type) {
    case 'string':
    case 'ref':
      if (typeof value !== 'string') throw bad();
      return value;
    case 'bool':
      if (typeof value !== 'boolean') throw bad();
      return value;
    case 'int': {
      const n = typeof value === 'string' && /^-?\d+$/.test(value.trim()) ? Number(value) : value;
      if (typeof n !== 'number' || !Number.isInteger(n)) throw bad();
      return n;
    }
    case 'float': {
      const n = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
      if (typeof n !== 'number' || Number.isNaN(n)) throw bad();
      return n;
    }
    case 'map':
      if (value === null || typeof value !== 'object' || Array.isArray(value) || Buffer.isBuffer(value) || value instanceof Date) throw bad();
      for (const v of Object.values(value)) if (typeof v !== 'string') throw bad();
      return value;
    case 'set':
      if (!Array.isArray(value)) throw bad();
      for (const v of value) if (typeof v !== 'string') throw bad();
      return value;
    case 'struct':
      if (value === null || typeof value !== 'object' || Array.isArray(value)) throw bad();
      return value;
    case 'any':
      return value;
  }
}

/**
 * A VBD.create record checked as XAPI's unmarshaller does: every field without a default in
 * the datamodel must be there (`device` "", `unpluggable` true and `currently_attached` false
 * have one), of its type; enums are read case-insensitively.
 */
function vbdConstructor(r: Record<string, unknown>): VbdConstructor {
  const bad = (k: string) => new ApiError('FIELD_TYPE_ERROR', [k]);
  const has = (k: string) => Object.hasOwn(r, k);
  const str = (k: string, def?: string): string => {
    if (!has(k) && def !== undefined) return def;
    if (typeof r[k] !== 'string') throw bad(k);
    return r[k];
  };
  const bool = (k: string, def?: boolean): boolean => {
    if (!has(k) && def !== undefined) return def;
    if (typeof r[k] !== 'boolean') throw bad(k);
    return r[k];
  };
  const map = (k: string): Record<string, string> => {
    const v = r[k];
    if (v === null || typeof v !== 'object' || Array.isArray(v) || Buffer.isBuffer(v) || v instanceof Date) throw bad(k);
    if (Object.values(v).some((x) => typeof x !== 'string')) throw bad(k);
    return { ...(v as Record<string, string>) };
  };
  const oneOf = <T extends string>(k: string, values: readonly T[]): T => {
    const v = str(k).toLowerCase();
    const found = values.find((x) => x.toLowerCase() === v);
    if (found === undefined) throw bad(k);
    return found;
  };
  return {
    VM: str('VM'),
    VDI: str('VDI'),
    device: str('device', ''),
    userdevice: str('userdevice'),
    bootable: bool('bootable'),
    mode: oneOf('mode', ['RO', 'RW'] as const),
    type: oneOf('type', ['CD', 'Disk', 'Floppy'] as const),
    unpluggable: bool('unpluggable', true),
    empty: bool('empty'),
    other_config: map('other_config'),
    currently_attached: bool('currently_attached', false),
    qos_algorithm_type: str('qos_algorithm_type'),
    qos_algorithm_params: map('qos_algorithm_params'),
  };
}

/** The sync method name a call is about: `Async.VM_snapshot` → `VM.snapshot`. */
export function canonicalMethodName(name: string): string {
  let n = name.startsWith('Async.') ? name.slice(6) : name;
  if (!n.includes('.')) {
    const cls = [...CLASS_NAMES, 'event', 'system'].sort((a, b) => b.length - a.length).find((c) => n.startsWith(`${c}_`));
    if (cls !== undefined) n = `${cls}.${n.slice(cls.length + 1)}`;
  }
  return n;
}

export class Rpc {
  private readonly methods = new Map<string, MethodDef>();

  constructor(
    private readonly state: SimState,
    private readonly faults: Faults,
    private readonly closed: Promise<void>,
    private readonly options: RpcOptions,
  ) {
    for (const cls of CLASS_NAMES) this.defineGeneric(cls);
    this.defineCustom();
  }

  private define(name: string, params: ParamDef[], handler: MethodDef['handler'], opts: { session?: boolean; async?: boolean; removed?: boolean } = {}): void {
    this.methods.set(name, { name, params, handler, session: opts.session ?? true, async: opts.async ?? false, removed: opts.removed ?? false });
  }

  /** Every synchronous method name, as system.listMethods returns them. */
  listMethods(): string[] {
    return [...this.methods.keys(), 'system.listMethods'];
  }

  // --- generic per-class methods -----------------------------------------------------------

  private defineGeneric(cls: ClassName): void {
    const { db } = this.state;
    const { fields, listed } = DATAMODEL[cls];
    const record = (ref: string) => wireRecord(cls, db.record(cls, ref));
    if (cls !== 'session') {
      this.define(`${cls}.get_all`, [], () => db.all(cls).map((r) => r.ref));
    }
    if (listed) {
      this.define(`${cls}.get_all_records`, [], () => Object.fromEntries(db.all(cls).map((r) => [r.ref, record(r.ref)])));
      this.define(`${cls}.get_all_records_where`, [p('expr', 'string')], (_c, [expr]) => {
        const where = compileWhere(expr as string);
        return Object.fromEntries(db.all(cls).filter((r) => where((f) => r.fields[f])).map((r) => [r.ref, record(r.ref)]));
      });
    }
    this.define(`${cls}.get_record`, [p('self', 'ref')], (_c, [self]) => record(self as string));
    this.define(`${cls}.get_by_uuid`, [p('uuid', 'string')], (_c, [uuid]) => {
      const row = db.byUuid(cls, uuid as string);
      if (row === undefined) throw new ApiError('UUID_INVALID', [cls, uuid]);
      return row.ref;
    });
    if ('name_label' in fields) {
      this.define(`${cls}.get_by_name_label`, [p('label', 'string')], (_c, [label]) =>
        db.all(cls).filter((r) => r.fields.name_label === label).map((r) => r.ref),
      );
    }
    for (const [field, def] of Object.entries(fields)) {
      this.define(`${cls}.get_${field}`, [p('self', 'ref')], (_c, [self]) => wireField(def, db.record(cls, self as string)[field]));
      if (def.rw !== true) continue;
      this.define(`${cls}.set_${field}`, [p('self', 'ref'), p('value', paramTypeOf(def))], (_c, [self, value]) => {
        db.require(cls, self as string);
        if (def.type === 'ref' && value !== NULL_REF) db.require(def.target!, value as string);
        db.update(cls, self as string, { [field]: value });
        return '';
      });
      if (def.type === 'map') {
        this.define(`${cls}.add_to_${field}`, [p('self', 'ref'), p('key', 'string'), p('value', 'string')], (_c, [self, key, value]) => {
          const current = db.field<Record<string, string>>(cls, self as string, field);
          if (Object.hasOwn(current, key as string)) throw new ApiError('MAP_DUPLICATE_KEY', [cls, field, self, key]);
          db.update(cls, self as string, { [field]: { ...current, [key as string]: value } });
          return '';
        });
        this.define(`${cls}.remove_from_${field}`, [p('self', 'ref'), p('key', 'string')], (_c, [self, key]) => {
          const current = db.field<Record<string, string>>(cls, self as string, field);
          if (Object.hasOwn(current, key as string)) {
            delete current[key as string];
            db.update(cls, self as string, { [field]: current });
          }
          return '';
        });
      } else if (def.type === 'set') {
        this.define(`${cls}.add_${field}`, [p('self', 'ref'), p('value', 'string')], (_c, [self, value]) => {
          const current = db.field<string[]>(cls, self as string, field);
          if (!current.includes(value as string)) db.update(cls, self as string, { [field]: [...current, value] });
          return '';
        });
        this.define(`${cls}.remove_${field}`, [p('self', 'ref'), p('value', 'string')], (_c, [self, value]) => {
          const current = db.field<string[]>(cls, self as string, field);
          if (current.includes(value as string)) db.update(cls, self as string, { [field]: current.filter((v) => v !== value) });
          return '';
        });
      }
    }
  }

  // --- the calls a backup makes ------------------------------------------------------------

  private defineCustom(): void {
    const { state } = this;
    const { db } = state;
    const vmOp = (name: string, params: ParamDef[], fn: (c: CallContext, args: unknown[]) => unknown) => this.define(name, params, fn, { async: true });

    this.define(
      'session.login_with_password',
      [p('uname', 'string'), p('pwd', 'string'), p('version', 'string', true), p('originator', 'string', true)],
      async (c, [uname, pwd, , originator]) => {
        if (!state.checkCredentials(uname as string, pwd as string)) {
          if (c.options.authFailureDelayMs > 0) await delay(c.options.authFailureDelayMs);
          throw new ApiError('SESSION_AUTHENTICATION_FAILED', [uname, 'Authentication failure']);
        }
        return state.createSession(uname as string, (originator as string | undefined) ?? '', c.host.ref);
      },
      { session: false },
    );
    this.define(
      'session.slave_local_login_with_password',
      [p('uname', 'string'), p('pwd', 'string')],
      (c, [uname, pwd]) => {
        if (!state.checkCredentials(uname as string, pwd as string)) throw new ApiError('SESSION_AUTHENTICATION_FAILED', [uname, 'Authentication failure']);
        return state.createSession(uname as string, 'slave_local', c.host.ref);
      },
      { session: false },
    );
    this.define('session.logout', [], (c) => {
      state.destroySession(c.session!, 'logout');
      return '';
    });
    this.define('session.local_logout', [], (c) => {
      state.destroySession(c.session!, 'logout');
      return '';
    });

    this.define('task.create', [p('label', 'string'), p('description', 'string')], (_c, [label, description]) => state.createTask(label as string, description as string));
    this.define('task.destroy', [p('self', 'ref')], (_c, [self]) => {
      db.require('task', self as string);
      db.destroy('task', self as string);
      return '';
    });
    this.define('task.cancel', [p('task', 'ref')], (_c, [task]) => {
      state.requestCancel(task as string);
      return '';
    }, { async: true });

    this.define('event.from', [p('classes', 'set'), p('token', 'string'), p('timeout', 'float')], (c, [classes, token, timeout]) =>
      eventFrom(state, c.session!, classes as string[], token as string, timeout as number, c.closed),
    );
    this.define('event.inject', [p('class', 'string'), p('ref', 'string')], (_c, [cls, ref]) => eventInject(state, cls as string, ref as string));

    this.define('host.get_servertime', [p('host', 'ref')], (_c, [host]) => {
      db.require('host', host as string);
      return state.clock();
    });

    vmOp('VM.snapshot', [p('vm', 'ref'), p('new_name', 'string'), p('ignore_vdis', 'set', true)], (c, [vm, name, ignore]) => {
      db.require('VM', vm as string);
      return state.snapshotVm(vm as string, name as string, (ignore as string[] | undefined) ?? [], { srFull: c.srFull });
    });
    this.define('VM.snapshot_with_quiesce', [p('vm', 'ref'), p('new_name', 'string')], () => undefined, { async: true, removed: true });
    vmOp('VM.destroy', [p('self', 'ref')], (_c, [self]) => {
      db.require('VM', self as string);
      state.destroyVm(self as string);
      return '';
    });
    vmOp('VM.start', [p('vm', 'ref'), p('start_paused', 'bool'), p('force', 'bool')], (_c, [vm, paused]) => {
      db.require('VM', vm as string);
      state.startVm(vm as string, paused as boolean);
      return '';
    });
    vmOp('VM.start_on', [p('vm', 'ref'), p('host', 'ref'), p('start_paused', 'bool'), p('force', 'bool')], (_c, [vm, host, paused]) => {
      db.require('VM', vm as string);
      db.require('host', host as string);
      state.startVm(vm as string, paused as boolean, host as string, 'start_on');
      return '';
    });
    for (const op of ['clean_shutdown', 'hard_shutdown'] as const) {
      vmOp(`VM.${op}`, [p('vm', 'ref')], (_c, [vm]) => {
        db.require('VM', vm as string);
        state.shutdownVm(vm as string, op);
        return '';
      });
    }
    for (const op of ['pause', 'unpause', 'clean_reboot', 'hard_reboot'] as const) {
      vmOp(`VM.${op}`, [p('vm', 'ref')], (_c, [vm]) => {
        db.require('VM', vm as string);
        state.setPowerState(vm as string, op);
        return '';
      });
    }
    this.define('VM.set_is_a_template', [p('self', 'ref'), p('value', 'bool')], (_c, [self, value]) => {
      db.require('VM', self as string);
      if (value === true) state.assertVmOperation(self as string, 'make_into_template');
      db.update('VM', self as string, { is_a_template: value });
      return '';
    });
    this.define('VM.assert_operation_valid', [p('self', 'ref'), p('op', 'string')], (_c, [self, op]) => {
      state.assertVmOperation(self as string, op as string);
      return '';
    }, { async: true });

    this.define('VDI.snapshot', [p('vdi', 'ref'), p('driver_params', 'map', true)], (c, [vdi]) => {
      const f = db.require('VDI', vdi as string).fields;
      if (c.srFull) throw new ApiError('SR_FULL', [String(f.virtual_size), String(db.field('SR', f.SR as string, 'physical_size'))]);
      return state.snapshotVdi(vdi as string);
    }, { async: true });
    this.define('VDI.destroy', [p('self', 'ref')], (_c, [self]) => {
      db.require('VDI', self as string);
      state.destroyVdi(self as string);
      return '';
    }, { async: true });
    this.define('VDI.create', [p('args', 'struct')], (_c, [args]) => {
      const r = args as Record<string, unknown>;
      for (const k of ['SR', 'virtual_size', 'type', 'sharable', 'read_only', 'other_config']) {
        if (!(k in r)) throw new ApiError('FIELD_TYPE_ERROR', [k]);
      }
      const size = typeof r.virtual_size === 'string' ? Number(r.virtual_size) : r.virtual_size;
      if (typeof size !== 'number' || !Number.isInteger(size) || size < 0) throw new ApiError('FIELD_TYPE_ERROR', ['virtual_size']);
      return state.createVdi({ ...r, virtual_size: size });
    }, { async: true });
    // Changed-block tracking and NBD (xapi_vdi.ml, xapi_network.ml).
    this.define('VDI.enable_cbt', [p('self', 'ref')], (_c, [self]) => {
      state.setCbt(self as string, true);
      return '';
    }, { async: true });
    this.define('VDI.disable_cbt', [p('self', 'ref')], (_c, [self]) => {
      state.setCbt(self as string, false);
      return '';
    }, { async: true });
    this.define('VDI.list_changed_blocks', [p('vdi_from', 'ref'), p('vdi_to', 'ref')], (_c, [from, to]) => state.listChangedBlocks(from as string, to as string), { async: true });
    this.define('VDI.data_destroy', [p('self', 'ref')], async (c, [self]) => {
      await state.dataDestroy(self as string, c.closed);
      return '';
    }, { async: true });
    this.define('VDI.get_nbd_info', [p('self', 'ref')], async (c, [self]) => {
      const vdi = self as string;
      const f = db.require('VDI', vdi).fields;
      if (f.type === 'cbt_metadata') throw new ApiError('VDI_INCOMPATIBLE_TYPE', [vdi, 'cbt_metadata']);
      const nbd = c.options.nbd;
      const purposes = db.all('network').flatMap((n) => n.fields.purpose as string[]);
      if (nbd === undefined || !purposes.some((x) => x === 'nbd' || x === 'insecure_nbd')) return [];
      const owner = state.hostOfSr(f.SR as string);
      const hosts = state.hosts.filter((h) => owner === undefined || h.ref === owner);
      const cert = await nbd.cert();
      return hosts.map((h) => ({ address: h.address, port: nbd.port, cert, exportname: `/${f.uuid as string}?session_id=${c.session!}`, subject: nbd.subject }));
    });
    this.define('VDI.pool_migrate', [p('vdi', 'ref'), p('sr', 'ref'), p('options', 'map')], (_c, [vdi, sr]) => state.poolMigrateVdi(vdi as string, sr as string), { async: true });
    this.define('VDI.resize', [p('vdi', 'ref'), p('size', 'int')], (_c, [vdi, size]) => state.resizeVdi(vdi as string, Number(size), false), { async: true });
    this.define('VDI.resize_online', [p('vdi', 'ref'), p('size', 'int')], (_c, [vdi, size]) => state.resizeVdi(vdi as string, Number(size), true), { async: true });
    this.define('VDI.clone', [p('vdi', 'ref'), p('driver_params', 'map', true)], (_c, [vdi]) => state.cloneVdi(vdi as string), { async: true });
    this.define('VDI.copy', [p('vdi', 'ref'), p('sr', 'ref'), p('base_vdi', 'ref', true), p('into_vdi', 'ref', true)], (_c, [vdi, sr]) => state.copyVdi(vdi as string, sr as string), { async: true });
    this.define('network.add_purpose', [p('self', 'ref'), p('value', 'string')], (_c, [self, value]) => {
      state.addNetworkPurpose(self as string, value as string);
      return '';
    });
    this.define('network.remove_purpose', [p('self', 'ref'), p('value', 'string')], (_c, [self, value]) => {
      const current = db.require('network', self as string).fields.purpose as string[];
      if (current.includes(value as string)) db.update('network', self as string, { purpose: current.filter((x) => x !== value) });
      return '';
    });

    // Disks of a VM (xapi_vbd.ml, xapi_vm.ml get_allowed_VBD_devices).
    this.define('VM.get_allowed_VBD_devices', [p('vm', 'ref')], (_c, [vm]) => state.allowedVbdDevices(vm as string));
    this.define('VBD.create', [p('args', 'struct')], (_c, [args]) => state.createVbd(vbdConstructor(args as Record<string, unknown>)), { async: true });
    this.define('VBD.destroy', [p('self', 'ref')], (_c, [self]) => {
      state.destroyVbd(self as string);
      return '';
    }, { async: true });
    this.define('VBD.plug', [p('self', 'ref')], (_c, [self]) => {
      state.plugVbd(self as string);
      return '';
    }, { async: true });
    for (const op of ['unplug', 'unplug_force'] as const) {
      this.define(`VBD.${op}`, [p('self', 'ref')], (_c, [self]) => {
        state.unplugVbd(self as string, op);
        return '';
      }, { async: true });
    }

    this.define('SR.scan', [p('sr', 'ref')], (_c, [sr]) => {
      db.require('SR', sr as string);
      return '';
    }, { async: true });
  }

  // --- dispatch ----------------------------------------------------------------------------

  private resolve(name: string): MethodDef | undefined {
    return this.methods.get(canonicalMethodName(name));
  }

  /** What a fault filter sees of a call: the VMs and VDIs its arguments point at. */
  subjectOf(args: unknown[]): FaultSubject {
    const { db } = this.state;
    const vms = new Set<string>();
    const vdis = new Set<string>();
    const addVm = (ref: string) => {
      vms.add(ref);
      for (const vbd of db.reverse('VBD', 'VM', ref)) {
        const vdi = db.get('VBD', vbd)?.fields.VDI;
        if (typeof vdi === 'string' && vdi !== NULL_REF) vdis.add(vdi);
      }
    };
    // A constructor record (VBD.create) points at its VM and VDI through its fields.
    const refs = args.flatMap((a) => (a !== null && typeof a === 'object' && !Array.isArray(a) ? [(a as Record<string, unknown>).VM, (a as Record<string, unknown>).VDI] : [a]));
    for (const a of refs) {
      if (typeof a !== 'string' || !a.startsWith('OpaqueRef:')) continue;
      if (db.has('VM', a)) addVm(a);
      else if (db.has('VDI', a)) {
        vdis.add(a);
        for (const vm of this.state.vmsOfVdi(a)) vms.add(vm);
      } else if (db.has('VBD', a)) {
        const f = db.get('VBD', a)!.fields;
        vms.add(f.VM as string);
        if (f.VDI !== NULL_REF) vdis.add(f.VDI as string);
      }
    }
    return { vms: [...vms], vdis: [...vdis] };
  }

  /** Handles one call made to `host`. Never throws: failures come back as outcomes. */
  async call(host: HostInfo, methodName: string, params: unknown[]): Promise<RpcOutcome> {
    try {
      return await this.dispatch(host, methodName, params);
    } catch (error) {
      return { kind: 'error', error: toApiError(error) };
    }
  }

  private async dispatch(host: HostInfo, methodName: string, params: unknown[]): Promise<RpcOutcome> {
    const { state } = this;
    const isAsync = methodName.startsWith('Async.');
    const canonical = canonicalMethodName(methodName);
    if (host.ref !== state.masterRef && !canonical.startsWith('session.slave_local') && canonical !== 'session.local_logout') {
      const master = state.hosts.find((h) => h.ref === state.masterRef)!;
      throw new ApiError('HOST_IS_SLAVE', [master.address]);
    }
    if (canonical === 'system.listMethods') return { kind: 'value', value: this.listMethods(), bare: true };
    const method = this.resolve(methodName);
    if (method === undefined) throw new ApiError('MESSAGE_METHOD_UNKNOWN', [methodName]);

    const offset = method.session ? 1 : 0;
    const received = params.length - offset;
    const mandatory = method.params.filter((x) => x.optional !== true).length;
    const hasOptional = mandatory !== method.params.length;
    if (received < mandatory || (!hasOptional && received !== mandatory)) {
      throw new ApiError('MESSAGE_PARAMETER_COUNT_MISMATCH', [canonical, String(mandatory), String(received)]);
    }

    let session: string | undefined;
    if (method.session) {
      session = params[0] as string;
      if (typeof session !== 'string' || !state.db.has('session', session)) throw new ApiError('SESSION_INVALID', [String(session)]);
    }
    const args = params.slice(offset, offset + method.params.length);
    // server_helpers.ml do_dispatch: checked after arity and session, answered as a "Fault".
    if (isAsync && !method.async) throw new ApiError('Fault', [`No async mode for this operation (rpc: ${methodName.slice('Async.'.length)})`]);

    const fault = this.faults.forRpc(canonical, () => this.subjectOf(args));
    // A stalled Async call returns its task at once; the task is what hangs.
    const stallInTask = isAsync && fault?.kind === 'stall' ? fault : undefined;
    if (fault !== undefined && stallInTask === undefined) {
      const early = await this.applyEarlyFault(fault, session);
      if (early !== undefined) return early;
    }
    if (method.removed === true) throw new ApiError('MESSAGE_REMOVED', []);

    const coerced = args.map((a, i) => coerce(method.params[i]!, a));
    const srFull = fault?.kind === 'sr-full';
    const taskFailure = fault?.kind === 'task-failure' ? new ApiError(fault.code, fault.params) : undefined;
    const ctxBase = { state, host, session, closed: this.closed, srFull, options: this.options };

    if (!isAsync) {
      if (taskFailure !== undefined) throw taskFailure;
      const value = await method.handler({ ...ctxBase, task: undefined }, coerced);
      return { kind: 'value', value: (value ?? '') as XmlRpcValue };
    }

    const task = state.createTask(`Async.${canonical}`, '');
    setImmediate(() => {
      void (async () => {
        try {
          if (stallInTask !== undefined) await this.stallTask(task, stallInTask.ms);
          if (state.isCancelling(task)) throw new ApiError('TASK_CANCELLED', [task]);
          if (taskFailure !== undefined) throw taskFailure;
          const value = await method.handler({ ...ctxBase, task }, coerced);
          state.completeTask(task, toXmlValue((value ?? '') as XmlRpcValue));
        } catch (error) {
          state.failTask(task, toApiError(error));
        }
      })();
    });
    return { kind: 'value', value: task };
  }

  private async applyEarlyFault(fault: FaultAction, session: string | undefined): Promise<RpcOutcome | undefined> {
    switch (fault.kind) {
      case 'error':
        throw new ApiError(fault.code, fault.params);
      case 'reset':
        return { kind: 'reset' };
      case 'http-500':
        return { kind: 'http-500' };
      case 'stall':
        await this.stall(fault.ms);
        return undefined;
      case 'invalidate-sessions':
        this.state.invalidateAllSessions();
        if (session !== undefined) throw new ApiError('SESSION_INVALID', [session]);
        return undefined;
      default:
        return undefined;
    }
  }

  /** Waits `ms` (forever when undefined) unless the task is cancelled or the simulator closes. */
  private async stallTask(task: string, ms: number | undefined): Promise<void> {
    const { state } = this;
    await new Promise<void>((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(done, ms);
      const off = state.db.onChange(() => {
        if (!state.db.has('task', task) || state.isCancelling(task)) done();
      });
      void this.closed.then(done);
      function done() {
        off();
        if (timer !== undefined) clearTimeout(timer);
        resolve();
      }
    });
  }

  private async stall(ms: number | undefined): Promise<void> {
    if (ms === undefined) {
      await this.closed;
      return;
    }
    await Promise.race([delay(ms), this.closed]);
  }
}
