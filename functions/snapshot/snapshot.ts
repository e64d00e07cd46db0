import { z } from 'zod';
import { defineFunction, subject } from '../../runtime/function.js';
import type { Ctx } from '../../runtime/function.js';
import { PermanentError, errorInfo } from '../../runtime/errors.js';
import { jobSubject } from '../../runtime/events.js';
import { freeSpace } from '../../runtime/storage/space.js';
import { formatSeconds } from '../../runtime/units.js';
import type { XapiClient } from '../../runtime/xapi/client.js';
import { NULL_REF } from '../../runtime/xapi/records.js';
import type { VbdRecord, VdiRecord, VmRecord } from '../../runtime/xapi/records.js';
import { TAG, blockHolderKey, blockReason, blockStart, jobKey, snapshotTags, tagObject, unblockStart } from '../../runtime/xapi/snapshots.js';
import { MetaRecords } from '../meta/meta-format.js';
import { JobBase, VmJob } from '../job.js';

/**
 * snapshot — the first phase of a VM's backup.
 *
 * vm-export: `VM.snapshot`, the snapshot made a non-template (as VmBackup did, so an import
 * gives a VM), tagged with the run and the source VM on itself and its disks.
 * vdi-export: `VDI.snapshot` of each chosen disk, tagged likewise.
 * A halted VM (with `haltedWithoutSnapshot`) is not snapshotted: its start is blocked while
 * its disks are exported directly, the block held by this job's own key (other runs exporting
 * the VM at once share it); the export phase gives up the hold, and lifts the block if no run
 * holds it any more.
 *
 * Safe under redelivery: a snapshot already made for this job attempt (found by its tag) is
 * reused, never duplicated. Also records what the `.meta` file needs from the source VM.
 *
 * Subject `vmbackup.jobs.snapshot`; input: the plan's VM job. Output: the export's input.
 */
export const SnapshotInput = JobBase.extend(VmJob.shape);
export type SnapshotInput = z.infer<typeof SnapshotInput>;

/** A disk to export: its device, the source VDI, and the VDI to read (snapshot or source). */
export const ExportDisk = z.object({
  device: z.string(),
  userdevice: z.string(),
  source: z.string(),
  exportVdi: z.string(),
  virtualSize: z.number().int().min(0),
});
export type ExportDisk = z.infer<typeof ExportDisk>;

export const SnapshotTaken = z.object({
  /** `vm`: a VM snapshot; `vdi`: disk snapshots; `direct`: a halted VM, nothing snapshotted. */
  kind: z.enum(['vm', 'vdi', 'direct']),
  /** uuid of the snapshot VM (kind `vm`) or of the halted source VM (kind `direct`). */
  vmUuid: z.string().optional(),
  disks: z.array(ExportDisk),
  /** Start of the source VM blocked by us (kind `direct`): the export phase lifts it. */
  startBlocked: z.boolean(),
  /**
   * The `other_config` key by which this job holds the block (blockHolderKey): the export phase
   * removes it and lifts the block only if no other run holds it. Absent in a job from before
   * holders were recorded: the block is lifted unless a run holds it.
   */
  blockHolder: z.string().optional(),
  /**
   * delta-export with `cbt`: devices whose changed-block tracking was off and was turned on
   * just before this snapshot (their changes since the previous point are unknown).
   */
  cbtEnabled: z.array(z.string()).optional(),
  at: z.string(),
});
export type SnapshotTaken = z.infer<typeof SnapshotTaken>;

export const SnapshotOutput = SnapshotInput.extend({
  snapshot: SnapshotTaken,
  records: MetaRecords,
  warnings: z.array(z.string()).default([]),
});
export type SnapshotOutput = z.infer<typeof SnapshotOutput>;

export const SnapshotJob = subject(jobSubject('snapshot'), SnapshotInput);

