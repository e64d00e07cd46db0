import { splitTopLevel } from './ini.js';

/** The three VmBackup selection lists. */
export const ListKey = { vm_exports: 'vm_exports', vdi_exports: 'vdi_exports', excludes: 'excludes' } as const;
export type ListKey = (typeof ListKey)[keyof typeof ListKey];

/**
 * One entry of `vm_exports`, `vdi_exports` or `excludes`: `NAME[:MAX[:DISK;DISK]]`.
 *
 * @example
 *   parseEntry('DEV-MYSQL:-1:xvdb', 'vdi_exports')
 *   // → { ok: true, entry: { raw: 'DEV-MYSQL:-1:xvdb', name: 'DEV-MYSQL', maxBackups: -1, disks: ['xvdb'] }, warnings: [] }
 */
export interface SelectionEntry {
  /** The entry as written in its list. */
  raw: string;
  /** VM name or Python-style regex, `\:` resolved to `:`. */
  name: string;
  /**
   * Backups to keep for the VMs it matches. `-1` means "the global max_backups" and is kept
   * as -1 for the selection to resolve (VmBackup kept one backup instead: defect 5);
   * `undefined` when not given (also the global value).
   */
  maxBackups?: number;
  /** Disks of a vdi-export; `undefined` when not given (the selection defaults to `xvda`). */
  disks?: string[];
}

export type EntryResult = { ok: true; entry: SelectionEntry; warnings: string[] } | { ok: false; reason: string };

const DISK = /^[A-Za-z0-9_.-]+$/;

/**
 * Parse one list entry. Fields are separated by `:` outside regex brackets, so `(?:a|b):5` is
 * the regex `(?:a|b)` with 5 backups; a `:` in a VM name is written `\:`. Invalid MAX or disks
 * are errors (VmBackup only warned and then ignored the field); fields that mean nothing for
 * `list` (MAX on an exclude, disks on a vm-export) are warnings.
 */
export function parseEntry(raw: string, list: ListKey): EntryResult {
  const fields = splitTopLevel(raw, ':', ':').map((field) => field.trim());
  const [name = '', max, disks] = fields;
  if (fields.length > 3) {
    return { ok: false, reason: 'too many ":" fields (NAME[:MAX[:DISK;DISK]]; write a ":" inside a name as "\\:")' };
  }
  if (name === '') return { ok: false, reason: 'the VM name or regex before ":" is empty' };

  const entry: SelectionEntry = { raw, name };
  const warnings: string[] = [];
  if (max !== undefined) {
    if (!/^[+-]?\d+$/.test(max)) return { ok: false, reason: `max_backups ${JSON.stringify(max)} is not an integer (use -1 for the global max_backups)` };
    const n = Number(max);
    if (n !== -1 && !(n >= 1 && Number.isSafeInteger(n))) return { ok: false, reason: `max_backups ${max} must be -1 (the global max_backups) or an integer >= 1` };
    entry.maxBackups = n;
  }
  if (disks !== undefined) {
    const list = disks.split(';').map((d) => d.trim()).filter((d) => d !== '');
    const bad = list.find((d) => !DISK.test(d));
    if (bad !== undefined) return { ok: false, reason: `disk ${JSON.stringify(bad)} is not a device name such as xvda (disks are separated by ";")` };
    if (list.length > 0) entry.disks = list;
  }

  if (list === 'excludes' && (entry.maxBackups !== undefined || entry.disks)) {
    warnings.push(`excludes entry ${JSON.stringify(raw)}: only the name is used, ":${fields.slice(1).join(':')}" is ignored`);
  }
  if (list === 'vm_exports' && entry.disks) {
    warnings.push(`vm_exports entry ${JSON.stringify(raw)}: disks are ignored (a vm-export saves the whole VM; use vdi_exports for single disks)`);
  }
  return { ok: true, entry, warnings };
}
