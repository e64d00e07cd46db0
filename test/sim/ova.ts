import type { XmlRpcValue } from '../../runtime/formats/xmlrpc.js';
import { DATAMODEL, type ClassName } from './datamodel.js';
import { NULL_REF } from './ids.js';
import type { SimState } from './state.js';
import { toXmlValue, wireRecord } from './wire.js';

/**
 * ova.xml as XAPI's export.ml writes it: `{version, objects}` where objects are the VM and
 * everything it points at, each `{class, id: "Ref:N", snapshot: <record>}`, with references
 * rewritten to those ids (or OpaqueRef:NULL when the target is not exported).
 *
 * Ids are handed out in export.ml's `update_table` order (VM, then per VIF the VIF and its
 * network, then per VBD the VBD, its VDI and SR, then guest metrics and hosts); objects are
 * listed per class in `make_all` order (host, VM, VM_guest_metrics, VBD, VIF, network, VDI, SR).
 *
 * Not reproduced: XAPI gives OpaqueRef:NULL itself an id (a known XAPI quirk that leaves
 * `Ref:N` strings pointing nowhere); here NULL stays NULL and every dangling reference becomes
 * NULL, set members pointing outside the export are dropped.
 */

const OBJECT_ORDER: ClassName[] = ['host', 'VM', 'VM_guest_metrics', 'VBD', 'VIF', 'network', 'VDI', 'SR'];

export interface OvaExport {
  xml: string;
  /** Disks to stream: the VDI and its `Ref:N`, in VBD order (CDs and ISO SRs excluded). */
  disks: { id: string; vdi: string }[];
}

export interface OvaOptions {
  /** export_metadata: keep snapshot fields and include the VM's snapshots. */
  withSnapshotMetadata?: boolean;
  /** export_metadata: keep power state and attachment flags. */
  preservePowerState?: boolean;
  /** `version.hostname`. */
  hostname: string;
}

export function buildOva(state: SimState, vmRef: string, opts: OvaOptions): OvaExport {
  const { db } = state;
  const table = new Map<string, string>();
  const add = (ref: string) => {
    if (ref === NULL_REF || table.has(ref)) return;
    table.set(ref, `Ref:${table.size}`);
  };
  const visit = (vm: string, includeSnapshots: boolean) => {
    if (!db.has('VM', vm) || table.has(vm)) return;
    add(vm);
    const rec = db.record('VM', vm);
    for (const vif of rec.VIFs as string[]) {
      add(vif);
      add(db.field<string>('VIF', vif, 'network'));
    }
    for (const vbd of rec.VBDs as string[]) {
      add(vbd);
      const f = db.require('VBD', vbd).fields;
      if (f.empty !== true && db.has('VDI', f.VDI as string)) {
        add(f.VDI as string);
        add(db.field<string>('VDI', f.VDI as string, 'SR'));
      }
    }
    if (includeSnapshots) for (const snap of rec.snapshots as string[]) visit(snap, false);
    if (db.has('VM_guest_metrics', rec.guest_metrics as string)) add(rec.guest_metrics as string);
    if (db.has('host', rec.resident_on as string)) add(rec.resident_on as string);
    if (db.has('host', rec.affinity as string)) add(rec.affinity as string);
    if (includeSnapshots && db.has('VM', rec.parent as string)) visit(rec.parent as string, false);
  };
  visit(vmRef, opts.withSnapshotMetadata === true);

  const lookup = (ref: unknown) => (typeof ref === 'string' && table.has(ref) ? table.get(ref)! : NULL_REF);
  const filter = (refs: unknown) => (refs as string[]).filter((r) => table.has(r)).map((r) => table.get(r)!);

  const rewrite = (cls: ClassName, ref: string): Record<string, unknown> => {
    const rec = db.record(cls, ref);
    for (const [name, def] of Object.entries(DATAMODEL[cls].fields)) {
      if (def.type === 'ref') rec[name] = lookup(rec[name]);
      else if (def.reverse !== undefined) rec[name] = filter(rec[name]);
    }
    if ('current_operations' in rec) rec.current_operations = {};
    if ('allowed_operations' in rec) rec.allowed_operations = [];
    const keep = opts.preservePowerState === true;
    switch (cls) {
      case 'VM':
        if (!keep) {
          rec.power_state = 'Halted';
          rec.suspend_VDI = NULL_REF;
        }
        if (opts.withSnapshotMetadata !== true) {
          rec.is_a_snapshot = false;
          rec.snapshot_of = NULL_REF;
          rec.snapshots = [];
          rec.snapshot_time = new Date(0);
          rec.transportable_snapshot_id = '';
          rec.parent = NULL_REF;
        }
        rec.metrics = NULL_REF;
        rec.protection_policy = NULL_REF;
        rec.blobs = {};
        break;
      case 'VBD':
      case 'VIF':
        if (!keep) rec.currently_attached = false;
        rec.metrics = NULL_REF;
        break;
      case 'SR':
        rec.PBDs = [];
        break;
      case 'network':
        rec.PIFs = [];
        break;
      default:
        break;
    }
    return rec;
  };

  const objects: XmlRpcValue[] = [];
  for (const cls of OBJECT_ORDER) {
    for (const row of db.all(cls)) {
      if (!table.has(row.ref)) continue;
      objects.push({ class: cls, id: table.get(row.ref)!, snapshot: wireRecord(cls, rewrite(cls, row.ref)) });
    }
  }
  const p = state.spec.product;
  const header: XmlRpcValue = {
    version: {
      hostname: opts.hostname,
      date: '2024-01-01',
      product_version: p.version,
      product_brand: p.brand,
      build_number: p.build_number,
      xapi_major: p.xapi_major,
      xapi_minor: p.xapi_minor,
      export_vsn: 2,
    },
    objects,
  };

  const disks: { id: string; vdi: string }[] = [];
  for (const vbd of db.record('VM', vmRef).VBDs as string[]) {
    const f = db.require('VBD', vbd).fields;
    if (f.type === 'CD' || f.empty === true || !db.has('VDI', f.VDI as string)) continue;
    const sr = db.get('SR', db.field<string>('VDI', f.VDI as string, 'SR'));
    if (sr?.fields.content_type === 'iso') continue;
    if (disks.some((d) => d.vdi === f.VDI)) continue;
    disks.push({ id: table.get(f.VDI as string)!, vdi: f.VDI as string });
  }
  return { xml: toXmlValue(header), disks };
}