export const snapshot = defineFunction({
  name: 'snapshot',
  description: 'Snapshot a VM (vm-export) or its chosen disks (vdi-export), tagged for cleanup by tag.',
  subject: SnapshotJob,
  output: SnapshotOutput,
  retry: { maxDeliver: 3, backoffMs: [5_000, 30_000] },
  async handle(input, ctx) {
    const space = await freeSpace(input.backupDir);
    if (space.freePercent < input.spaceThreshold) {
      throw new PermanentError(
        'SPACE_LOW',
        `${input.backupDir} has ${space.freePercent.toFixed(1)}% free, below space_threshold ${input.spaceThreshold}%: ${input.vm.name} not backed up`,
        { freePercent: space.freePercent, spaceThreshold: input.spaceThreshold },
      );
    }
    const xapi = await ctx.xapi();
    const vm = await sourceVm(xapi, input.vm.uuid, input.vm.name);
    const records = await metaRecords(xapi, vm);
    const warnings: string[] = [];
    const key = jobKey(input);
    const at = ctx.clock.now().toISOString();
    // Stopped (or shutting down) meanwhile: take nothing that would have to be cleaned up.
    ctx.signal.throwIfAborted();

    if (vm.power_state === 'Halted' && input.haltedWithoutSnapshot) {
      const disks = await chosenDisks(xapi, vm, input, warnings);
      // Another run may export this VM at once: the block is shared, each run holds it by its own key.
      const holder = blockHolderKey(input);
      await blockStart(xapi, vm.$ref, holder, blockReason(input.runId, ctx.origin, ctx.clock.now()));
      // The VM may have been started between our read and the block: then snapshot instead.
      const after = await xapi.getRecord('VM', vm.$ref);
      if (after.power_state === 'Halted') {
        ctx.log.info(`${input.vm.name}: halted, exporting without a snapshot (start blocked meanwhile)`);
        return {
          ...input,
          snapshot: {
            kind: 'direct' as const,
            vmUuid: vm.uuid,
            disks: disks.map(({ vbd, vdi }) => exportDisk(vbd, vdi.uuid, vdi)),
            startBlocked: true,
            blockHolder: holder,
            at,
          },
          records,
          warnings,
        };
      }
      await unblockStart(xapi, vm.$ref, holder);
    }

    if (input.mode !== 'vdi') {
      // A delta-export's snapshot carries CBT only when the disk tracked before it was taken.
      const cbtEnabled = input.mode === 'delta' && input.cbt !== false ? await enableCbt(xapi, vm, input, warnings) : undefined;
      const snap = (await findOurVmSnapshot(xapi, vm, key)) ?? (await takeVmSnapshot(xapi, vm, input, ctx));
      const disks: ExportDisk[] = [];
      for (const vbdRef of snap.VBDs) {
        const vbd = await xapi.getRecord('VBD', vbdRef);
        if (vbd.type !== 'Disk' || vbd.VDI === NULL_REF) continue;
        const vdi = await xapi.getRecord('VDI', vbd.VDI);
        if (vdi.is_a_snapshot && vdi.other_config[TAG.job] !== key) {
          await tagObject(xapi, 'VDI', vdi.$ref, snapshotTags(input, vm.uuid, ctx.origin, ctx.clock.now()));
        }
        const source = vdi.snapshot_of === NULL_REF ? undefined : await xapi.getRecord('VDI', vdi.snapshot_of).catch(() => undefined);
        disks.push(exportDisk(vbd, source?.uuid ?? vdi.uuid, vdi));
      }
      return { ...input, snapshot: { kind: 'vm' as const, vmUuid: snap.uuid, disks, startBlocked: false, at, ...(cbtEnabled !== undefined ? { cbtEnabled } : {}) }, records, warnings };
    }

    const disks: ExportDisk[] = [];
    for (const { vbd, vdi } of await chosenDisks(xapi, vm, input, warnings)) {
      const snap = (await findOurVdiSnapshot(xapi, vdi, key)) ?? (await takeVdiSnapshot(xapi, vdi, vm, input, ctx));
      disks.push(exportDisk(vbd, vdi.uuid, snap));
    }
    return { ...input, snapshot: { kind: 'vdi' as const, disks, startBlocked: false, at }, records, warnings };
  },
});

