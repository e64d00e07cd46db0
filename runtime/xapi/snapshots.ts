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

/**
 * Prefix of the `other_config` keys on a halted VM that name who holds its start block: one key
 * per job attempt exporting it, `vmbackup:start-block:<runId>/<jobId>/<try>`, its value that
 * job's block reason. Two runs may export one halted VM at once and share the one block; each
 * adds and removes only its own key (distinct keys: no update of one run is lost to the
 * other's), and the block is lifted when no key is left.
 */
export const BLOCK_HOLDER_PREFIX = 'vmbackup:start-block:';

/** The operations blocked while a halted VM is exported without a snapshot. */
export const START_OPS = ['start', 'start_on'] as const;

/** The `other_config` key by which a job attempt holds a halted VM's start block. */
export function blockHolderKey(job: { runId: string; jobId: string; try: number }): string {
  return `${BLOCK_HOLDER_PREFIX}${jobKey(job)}`;
}

/** The holders of a VM's start block: `[key, block reason]` for each holder key in `other_config`. */
export function blockHolders(otherConfig: Record<string, string>): [string, string][] {
  return Object.entries(otherConfig).filter(([key]) => key.startsWith(BLOCK_HOLDER_PREFIX));
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

/** Runs an `add_to_…` call; an existing key (MAP_DUPLICATE_KEY) is fine. */
async function addIfAbsent(p: Promise<unknown>): Promise<void> {
  try {
    await p;
  } catch (error) {
    if ((error as { code?: string }).code !== 'MAP_DUPLICATE_KEY') throw error;
  }
}

/**
 * Blocks the start of a halted VM for an export without a snapshot, held by `holder` (its
 * blockHolderKey). The holder key goes first, so a run lifting its own hold meanwhile sees it.
 * The block itself may be there already (another run's, or an operator's under its own
 * reason): XAPI answers MAP_DUPLICATE_KEY, and the VM is blocked all the same.
 */
export async function blockStart(xapi: XapiClient, vmRef: Ref, holder: string, reason: string): Promise<void> {
  await addIfAbsent(xapi.call('VM.add_to_other_config', vmRef, holder, reason));
  for (const op of START_OPS) await addIfAbsent(xapi.call('VM.add_to_blocked_operations', vmRef, op, reason));
}

/**
 * Gives up `holder`'s hold on a halted VM's start block and lifts the block if no other run
 * holds it. `holder` undefined (a job from before holders were recorded) gives up nothing and
 * lifts as before, unless a run holds the block. Returns the operations unblocked.
 */
export async function unblockStart(xapi: XapiClient, vmRef: Ref, holder: string | undefined): Promise<string[]> {
  if (holder !== undefined) await xapi.call('VM.remove_from_other_config', vmRef, holder);
  return liftStartBlock(xapi, vmRef);
}

/**
 * Lifts vmbackup's start block (only `start`, `start_on` with vmbackup's reason) unless a run
 * holds it. A run may take hold between our read and the lift, having found the block there:
 * read again after, and if one did, put the block back. Returns the operations unblocked.
 */
export async function liftStartBlock(xapi: XapiClient, vmRef: Ref): Promise<string[]> {
  const vm = await xapi.getRecord('VM', vmRef);
  if (blockHolders(vm.other_config).length > 0) return [];
  const ops = START_OPS.filter((op) => vm.blocked_operations[op]?.startsWith(BLOCK_REASON_PREFIX) === true);
  if (ops.length === 0) return [];
  for (const op of ops) await xapi.call('VM.remove_from_blocked_operations', vmRef, op);
  const holder = blockHolders((await xapi.getRecord('VM', vmRef)).other_config)[0];
  if (holder === undefined) return ops;
  for (const op of START_OPS) await addIfAbsent(xapi.call('VM.add_to_blocked_operations', vmRef, op, holder[1]));
  return [];
}
