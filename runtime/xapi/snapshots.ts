import type { Origin } from '../function.js';
import { PermanentError } from '../errors.js';
import type { XapiClient } from './client.js';
import { NULL_REF } from './records.js';
import type { RecordTypes, Ref, VdiRecord } from './records.js';

/**
 * Tags vmbackup writes into `other_config` of each snapshot VM and snapshot VDI it creates.
 * Leftovers are found by these tags (and `is_a_snapshot`), never by name: NAUBackup destroyed
 * a real VM whose name looked like its snapshots (its issue 96).
 */
export const TAG = {
  run: 'vmbackup:run',
  job: 'vmbackup:job',
  source: 'vmbackup:source',
  origin: 'vmbackup:origin',
  created: 'vmbackup:created',
  /**
   * On a disk snapshot kept as a delta-export's CBT base (its data destroyed): the stamp of
   * the point it was read for. A base has no `run` tag, so no plan takes it for a leftover;
   * the next delta-export of its VM finds it by this tag and destroys it once superseded.
   */
  base: 'vmbackup:base',
} as const;

/** Reason written into `blocked_operations` while a halted VM is exported without a snapshot. */
export const BLOCK_REASON_PREFIX = 'vmbackup: export in progress';

/** The block reason: names the run and its owner, so a leftover block can be judged stale. */
export function blockReason(runId: string, origin: Origin, now: Date): string {
  return `${BLOCK_REASON_PREFIX} (run ${runId} by ${origin.hostname}:${origin.pid} at ${now.toISOString()})`;
}

/** A block reason read back as tags (for isLeftover), or undefined if it is not ours. */
export function parseBlockReason(reason: string): Record<string, string> | undefined {
  const m = /^vmbackup: export in progress \(run (\S+) by (\S+) at (\S+)\)$/.exec(reason);
  if (m === null) return undefined;
  return { [TAG.run]: m[1]!, [TAG.origin]: m[2]!, [TAG.created]: m[3]! };
}

/** The key that identifies one attempt of one job: `<runId>/<jobId>/<try>`. */
export function jobKey(job: { runId: string; jobId: string; try: number }): string {
  return `${job.runId}/${job.jobId}/${job.try}`;
}

export function snapshotTags(job: { runId: string; jobId: string; try: number }, source: string, origin: Origin, now: Date): Record<string, string> {
  return {
    [TAG.run]: job.runId,
    [TAG.job]: jobKey(job),
    [TAG.source]: source,
    [TAG.origin]: `${origin.hostname}:${origin.pid}`,
    [TAG.created]: now.toISOString(),
  };
}

export async function tagObject(xapi: XapiClient, cls: 'VM' | 'VDI', ref: Ref, tags: Record<string, string>): Promise<void> {
  for (const [key, value] of Object.entries(tags)) {
    // remove first: add_to_other_config fails with MAP_DUPLICATE_KEY on an existing key.
    await xapi.call(`${cls}.remove_from_other_config`, ref, key);
    await xapi.call(`${cls}.add_to_other_config`, ref, key, value);
  }
}

/**
 * Whether a tagged snapshot is a leftover that may be destroyed: it must not belong to the
 * current run, and its owner must be gone — on this host its process is dead; from another
 * host (a second management node, a NATS worker) only age tells, after `maxAgeHours`.
 */
export function isLeftover(
  otherConfig: Record<string, string>,
  ctx: { now: Date; me: Origin; currentRunId: string; maxAgeHours: number; pidAlive: (pid: number) => boolean },
): boolean {
  const run = otherConfig[TAG.run];
  if (run === undefined || run === ctx.currentRunId) return false;
  const created = Date.parse(otherConfig[TAG.created] ?? '');
  const old = Number.isNaN(created) || ctx.now.getTime() - created > ctx.maxAgeHours * 3_600_000;
  if (old) return true;
  const origin = otherConfig[TAG.origin] ?? '';
  const sep = origin.lastIndexOf(':');
  const host = origin.slice(0, sep);
  const pid = Number(origin.slice(sep + 1));
  return host === ctx.me.hostname && Number.isInteger(pid) && !ctx.pidAlive(pid);
}