async function sourceVm(xapi: XapiClient, uuid: string, name: string): Promise<VmRecord> {
  try {
    const vm = await xapi.getRecordByUuid('VM', uuid);
    if (vm.is_a_snapshot || vm.is_a_template || vm.is_control_domain) {
      throw new PermanentError('NOT_A_VM', `${name} (${uuid}) is not a VM that can be backed up (snapshot, template or dom0)`, { vm: uuid });
    }
    return vm;
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === 'UUID_INVALID' || code === 'HANDLE_INVALID') {
      throw new PermanentError('VM_GONE', `VM ${name} (${uuid}) no longer exists`, { vm: uuid }, { cause: error });
    }
    throw error;
  }
}

function exportDisk(vbd: VbdRecord, sourceUuid: string, read: VdiRecord): ExportDisk {
  return {
    device: vbd.device || `userdevice${vbd.userdevice}`,
    userdevice: vbd.userdevice,
    source: sourceUuid,
    exportVdi: read.uuid,
    virtualSize: Number(read.virtual_size),
  };
}

/** The VM's disks (type Disk, with a VDI), in userdevice order. */
export async function vmDisks(xapi: XapiClient, vm: VmRecord): Promise<{ vbd: VbdRecord; vdi: VdiRecord }[]> {
  const disks: { vbd: VbdRecord; vdi: VdiRecord }[] = [];
  for (const vbdRef of vm.VBDs) {
    const vbd = await xapi.getRecord('VBD', vbdRef);
    if (vbd.type !== 'Disk' || vbd.VDI === NULL_REF) continue;
    disks.push({ vbd, vdi: await xapi.getRecord('VDI', vbd.VDI) });
  }
  return disks.sort((a, b) => Number(a.vbd.userdevice) - Number(b.vbd.userdevice));
}

/**
 * A vdi-export's chosen disks among the VM's (by device, e.g. `xvdb`, or userdevice, e.g.
 * `1`): those found, and a warning for each missing one — or, when none is found, the error
 * that fails the job. What the snapshot does, and what `--preview` shows.
 *
 * @example matchDisks(disks, ['xvdb', 'xvdz']) // → { chosen: [xvdb], warnings: ['no disk xvdz (the VM has xvda, xvdb)'] }
 */
export function matchDisks<D extends { vbd: Pick<VbdRecord, 'device' | 'userdevice'> }>(all: readonly D[], wanted: readonly string[]): { chosen: D[]; warnings: string[]; error?: string } {
  const has = all.map((d) => d.vbd.device).join(', ') || 'none';
  const chosen: D[] = [];
  const warnings: string[] = [];
  for (const device of wanted) {
    const found = all.find((d) => d.vbd.device === device || d.vbd.userdevice === device);
    // The summary and the logs put the VM's name before a job's warnings and errors.
    if (found === undefined) warnings.push(`no disk ${device} (the VM has ${has})`);
    else chosen.push(found);
  }
  if (chosen.length === 0) return { chosen, warnings, error: `none of the chosen disks ${wanted.join(';')} exists (the VM has ${has})` };
  return { chosen, warnings };
}

/** The disks a job exports: all for a vm-export, the chosen devices for a vdi-export. */
async function chosenDisks(xapi: XapiClient, vm: VmRecord, input: SnapshotInput, warnings: string[]) {
  const all = await vmDisks(xapi, vm);
  if (input.mode !== 'vdi') return all;
  const match = matchDisks(all, input.disks);
  if (match.error !== undefined) throw new PermanentError('NO_DISKS', match.error, { vm: input.vm.uuid });
  warnings.push(...match.warnings);
  return match.chosen;
}

/**
 * Turns on changed-block tracking on each disk of the VM that lacks it (VDI.enable_cbt);
 * returns their devices. A disk whose SR cannot track gets a warning and is read whole.
 */
async function enableCbt(xapi: XapiClient, vm: VmRecord, input: SnapshotInput, warnings: string[]): Promise<string[]> {
  const enabled: string[] = [];
  for (const { vbd, vdi } of await vmDisks(xapi, vm)) {
    if (vdi.cbt_enabled) continue;
    const device = vbd.device || `userdevice${vbd.userdevice}`;
    try {
      await xapi.enableCbt(vdi.$ref);
      enabled.push(device);
    } catch (error) {
      warnings.push(`changed-block tracking could not be turned on for ${device} (${errorInfo(error).message}): each backup reads it whole`);
    }
  }
  return enabled;
}

