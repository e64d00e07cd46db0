import { z } from 'zod';
import type { RunOptions } from '../../functions/plan/plan.js';
import { isSimpleName, parseEntry } from '../../functions/plan/select.js';
import { Settings } from '../config/schema.js';
import { ConfigError } from '../errors.js';

/**
 * What a caller of the gateway may choose for a run (`POST /v1/runs`, the body of a signed
 * webhook): the run options of the command line, in the config file's key names, each
 * optional and merged over the gateway's own settings. Unknown keys are refused (a typo such
 * as `vm_export` must not silently back up the whole pool). `backup_dir` is not among them:
 * where backups go is the operator's decision, made in the gateway's config.
 *
 * Selection entries are checked with the selection's own parser: a malformed entry is a 400
 * naming the entry. An invalid regex, or an entry that matches no VM of the pool, is the
 * selection's error: 422 (app.ts, `checkSelection`).
 *
 * @example
 *   { "vm_exports": ["DEV-web1", "PRD-.*:7"], "excludes": ["PRD-print$"], "max_backups": 4,
 *     "compress": "zstd", "pool_backup": true }
 */
const Entry = z
  .string()
  .min(1)
  .max(1000)
  .superRefine((entry, ctx) => {
    try {
      parseEntry(entry);
    } catch (error) {
      if (error instanceof ConfigError && error.data.reason === 'invalid-regex') return;
      ctx.addIssue({ code: 'custom', message: (error as Error).message });
    }
  });
const Entries = z.array(Entry).max(10_000);

/** The type a settings key has, without its default (so "absent" stays absent). */
function key<K extends keyof typeof Settings.shape>(k: K) {
  const schema = Settings.shape[k] as z.ZodType;
  return (schema instanceof z.ZodDefault ? schema.unwrap() : schema) as unknown as (typeof Settings.shape)[K] extends z.ZodDefault<infer T> ? T : never;
}

export const RunRequestFields = {
  /** `NAME[:MAX]` entries backed up as whole VMs (XVA). */
  vm_exports: Entries.optional(),
  /** `NAME[:MAX[:DISK;DISK]]` entries whose disks are exported (raw/vhd). */
  vdi_exports: Entries.optional(),
  /** `NAME[:MAX]` entries backed up as points of the chunk store (incremental; MAX = points kept). */
  delta_exports: Entries.optional(),
  /** Entries never backed up. */
  excludes: Entries.optional(),
  max_backups: key('max_backups').optional(),
  /** `none`, `gzip`, `zstd`; `true` means gzip and `false` none, as in VmBackup's config. */
  compress: z.union([key('compress'), z.boolean()]).optional(),
  vdi_export_format: key('vdi_export_format').optional(),
  pool_backup: key('pool_backup').optional(),
  host_backup: key('host_backup').optional(),
  space_threshold: key('space_threshold').optional(),
  concurrency: key('concurrency').optional(),
  vm_retries: key('vm_retries').optional(),
  halted_without_snapshot: key('halted_without_snapshot').optional(),
  export_idle_timeout: key('export_idle_timeout').optional(),
  /** Re-read each backup set once written (the verify phase); absent: the worker's setting (default: XVA sets). */
  verify_after_backup: z.boolean().optional(),
};

export const RunRequest = z.strictObject(RunRequestFields).meta({ description: 'Run options, in the config file’s key names; each is optional and defaults to the gateway’s settings.' });
export type RunRequest = z.infer<typeof RunRequest>;

/**
 * The run's options: the request over the gateway's defaults. The selection is one thing:
 * when the request names `vm_exports`, `vdi_exports` or `delta_exports`, its lists replace the configured
 * ones (a list it leaves out is empty), so `{"vdi_exports": ["web1:-1:xvdb"]}` backs up only
 * web1's disk; `excludes` replaces the configured excludes only when given. The lists given
 * are the request's (`selection.requested`: an entry matching no VM is an error); the
 * configured export lists still give the MAX of the VMs they select.
 *
 * @example runOptionsFrom(defaults, { vm_exports: ['web1'], max_backups: 2 })
 *   // → { ...defaults, vmExports: ['web1'], vdiExports: [], maxBackups: 2 }
 */
