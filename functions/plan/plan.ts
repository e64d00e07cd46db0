import { access, constants, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { Compression, VdiFormat } from '../../runtime/config/schema.js';
import { PermanentError } from '../../runtime/errors.js';
import { jobSubject } from '../../runtime/events.js';
import { defineFunction, subject } from '../../runtime/function.js';
import type { Ctx } from '../../runtime/function.js';
import { lockHeldMessage, otherRunsLock, pidAlive } from '../../runtime/storage/lock.js';
import { formatStamp, vmFolderName } from '../../runtime/storage/naming.js';
import { freeSpace } from '../../runtime/storage/space.js';
import type { XapiClient } from '../../runtime/xapi/client.js';
import type { VdiRecord, VmRecord } from '../../runtime/xapi/records.js';
import { BLOCK_HOLDER_PREFIX, START_OPS, TAG, blockHolders, destroySnapshotVdi, destroySnapshotVm, isLeftover, liftStartBlock, parseBlockReason } from '../../runtime/xapi/snapshots.js';
import { HostBackupInput } from '../host-backup/host-backup.js';
import { runStartHooks } from './run-start.js';
import { JobBase, VmRef } from '../job.js';
import { PoolDbInput } from '../pool-db/pool-db.js';
import { SnapshotInput } from '../snapshot/snapshot.js';
import { SelectionSources, duplicateNames, selectVms } from './select.js';
import type { Selection, SelectionWarning as SelectionIssue } from './select.js';

/**
 * The options of one run: what to back up and how. Built from the settings by the command
 * line or the gateway; carries no secret (connections are the worker's own business).
 *
 * @example { "backupDir": "/mnt/VmBackup/exports", "vmExports": [".*"], "vdiExports": [],
 *            "excludes": ["PRD-PRINT$"], "maxBackups": 4, "compress": "none", "format": "raw",
 *            "poolBackup": true, "hostBackup": false, "spaceThreshold": 20, "concurrency": 2,
 *            "vmRetries": 1, "haltedWithoutSnapshot": true, "idleTimeoutS": 300 }
 */
export const RunOptions = z.object({
  backupDir: z.string().min(1),
  vmExports: z.array(z.string()),
  vdiExports: z.array(z.string()),
  /** delta_exports: incremental backups into the chunk store. Absent = none. */
  deltaExports: z.array(z.string()).optional(),
  /** `cbt` for delta-exports. Absent = true. */
  cbt: z.boolean().optional(),
  excludes: z.array(z.string()),
  maxBackups: z.number().int().min(1),
  compress: Compression,
  format: VdiFormat,
  poolBackup: z.boolean(),
  hostBackup: z.boolean(),
  spaceThreshold: z.number().int().min(1).max(99),
  concurrency: z.number().int().min(1),
  vmRetries: z.number().int().min(0),
  haltedWithoutSnapshot: z.boolean(),
  idleTimeoutS: z.number().int().min(1),
  /** Leftover snapshots from another host are removed only after this many hours. */
  leftoverAgeHours: z.number().min(0).default(24),
  /** Verify each VM's backup set right after it is written (verify_after_backup); absent = XVA sets only. */
  verifyAfterBackup: z.boolean().optional(),
  /**
   * Where the lists come from (select.ts): which this request gave (an export entry of theirs that
   * matches no VM stops the run) and the config's export entries (the MAX of a VM the request
   * selects without one). Absent: every list counts as the config's.
   */
  selection: SelectionSources.optional(),
  /** Days a set that failed verification is kept aside before it is deleted (failed_keep_days). */
  failedKeepDays: z.number().int().min(1).optional(),
});
export type RunOptions = z.infer<typeof RunOptions>;

/**
 * plan — the first step of a run: settings + pool → the list of jobs. Checks that the backup
 * directory is writable and has more free space than `space_threshold` before anything is
 * snapshotted, removes leftovers of crashed runs (found by tag, never by name), resolves
 * excludes → vdi_exports → delta_exports → vm_exports (select.ts), and maps each VM to its folder.
 *
 * Subject `vmbackup.jobs.plan`.
 */
export const PlanInput = JobBase.extend({
  options: RunOptions,
  /** ISO time the run started: names the run's files (`stamp`). */
  startedAt: z.string(),
});
export type PlanInput = z.infer<typeof PlanInput>;

export const SelectionWarning = z.object({ entry: z.string(), list: z.string(), code: z.string().optional(), message: z.string() });

export const PlanOutput = JobBase.extend({
  pool: z.object({ uuid: z.string(), name: z.string() }),
  stamp: z.string(),
  backupDir: z.string(),
  vmJobs: z.array(SnapshotInput),
  poolDb: PoolDbInput.optional(),
  hostJobs: z.array(HostBackupInput),
  excludes: z.array(VmRef),
  warnings: z.array(SelectionWarning),
  /** What was cleaned up from earlier runs (snapshots destroyed, start blocks lifted). */
  cleaned: z.array(z.string()),
  concurrency: z.number().int().min(1),
  vmRetries: z.number().int().min(0),
});
export type PlanOutput = z.infer<typeof PlanOutput>;

export const PlanJob = subject(jobSubject('plan'), PlanInput);

export const plan = defineFunction({
  name: 'plan',
  description: 'Resolve the run: check the backup dir, clean leftovers, select VMs, make the jobs.',
  subject: PlanJob,
  output: PlanOutput,
  async handle(input, ctx) {
    const o = input.options;
    // The operator's run-start hooks come first; an abort ends the run here (HOOK_ABORTED).
    const hookWarnings = await runStartHooks({ runId: input.runId, startedAt: input.startedAt, backupDir: o.backupDir }, ctx);
    await checkBackupDir(o.backupDir, o.spaceThreshold);
    // An embedded `vmbackup` holding backup_dir's lock is not this run: do not work beside it.
    const held = await otherRunsLock(o.backupDir, { runId: input.runId, now: ctx.clock.now(), me: ctx.origin, staleHours: o.leftoverAgeHours });
    if (held !== undefined) {
      throw new PermanentError('LOCKED', lockHeldMessage(held), { ...held });
    }
    const xapi = await ctx.xapi();
    // Of the VDIs only snapshots can be leftovers: do not fetch every disk of a large pool.
    const [all, vdis] = await Promise.all([xapi.getAllRecords('VM'), xapi.getAllRecordsWhere('VDI', 'field "is_a_snapshot"="true"')]);
    const cleaned = await cleanLeftovers(xapi, all, vdis, input, ctx);
    const poolVms = selectableVms(all);
    const selection = selectVms(poolVms, selectOptions(o));
    if (selection.errors.length > 0) throw selectionError(selection.errors);
    const stamp = formatStamp(new Date(input.startedAt));
    const vmJobs = buildVmJobs(selection, poolVms, input, stamp);
    const hosts = o.hostBackup ? await xapi.hosts() : [];
    const common = { runId: input.runId, try: 1, backupDir: o.backupDir, stamp, maxBackups: o.maxBackups, idleTimeoutS: o.idleTimeoutS };
    const pool = xapi.pool;
    return {
      runId: input.runId,
      jobId: input.jobId,
      try: input.try,
      pool: { uuid: pool.uuid, name: pool.name_label },
      stamp,
      backupDir: o.backupDir,
      vmJobs,
      ...(o.poolBackup ? { poolDb: { ...common, jobId: 'pool-db' } } : {}),
      hostJobs: hosts.map((h) => ({ ...common, jobId: `host.${h.uuid}`, host: { uuid: h.uuid, name: h.name_label } })),
      excludes: selection.excludes.map((vm) => ({ uuid: vm.uuid, name: vm.name })),
      warnings: [
        ...selection.warnings.map((w) => ({ entry: w.entry, list: w.list, code: w.code, message: w.message })),
        ...hookWarnings.map((message) => ({ entry: 'run-start', list: 'hooks', message })),
      ],
      cleaned,
      concurrency: o.concurrency,
      vmRetries: o.vmRetries,
    };
  },
});

/** The VMs a selection chooses from: not dom0, not a template, not a snapshot. */
export function selectableVms(all: readonly VmRecord[]): { uuid: string; name: string }[] {
  return all.filter((vm) => !vm.is_control_domain && !vm.is_a_template && !vm.is_a_snapshot).map((vm) => ({ uuid: vm.uuid, name: vm.name_label }));
}

/** The selection's options of a run's options. */
export function selectOptions(o: RunOptions): Parameters<typeof selectVms>[1] {
  return { excludes: o.excludes, vdiExports: o.vdiExports, ...(o.deltaExports !== undefined ? { deltaExports: o.deltaExports } : {}), vmExports: o.vmExports, maxBackups: o.maxBackups, ...(o.selection !== undefined ? { sources: o.selection } : {}) };
}

/**
 * The error of a selection that must not run (select.ts: an invalid entry or regex, a
 * request's entry matching no VM): SELECTION, naming every entry, `data.errors` listing them.
 * The run is fatal (exit 2); the gateway answers 422 with the same messages.
 */
export function selectionError(errors: readonly SelectionIssue[]): PermanentError {
  const lines = errors.map((e) => `${e.list}: ${e.message}`);
  const message = lines.length === 1 ? `nothing backed up: ${lines[0]}` : `nothing backed up, ${lines.length} selection errors: ${lines.join('; ')}`;
  return new PermanentError('SELECTION', message, { errors: errors.map((e) => ({ entry: e.entry, list: e.list, code: e.code, message: e.message })) });
}

/** The selection as jobs: one per VM, with its folder (names shared by VMs get a suffix). */
export function buildVmJobs(selection: Selection, poolVms: { uuid: string; name: string }[], input: PlanInput, stamp: string): SnapshotInput[] {
  const o = input.options;
  const shared = duplicateNames(poolVms);
  const job = (vm: { uuid: string; name: string }, mode: 'vm' | 'vdi' | 'delta', maxBackups: number, disks: string[]): SnapshotInput => ({
    runId: input.runId,
    jobId: `vm.${vm.uuid}`,
    try: 1,
    vm: { uuid: vm.uuid, name: vm.name },
    mode,
    disks,
    backupDir: o.backupDir,
    folder: vmFolderName(vm.name, vm.uuid, { shared: shared.has(vm.name) }),
    stamp,
    maxBackups,
    compress: o.compress,
    format: o.format,
    spaceThreshold: o.spaceThreshold,
    // A delta-export always snapshots: the snapshot is the next run's CBT base.
    haltedWithoutSnapshot: mode === 'delta' ? false : o.haltedWithoutSnapshot,
    idleTimeoutS: o.idleTimeoutS,
    ...(mode === 'delta' ? { cbt: o.cbt ?? true } : {}),
    // Unset: XVA sets are verified (their chunk checksums make it cheap and sure); disks are not.
    verify: mode === 'delta' ? false : (o.verifyAfterBackup ?? mode === 'vm'),
    ...(o.failedKeepDays !== undefined ? { failedKeepDays: o.failedKeepDays } : {}),
  });
  return [
    ...selection.vdiExports.map((s) => job(s.vm, 'vdi', s.maxBackups, s.disks)),
    ...selection.deltaExports.map((s) => job(s.vm, 'delta', s.maxBackups, [])),
    ...selection.vmExports.map((s) => job(s.vm, 'vm', s.maxBackups, [])),
  ];
}

/** The backup directory must exist, take a file, and have space_threshold percent free. */
export async function checkBackupDir(dir: string, spaceThreshold: number): Promise<void> {
  try {
    await access(dir, constants.W_OK);
    // access() can lie on NFS with root squash: write a probe.
    const probe = path.join(dir, `.vmbackup-probe-${process.pid}`);
    await writeFile(probe, '');
    await rm(probe, { force: true });
  } catch (error) {
    const code = (error as { code?: string }).code ?? 'EIO';
    throw new PermanentError('BACKUP_DIR_NOT_WRITABLE', `backup_dir ${dir} is not a writable directory (${code})`, { backupDir: dir, errno: code }, { cause: error });
  }
  const space = await freeSpace(dir);
  if (space.freePercent < spaceThreshold) {
    throw new PermanentError(
      'SPACE_LOW',
      `backup_dir ${dir} has ${space.freePercent.toFixed(1)}% free, below space_threshold ${spaceThreshold}%: nothing backed up`,
      { backupDir: dir, freePercent: space.freePercent, spaceThreshold },
    );
  }
}

/**
 * Destroys snapshots (VMs and VDIs) left by crashed runs and lifts start blocks they left on
 * halted VMs that no live run holds (cleanStartBlock). Only objects carrying vmbackup's tags
 * are considered, and only those whose owner is gone (isLeftover); a VM *named* like a
 * snapshot is never touched.
 */
async function cleanLeftovers(xapi: XapiClient, vms: VmRecord[], vdis: VdiRecord[], input: PlanInput, ctx: Ctx): Promise<string[]> {
  const cleaned: string[] = [];
  const rule = { now: ctx.clock.now(), me: ctx.origin, currentRunId: input.runId, maxAgeHours: input.options.leftoverAgeHours, pidAlive };
  const destroyedVdis = new Set<string>();
  for (const vm of vms) {
    if (vm.is_a_snapshot && isLeftover(vm.other_config, rule)) {
      try {
        for (const uuid of await destroySnapshotVm(xapi, vm.$ref)) destroyedVdis.add(uuid);
        cleaned.push(`destroyed leftover snapshot "${vm.name_label}" (${vm.uuid}) of run ${vm.other_config[TAG.run]}`);
      } catch (error) {
        ctx.log.warn({ err: error }, `could not destroy leftover snapshot ${vm.uuid}: ${(error as Error).message}`);
      }
    }
    if (!vm.is_a_snapshot && !vm.is_a_template) cleaned.push(...(await cleanStartBlock(xapi, vm, rule)));
  }
  for (const vdi of vdis) {
    if (!vdi.is_a_snapshot || destroyedVdis.has(vdi.uuid) || !isLeftover(vdi.other_config, rule)) continue;
    // A VDI snapshot still attached to a snapshot VM goes with that VM.
    if (vdi.VBDs.length > 0) continue;
    try {
      await destroySnapshotVdi(xapi, vdi.$ref);
      cleaned.push(`destroyed leftover disk snapshot "${vdi.name_label}" (${vdi.uuid}) of run ${vdi.other_config[TAG.run]}`);
    } catch (error) {
      ctx.log.warn({ err: error }, `could not destroy leftover disk snapshot ${vdi.uuid}: ${(error as Error).message}`);
    }
  }
  for (const line of cleaned) ctx.log.info(line);
  return cleaned;
}

/**
 * The start block left on a halted VM by exports whose runs are gone. Each run exporting it
 * holds the block by a key in `other_config` (blockHolders): the keys of runs that are gone
 * are removed, and the block is lifted only when no live run holds it. A block with no holder
 * key at all (left by a version before holders) goes when the run named in its reason is gone.
 */
async function cleanStartBlock(xapi: XapiClient, vm: VmRecord, rule: Parameters<typeof isLeftover>[1]): Promise<string[]> {
  const cleaned: string[] = [];
  const holders = blockHolders(vm.other_config);
  if (holders.length === 0) {
    for (const op of START_OPS) {
      const tags = parseBlockReason(vm.blocked_operations[op] ?? '');
      if (tags === undefined || !isLeftover(tags, rule)) continue;
      await xapi.call('VM.remove_from_blocked_operations', vm.$ref, op);
      cleaned.push(`lifted the ${op} block left on "${vm.name_label}" by run ${tags[TAG.run]}`);
    }
    return cleaned;
  }
  let live = 0;
  for (const [key, reason] of holders) {
    const tags = parseBlockReason(reason);
    // A value that is no block reason of ours cannot be judged: nothing could ever lift it.
    if (tags !== undefined && !isLeftover(tags, rule)) {
      live += 1;
      continue;
    }
    await xapi.call('VM.remove_from_other_config', vm.$ref, key);
    cleaned.push(`dropped the hold of run ${tags?.[TAG.run] ?? key.slice(BLOCK_HOLDER_PREFIX.length)} on the start block of "${vm.name_label}"`);
  }
  if (live > 0) return cleaned;
  const ops = await liftStartBlock(xapi, vm.$ref);
  if (ops.length > 0) cleaned.push(`lifted the ${ops.join(', ')} block left on "${vm.name_label}" once no run held it`);
  return cleaned;
}
