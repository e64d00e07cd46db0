import { z } from 'zod';
import { Compression, VdiFormat } from '../runtime/config/schema.js';

/**
 * The fields every job message carries, so any phase can be re-run from its message alone
 * and its outcome is attributed to one job of one run.
 *
 * - `runId`: the run (`YYYYMMDD-HHMMSS-xxxx`, safe as a NATS subject token).
 * - `jobId`: the job within the run: `vm.<vm uuid>`, `pool-db`, `host.<host uuid>`, `plan`.
 * - `try`: which attempt of the job's pipeline this is (a VM whose export failed on a
 *   transient error is backed up again from a new snapshot, with `try` + 1).
 *
 * @example { "runId": "20261126-083000-7f3a", "jobId": "vm.5c1e…", "try": 1 }
 */
export const JobBase = z.object({
  runId: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'runId: letters, digits, - and _ only'),
  jobId: z.string().regex(/^[A-Za-z0-9_.-]{1,128}$/, 'jobId: letters, digits, ., - and _ only'),
  try: z.number().int().min(1).default(1),
});
export type JobBase = z.infer<typeof JobBase>;

/** A VM as the plan found it. */
export const VmRef = z.object({
  uuid: z.string().min(1),
  name: z.string(),
});
export type VmRef = z.infer<typeof VmRef>;

/**
 * One VM's backup, as decided by the plan: everything the phases after it need. It travels
 * unchanged from snapshot to prune inside each phase's message.
 *
 * @example
 *   { "vm": {"uuid":"…","name":"DEV-MYSQL"}, "mode": "vdi", "disks": ["xvda","xvdb"],
 *     "backupDir": "/mnt/VmBackup/exports", "folder": "DEV-MYSQL", "stamp": "20261126-083000",
 *     "maxBackups": 7, "compress": "none", "format": "vhd", "spaceThreshold": 20,
 *     "haltedWithoutSnapshot": true, "idleTimeoutS": 300 }
 */
export const VmJob = z.object({
  vm: VmRef,
  /**
   * `vm`: the whole VM as an XVA (vm-export); `vdi`: chosen disks as raw/vhd (vdi-export);
   * `delta`: every disk as a point of the chunk store, reading only what changed (delta-export).
   */
  mode: z.enum(['vm', 'vdi', 'delta']),
  /** Devices (`xvda`…) of a vdi-export; empty for a vm-export. */
  disks: z.array(z.string().min(1)),
  /** Absolute path of backup_dir. */
  backupDir: z.string().min(1),
  /** The VM's folder inside backupDir: a single path component (runtime/storage/naming.ts). */
  folder: z.string().min(1).refine((f) => !f.includes('/') && f !== '.' && f !== '..', 'folder must be one path component'),
  /** `YYYYMMDD-HHMMSS` (UTC) of the run: names the backup set's files. */
  stamp: z.string().regex(/^\d{8}-\d{6}$/),
  maxBackups: z.number().int().min(1),
  compress: Compression,
  format: VdiFormat,
  /** Percent of the backup filesystem that must stay free before this VM starts. */
  spaceThreshold: z.number().int().min(1).max(99),
  haltedWithoutSnapshot: z.boolean(),
  /** Seconds without data from XAPI before an export is abandoned. */
  idleTimeoutS: z.number().int().min(1),
  /** Verify the set once written (verify_after_backup): the verify phase's `verify`. Absent = false. */
  verify: z.boolean().optional(),
  /** Days a set that failed verification stays in `<folder>/.failed/` (failed_keep_days). Absent = 30. */
  failedKeepDays: z.number().int().min(1).optional(),
  /** delta-export: changed-block tracking on the VM's disks (the `cbt` setting). Absent = true. */
  cbt: z.boolean().optional(),
});
export type VmJob = z.infer<typeof VmJob>;

/** A file a phase wrote, relative to the VM folder (or to backupDir for pool-db/hosts). */
export const WrittenFile = z.object({
  name: z.string().min(1),
  format: z.enum(['xva', 'xva.gz', 'xva.zst', 'raw', 'vhd', 'meta', 'manifest', 'db', 'xbk']),
  size: z.number().int().min(0),
  /** XXH64 of the file's bytes, 16 uppercase hex digits (absent for small text files). */
  xxh64: z.string().regex(/^[0-9A-F]{16}$/).optional(),
  /** Device of the disk, for vdi-exports. */
  disk: z.string().optional(),
  /**
   * The export ran the verify phase's format check on the bytes as it wrote them (an XVA with
   * verify_after_backup), and they passed: what it found (`2 disk(s), … in 12 chunks, xxhash
   * checksums`). `xxh64` is then the hash of the very bytes checked.
   */
  checkedAsWritten: z.object({ detail: z.string() }).optional(),
});
export type WrittenFile = z.infer<typeof WrittenFile>;