function isOurs(record: { is_a_snapshot: boolean; other_config: Record<string, string> }): boolean {
  return record.is_a_snapshot && (record.other_config[TAG.run] !== undefined || record.other_config[TAG.base] !== undefined);
}

/** The record of a snapshot about to be destroyed; undefined when it is gone. Refuses one vmbackup did not make. */
async function ourSnapshot<K extends 'VM' | 'VDI'>(xapi: XapiClient, type: K, ref: Ref): Promise<RecordTypes[K] | undefined> {
  let record: RecordTypes[K];
  try {
    record = await xapi.getRecord(type, ref);
  } catch (error) {
    if ((error as { code?: string }).code === 'HANDLE_INVALID') return undefined;
    throw error;
  }
  if (!isOurs(record)) {
    throw new PermanentError('NOT_OUR_SNAPSHOT', `refusing to destroy ${type} ${record.uuid} ("${record.name_label}"): not a snapshot tagged by vmbackup`, { [type.toLowerCase()]: record.uuid });
  }
  return record;
}

/**
 * Destroys a snapshot VM made by vmbackup and its disk snapshots (what `xe vm-uninstall`
 * does; VM.destroy alone leaves the disks on the SR). Refuses anything that is not a tagged
 * snapshot. Returns the uuids destroyed; objects already gone are skipped. `keepVdis`: disk
 * snapshots (by uuid) that stay, e.g. those a delta-export keeps as its next CBT base.
 */
export async function destroySnapshotVm(xapi: XapiClient, ref: Ref, opts: { keepVdis?: ReadonlySet<string> } = {}): Promise<string[]> {
  const vm = await ourSnapshot(xapi, 'VM', ref);
  if (vm === undefined) return [];
  const vdis: VdiRecord[] = [];
  for (const vbdRef of vm.VBDs) {
    const vbd = await xapi.getRecord('VBD', vbdRef).catch(() => undefined);
    if (vbd === undefined || vbd.type !== 'Disk' || vbd.VDI === NULL_REF) continue;
    const vdi = await xapi.getRecord('VDI', vbd.VDI).catch(() => undefined);
    // Only the disk snapshots: never a shared disk or an ISO the snapshot merely points at.
    if (vdi !== undefined && vdi.is_a_snapshot && opts.keepVdis?.has(vdi.uuid) !== true) vdis.push(vdi);
  }
  const destroyed: string[] = [];
  await ignoreGone(xapi.call('VM.destroy', ref));
  destroyed.push(vm.uuid);
  for (const vdi of vdis) {
    await ignoreGone(xapi.call('VDI.destroy', vdi.$ref));
    destroyed.push(vdi.uuid);
  }
  return destroyed;
}

/** Destroys a VDI snapshot made by vmbackup; refuses anything else. */
export async function destroySnapshotVdi(xapi: XapiClient, ref: Ref): Promise<string[]> {
  const vdi = await ourSnapshot(xapi, 'VDI', ref);
  if (vdi === undefined) return [];
  await ignoreGone(xapi.call('VDI.destroy', ref));
  return [vdi.uuid];
}

async function ignoreGone(p: Promise<unknown>): Promise<void> {
  try {
    await p;
  } catch (error) {
    if ((error as { code?: string }).code !== 'HANDLE_INVALID') throw error;
  }
}

/** Lifts the start block vmbackup put on a halted VM, if it is still ours. */
export async function unblockStart(xapi: XapiClient, vmRef: Ref): Promise<void> {
  const vm = await xapi.getRecord('VM', vmRef);
  for (const op of ['start', 'start_on']) {
    const reason = vm.blocked_operations[op];
    if (reason !== undefined && reason.startsWith(BLOCK_REASON_PREFIX)) {
      await xapi.call('VM.remove_from_blocked_operations', vmRef, op);
    }
  }
}