export function runOptionsFrom(defaults: RunOptions, req: RunRequest): RunOptions {
  const selects = req.vm_exports !== undefined || req.vdi_exports !== undefined || req.delta_exports !== undefined;
  const compress = req.compress === undefined ? defaults.compress : req.compress === true ? 'gzip' : req.compress === false ? 'none' : req.compress;
  return {
    ...defaults,
    vmExports: selects ? (req.vm_exports ?? []) : defaults.vmExports,
    vdiExports: selects ? (req.vdi_exports ?? []) : defaults.vdiExports,
    ...deltaExportsFrom(defaults, req, selects),
    excludes: req.excludes ?? defaults.excludes,
    maxBackups: req.max_backups ?? defaults.maxBackups,
    compress,
    format: req.vdi_export_format ?? defaults.format,
    poolBackup: req.pool_backup ?? defaults.poolBackup,
    hostBackup: req.host_backup ?? defaults.hostBackup,
    spaceThreshold: req.space_threshold ?? defaults.spaceThreshold,
    concurrency: req.concurrency ?? defaults.concurrency,
    vmRetries: req.vm_retries ?? defaults.vmRetries,
    haltedWithoutSnapshot: req.halted_without_snapshot ?? defaults.haltedWithoutSnapshot,
    idleTimeoutS: req.export_idle_timeout ?? defaults.idleTimeoutS,
    ...(req.verify_after_backup !== undefined ? { verifyAfterBackup: req.verify_after_backup } : {}),
    selection: {
      requested: [
        ...(req.excludes !== undefined ? [{ list: 'excludes' as const, where: 'request (excludes)' }] : []),
        ...(selects
          ? [
              { list: 'vdi_exports' as const, where: 'request (vdi_exports)' },
              { list: 'delta_exports' as const, where: 'request (delta_exports)' },
              { list: 'vm_exports' as const, where: 'request (vm_exports)' },
            ]
          : []),
      ],
      config: defaults.selection?.config ?? [],
      maxBackups: req.max_backups !== undefined ? 'request (max_backups)' : (defaults.selection?.maxBackups ?? 'the gateway\'s max_backups'),
    },
  };
}

/** The request's delta_exports, emptied when it selects by other lists only; absent when neither side has any. */
function deltaExportsFrom(defaults: RunOptions, req: RunRequest, selects: boolean): Pick<RunOptions, 'deltaExports'> {
  const list = selects ? (req.delta_exports ?? (defaults.deltaExports !== undefined ? [] : undefined)) : defaults.deltaExports;
  return list !== undefined ? { deltaExports: list } : {};
}

/**
 * A selection entry that selects the VM called exactly `name` and nothing else. A simple name
 * (letters, digits, space, `-`, `_`) is matched by equality already; any other name would be
 * read as a regex (`web.1` would also match `webX1`, `a:3` would be a MAX field), so each of
 * its characters other than letters and digits is escaped and the match is anchored with
 * `\Z`. Spaces and control characters are written `\UXXXXXXXX` so that the entry's trimming
 * cannot eat them.
 *
 * @example exactNameEntry('DEV-web1')   // 'DEV-web1'
 * @example exactNameEntry('web.1')      // 'web\\.1\\Z'
 * @example exactNameEntry('db:2 (old)') // 'db\\:2\\U00000020\\(old\\)\\Z'
 */
export function exactNameEntry(name: string): string {
  if (isSimpleName(name) && name === name.trim()) return name;
  let out = '';
  for (const ch of name) {
    const cp = ch.codePointAt(0)!;
    if (/[\p{L}\p{N}]/u.test(ch)) out += ch;
    else if (/[\s\p{C}]/u.test(ch)) out += `\\U${cp.toString(16).toUpperCase().padStart(8, '0')}`;
    else out += `\\${ch}`;
  }
  return `${out}\\Z`;
}