async function findOurVmSnapshot(xapi: XapiClient, vm: VmRecord, key: string): Promise<VmRecord | undefined> {
  for (const ref of vm.snapshots) {
    const snap = await xapi.getRecord('VM', ref).catch(() => undefined);
    if (snap?.other_config[TAG.job] === key) return snap;
  }
  return undefined;
}

async function takeVmSnapshot(xapi: XapiClient, vm: VmRecord, input: SnapshotInput, ctx: Ctx): Promise<VmRecord> {
  const started = Date.now();
  const ref = await xapi.callAsync<string>('VM.snapshot', vm.$ref, `${input.vm.name} (vmbackup ${input.stamp})`);
  // Tag first: from here on, a crash leaves a snapshot the next run finds and removes.
  await tagObject(xapi, 'VM', ref, snapshotTags(input, vm.uuid, ctx.origin, ctx.clock.now()));
  await xapi.call('VM.set_is_a_template', ref, false);
  ctx.log.info(`${input.vm.name}: snapshot taken in ${formatSeconds(Date.now() - started)}`);
  return xapi.getRecord('VM', ref);
}

async function findOurVdiSnapshot(xapi: XapiClient, vdi: VdiRecord, key: string): Promise<VdiRecord | undefined> {
  for (const ref of vdi.snapshots) {
    const snap = await xapi.getRecord('VDI', ref).catch(() => undefined);
    if (snap?.other_config[TAG.job] === key) return snap;
  }
  return undefined;
}

async function takeVdiSnapshot(xapi: XapiClient, vdi: VdiRecord, vm: VmRecord, input: SnapshotInput, ctx: Ctx): Promise<VdiRecord> {
  const ref = await xapi.callAsync<string>('VDI.snapshot', vdi.$ref, {});
  await tagObject(xapi, 'VDI', ref, snapshotTags(input, vm.uuid, ctx.origin, ctx.clock.now()));
  return xapi.getRecord('VDI', ref);
}

/** What the `.meta` file records, read from the source VM (VmBackup's `orig_uuid`s). */
async function metaRecords(xapi: XapiClient, vm: VmRecord): Promise<MetaRecords> {
  const disks = [];
  for (const { vbd, vdi } of await vmDisks(xapi, vm)) {
    const sr = vdi.SR === NULL_REF ? undefined : await xapi.getRecord('SR', vdi.SR).catch(() => undefined);
    disks.push({
      vbd: { uuid: vbd.uuid, device: vbd.device, userdevice: vbd.userdevice, bootable: vbd.bootable, mode: vbd.mode, type: vbd.type, unpluggable: vbd.unpluggable, empty: vbd.empty },
      vdi: {
        uuid: vdi.uuid,
        name_label: vdi.name_label,
        name_description: vdi.name_description,
        virtual_size: vdi.virtual_size,
        type: vdi.type,
        sharable: vdi.sharable,
        read_only: vdi.read_only,
        sr_uuid: sr?.uuid ?? '',
      },
    });
  }
  const vifs = [];
  for (const vifRef of vm.VIFs) {
    const vif = await xapi.getRecord('VIF', vifRef);
    const network = await xapi.getRecord('network', vif.network).catch(() => undefined);
    vifs.push({ uuid: vif.uuid, device: vif.device, network_name_label: network?.name_label ?? '', MTU: vif.MTU, MAC: vif.MAC, other_config: vif.other_config });
  }
  let osVersion: Record<string, string> | undefined;
  if (vm.guest_metrics !== NULL_REF) {
    osVersion = (await xapi.getRecord('VM_guest_metrics', vm.guest_metrics).catch(() => undefined))?.os_version;
  }
  const base = vm.other_config.base_template_name;
  return MetaRecords.parse({
    vm: {
      uuid: vm.uuid,
      name_label: vm.name_label,
      name_description: vm.name_description,
      memory_dynamic_max: vm.memory_dynamic_max,
      VCPUs_max: vm.VCPUs_max,
      VCPUs_at_startup: vm.VCPUs_at_startup,
      ...(base !== undefined ? { base_template_name: base } : {}),
      ...(osVersion !== undefined ? { os_version: osVersion } : {}),
    },
    disks,
    vifs,
  });
}
