import { createHash } from 'node:crypto';
import { PermanentError } from '../errors.js';
import { WRITER_TAG_MAX } from './writer.js';

/**
 * Names on disk: time stamps, backup file names, VM folder names. Pure: no fs, no clock.
 *
 * ## Layout of backup_dir
 *
 * ```
 * <backup_dir>/<vm folder>/backup_<stamp>.xva            vm-export (also .xva.gz gzip, .xva.zst zstd)
 * <backup_dir>/<vm folder>/backup_<stamp>.meta           its VmBackup-style metadata
 * <backup_dir>/<vm folder>/backup_<disk>_<stamp>.raw     vdi-export of one disk (or .vhd)
 * <backup_dir>/<vm folder>/backup_<disk>_<stamp>.meta    its metadata
 * <backup_dir>/<vm folder>/backup_<stamp>.json           manifest: one per backup set, written last
 * <backup_dir>/POOL_DB/metadata_<stamp>.db               pool database dump
 * <backup_dir>/HOSTS/hosts_<host>_<stamp>.xbk            one host (dom0) backup
 * <any of the above>.partial                             being written; renamed when complete
 * ```
 *
 * A backup set is one VM's backup in one run: every file of the set carries the same stamp,
 * whatever its number of disks.
 *
 * ## Stamps
 *
 * | form                 | example           | written by | time                              |
 * |----------------------|-------------------|------------|-----------------------------------|
 * | `YYYYMMDD-HHMMSS`    | `20240102-030405` | vmbackup   | UTC                               |
 * | `MMDDYYYY-HHMMSS`    | `01022024-030405` | VmBackup   | local time of the dom0 that wrote it (`legacyTimeZone`, default UTC) |
 *
 * The two forms cannot be confused: years must lie in 1970–9999, so a new stamp starts with
 * `19`..`99` (never a month) and a legacy one with `01`..`12` (never such a year). A string
 * that is valid in neither form is not a stamp (`20241301-…`, `02302024-…`, `…-246000`).
 * Legacy names are only recognised in the forms VmBackup wrote (no `.partial`, no `.json`,
 * no `.xva.zst`, no host name in `hosts_…`); new names only with new stamps.
 *
 * ## VM folder names ({@link vmFolderName})
 *
 * | VM name                         | folder                          | why                                  |
 * |---------------------------------|---------------------------------|--------------------------------------|
 * | `DEV-web3`, `Café 1`, `web (old)` | unchanged                     | safe: VmBackup's folder is reused     |
 * | `a/b`, `a\b`                    | `a_b~<h>`                       | separators                           |
 * | `../x`                          | `_._x~<h>`                      | leading dot, separator               |
 * | `.`, `..`, `.hidden`            | `_~<h>`, `__~<h>`, `_hidden~<h>` | leading dot, trailing dot           |
 * | `web. `, `web.`                 | `web__~<h>`, `web_~<h>`         | trailing dots/spaces (SMB drops them) |
 * | `a:b`, `a*b`, `a?b`, `a"b`, `a<b`, `a>b`, `a\|b` | `a_b~<h>`      | not allowed on SMB shares            |
 * | NUL, control chars, U+2028/9, lone surrogates | `_` each + `~<h>` |                                   |
 * | not NFC (decomposed `é`)        | NFC form + `~<h>`               | two spellings never share a folder   |
 * | longer than 255 bytes in UTF-8  | cut to fit (by code point) + `~<h>` | one path component                |
 * | `""`                            | `_~<h>`                         |                                      |
 * | ends in `~` + 8 hex digits      | unchanged + `~<h>`              | could be taken for one of our suffixes |
 * | any of the above, `shared: true` | … + `~<first 8 hex of uuid>`   | several VMs carry this name          |
 *
 * `<h>` is the first 8 hex digits of sha256 of the original name (UTF-8), so different unsafe
 * names never share a folder (`a/b` → `a_b~…`, while `a_b` stays `a_b`). Unicode letters are
 * kept (NFC), only the byte length is bounded. Names are compared by exact bytes: on a
 * case-insensitive share (SMB) `Web` and `web` would still meet; that is not handled.
 *
 * `POOL_DB` and `HOSTS` are also valid VM names. A VM called so shares the folder with the
 * pool DB / host backups, as it did with VmBackup; their files never collide because every
 * parser requires its own prefix (`backup_`, `metadata_`, `hosts_`) and ignores the rest.
 */

/** Folder of pool database dumps inside backup_dir. */
export const POOL_DB_FOLDER = 'POOL_DB';
/** Folder of host (dom0) backups inside backup_dir. */
export const HOSTS_FOLDER = 'HOSTS';
/** Suffix of a file being written; it is renamed to its final name once complete. */
export const PARTIAL_SUFFIX = '.partial';
/** Bytes allowed in one path component (ext4, XFS, NFS, SMB). */
export const MAX_COMPONENT_BYTES = 255;
/** A disk (VBD device) name as used in entries and file names: `xvda`, `hdb`, `sda`, `0`. */
export const DISK_NAME_RE = /^[A-Za-z0-9]+$/;

export const VM_EXPORT_FORMATS = ['xva', 'xva.gz', 'xva.zst'] as const;
export const VDI_EXPORT_FORMATS = ['raw', 'vhd'] as const;
export type VmExportFormat = (typeof VM_EXPORT_FORMATS)[number];
export type VdiExportFormat = (typeof VDI_EXPORT_FORMATS)[number];
export type BackupFormat = VmExportFormat | VdiExportFormat;

/** Options for reading VmBackup's legacy stamps. */
export interface StampOptions {
  /**
   * IANA zone VmBackup's dom0 ran in (its stamps are local time), e.g. `Europe/Paris`.
   * Default `UTC`. Only used for legacy stamps.
   */
  legacyTimeZone?: string;
}

export interface ParsedStamp {
  date: Date;
  legacy: boolean;
}

const STAMP_RE = /^(\d{8})-(\d{2})(\d{2})(\d{2})$/;
const MIN_YEAR = 1970;
const MAX_YEAR = 9999;

function pad(n: number, width: number): string {
  return String(n).padStart(width, '0');
}

/**
 * The stamp of new files, in UTC, to the second.
 *
 * @example formatStamp(new Date('2024-01-02T03:04:05.678Z')) // '20240102-030405'
 */
export function formatStamp(date: Date): string {
  const t = date.getTime();
  if (Number.isNaN(t)) throw new PermanentError('INVALID_DATE', 'formatStamp: invalid date');
  const y = date.getUTCFullYear();
  if (y < MIN_YEAR || y > MAX_YEAR) throw new PermanentError('INVALID_DATE', `formatStamp: year ${y} is outside ${MIN_YEAR}-${MAX_YEAR}`);
  return (
    pad(y, 4) + pad(date.getUTCMonth() + 1, 2) + pad(date.getUTCDate(), 2) + '-' +
    pad(date.getUTCHours(), 2) + pad(date.getUTCMinutes(), 2) + pad(date.getUTCSeconds(), 2)
  );
}

/**
 * VmBackup's stamp `MMDDYYYY-HHMMSS` for `date` in `timeZone` (default UTC). vmbackup never
 * writes it; tests and the simulator use it to lay out VmBackup folders.
 *
 * @example formatLegacyStamp(new Date('2024-01-02T03:04:05Z')) // '01022024-030405'
 */
export function formatLegacyStamp(date: Date, timeZone = 'UTC'): string {
  const t = date.getTime();
  if (Number.isNaN(t)) throw new PermanentError('INVALID_DATE', 'formatLegacyStamp: invalid date');
  const w = new Date(t + zoneOffsetMs(timeZone, t));
  return (
    pad(w.getUTCMonth() + 1, 2) + pad(w.getUTCDate(), 2) + pad(w.getUTCFullYear(), 4) + '-' +
    pad(w.getUTCHours(), 2) + pad(w.getUTCMinutes(), 2) + pad(w.getUTCSeconds(), 2)
  );
}

function validDate(y: number, m: number, d: number): boolean {
  if (y < MIN_YEAR || y > MAX_YEAR || m < 1 || m > 12 || d < 1) return false;
  return d <= new Date(Date.UTC(y, m, 0)).getUTCDate();
}

// A cache of formatters only: building an Intl.DateTimeFormat is slow, and its result never changes.
const zoneFormatters = new Map<string, Intl.DateTimeFormat>();

/** Offset of `timeZone` from UTC at instant `utcMs`, in ms (positive east of Greenwich). */
function zoneOffsetMs(timeZone: string, utcMs: number): number {
  if (timeZone === 'UTC') return 0;
  let dtf = zoneFormatters.get(timeZone);
  if (!dtf) {
    try {
      dtf = new Intl.DateTimeFormat('en-US', {
        timeZone, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric',
        hour: 'numeric', minute: 'numeric', second: 'numeric',
      });
    } catch (cause) {
      throw new PermanentError('INVALID_TIME_ZONE', `unknown time zone "${timeZone}" (expected an IANA name such as Europe/Paris)`, { timeZone }, { cause });
    }
    zoneFormatters.set(timeZone, dtf);
  }
  const parts: Record<string, number> = {};
  for (const p of dtf.formatToParts(new Date(utcMs))) if (p.type !== 'literal') parts[p.type] = Number(p.value);
  const wall = Date.UTC(parts.year!, parts.month! - 1, parts.day!, parts.hour!, parts.minute!, parts.second!);
  return wall - Math.floor(utcMs / 1000) * 1000;
}

/** The instant at which wall clock time `wallMs` (fields read as UTC) was shown in `timeZone`. */
function wallToUtc(wallMs: number, timeZone: string): number {
  const first = zoneOffsetMs(timeZone, wallMs);
  const guess = wallMs - first;
  const second = zoneOffsetMs(timeZone, guess);
  // Across a DST change the offset at the guess differs; the second reading is the right one
  // (for a skipped or repeated hour, either is a fair reading of an ambiguous wall time).
  return second === first ? guess : wallMs - second;
}

/**
 * Reads a stamp in either form; null when `s` is not a valid stamp.
 *
 * @example parseStamp('20240102-030405') // { date: 2024-01-02T03:04:05Z, legacy: false }
 * @example parseStamp('01022024-030405', { legacyTimeZone: 'Europe/Paris' }) // { date: 2024-01-02T02:04:05Z, legacy: true }
 */
export function parseStamp(s: string, opts: StampOptions = {}): ParsedStamp | null {
  const m = STAMP_RE.exec(s);
  if (!m) return null;
  const d8 = m[1]!;
  const hh = Number(m[2]);
  const mi = Number(m[3]);
  const ss = Number(m[4]);
  if (hh > 23 || mi > 59 || ss > 59) return null;
  const ny = Number(d8.slice(0, 4));
  const nm = Number(d8.slice(4, 6));
  const nd = Number(d8.slice(6, 8));
  if (validDate(ny, nm, nd)) return { date: new Date(Date.UTC(ny, nm - 1, nd, hh, mi, ss)), legacy: false };
  const lm = Number(d8.slice(0, 2));
  const ld = Number(d8.slice(2, 4));
  const ly = Number(d8.slice(4, 8));
  if (validDate(ly, lm, ld)) {
    const wall = Date.UTC(ly, lm - 1, ld, hh, mi, ss);
    return { date: new Date(wallToUtc(wall, opts.legacyTimeZone ?? 'UTC')), legacy: true };
  }
  return null;
}

function requireNewStamp(stamp: string): void {
  const p = parseStamp(stamp);
  if (!p || p.legacy) throw new PermanentError('INVALID_STAMP', `"${stamp}" is not a YYYYMMDD-HHMMSS stamp`, { stamp });
}

function requireDisk(disk: string): void {
  if (!DISK_NAME_RE.test(disk)) throw new PermanentError('INVALID_DISK', `invalid disk name "${disk}" (letters and digits only)`, { disk });
}

/**
 * Name of a data file. vm-export formats take no disk; vdi-export formats need one.
 *
 * @example dataFileName('20240102-030405', 'xva.zst')        // 'backup_20240102-030405.xva.zst'
 * @example dataFileName('20240102-030405', 'raw', 'xvdb')    // 'backup_xvdb_20240102-030405.raw'
 */
export function dataFileName(stamp: string, format: BackupFormat, disk?: string): string {
  requireNewStamp(stamp);
  if ((VM_EXPORT_FORMATS as readonly string[]).includes(format)) {
    if (disk !== undefined) throw new PermanentError('INVALID_NAME', `format ${format} is a vm-export: it takes no disk`, { format, disk });
    return `backup_${stamp}.${format}`;
  }
  if ((VDI_EXPORT_FORMATS as readonly string[]).includes(format)) {
    if (disk === undefined) throw new PermanentError('INVALID_NAME', `format ${format} is a vdi-export: it needs a disk`, { format });
    requireDisk(disk);
    return `backup_${disk}_${stamp}.${format}`;
  }
  throw new PermanentError('INVALID_NAME', `unknown backup format "${String(format)}"`, { format });
}

/**
 * Name of a `.meta` file: one per vm-export, one per disk of a vdi-export.
 *
 * @example metaFileName('20240102-030405')          // 'backup_20240102-030405.meta'
 * @example metaFileName('20240102-030405', 'xvda')  // 'backup_xvda_20240102-030405.meta'
 */
export function metaFileName(stamp: string, disk?: string): string {
  requireNewStamp(stamp);
  if (disk === undefined) return `backup_${stamp}.meta`;
  requireDisk(disk);
  return `backup_${disk}_${stamp}.meta`;
}

/**
 * Name of the manifest of a backup set (written last: the set's commit point).
 *
 * @example manifestFileName('20240102-030405') // 'backup_20240102-030405.json'
 */
export function manifestFileName(stamp: string): string {
  requireNewStamp(stamp);
  return `backup_${stamp}.json`;
}

/**
 * Name of a file being written: `<name>.<writer tag>.partial` (runtime/storage/writer.ts), so
 * the next run can tell a dead writer's file from a live one's. Without a tag, the name of
 * earlier versions (`<name>.partial`), whose writer is unknown.
 *
 * @example partialFileName('backup_20240102-030405.xva', 'w1a2b3c4d-4242-8123-9f8e7d6c-1') // 'backup_20240102-030405.xva.w1a2b3c4d-4242-8123-9f8e7d6c-1.partial'
 * @example partialFileName('backup_20240102-030405.xva') // 'backup_20240102-030405.xva.partial'
 */
export function partialFileName(name: string, writer?: string): string {
  return writer === undefined ? name + PARTIAL_SUFFIX : `${name}.${writer}${PARTIAL_SUFFIX}`;
}

const WRITER_PART_RE = /\.(w[0-9a-f]{8}-\d{1,10}-\d{1,20}-[0-9a-f]{8}-\d{1,10})$/;

/**
 * A `.partial` name → the final name and the writer tag (absent for earlier versions'
 * untagged partials); null when `name` is not a partial.
 *
 * @example splitPartial('metadata_20240102-030405.db.w1a2b3c4d-42-81-9f8e7d6c-1.partial') // { final: 'metadata_20240102-030405.db', writer: 'w1a2b3c4d-42-81-9f8e7d6c-1' }
 */
export function splitPartial(name: string): { final: string; writer?: string } | null {
  if (!name.endsWith(PARTIAL_SUFFIX)) return null;
  const inner = name.slice(0, -PARTIAL_SUFFIX.length);
  const m = WRITER_PART_RE.exec(inner);
  return m ? { final: inner.slice(0, m.index), writer: m[1]! } : { final: inner };
}

export type BackupFileKind = 'data' | 'meta' | 'manifest' | 'partial';

/** What a file name in a VM folder says about itself. */
export interface BackupFileInfo {
  name: string;
  stamp: string;
  legacy: boolean;
  date: Date;
  kind: BackupFileKind;
  /** Data files (and partial data files). */
  format?: BackupFormat;
  /** vdi-export files. */
  disk?: string;
  /** For `.partial` files: what the file becomes once complete. */
  partialOf?: Exclude<BackupFileKind, 'partial'>;
  /** For `.partial` files: the writer's tag (runtime/storage/writer.ts); absent for earlier versions' partials. */
  writer?: string;
}

const BACKUP_RE = /^backup_(?:([A-Za-z0-9]+)_)?(\d{8}-\d{6})\.(xva|xva\.gz|xva\.zst|raw|vhd|meta|json)$/;

/**
 * Reads a file name of a VM folder; null for anything that is not ours (never act on those).
 *
 * @example parseBackupFileName('backup_xvdb_20240102-030405.vhd.partial')
 *   // { stamp: '20240102-030405', legacy: false, kind: 'partial', partialOf: 'data', format: 'vhd', disk: 'xvdb', … }
 * @example parseBackupFileName('backup_01022024-030405.xva.gz') // { legacy: true, kind: 'data', format: 'xva.gz', … }
 * @example parseBackupFileName('notes.txt') // null
 */
export function parseBackupFileName(name: string, opts: StampOptions = {}): BackupFileInfo | null {
  const split = splitPartial(name);
  const partial = split !== null;
  const inner = split?.final ?? name;
  const m = BACKUP_RE.exec(inner);
  if (!m) return null;
  const disk = m[1];
  const stamp = m[2]!;
  const ext = m[3]!;
  const parsed = parseStamp(stamp, opts);
  if (!parsed) return null;
  let kind: Exclude<BackupFileKind, 'partial'>;
  let format: BackupFormat | undefined;
  if (ext === 'meta') kind = 'meta';
  else if (ext === 'json') kind = 'manifest';
  else {
    kind = 'data';
    format = ext as BackupFormat;
  }
  const vdi = format === 'raw' || format === 'vhd';
  if (format !== undefined && vdi !== (disk !== undefined)) return null;
  if (kind === 'manifest' && disk !== undefined) return null;
  // VmBackup wrote no manifests, no partials and no zstd.
  if (parsed.legacy && (partial || kind === 'manifest' || format === 'xva.zst')) return null;
  const info: BackupFileInfo = { name, stamp, legacy: parsed.legacy, date: parsed.date, kind: partial ? 'partial' : kind };
  if (partial) info.partialOf = kind;
  if (split?.writer !== undefined) info.writer = split.writer;
  if (format !== undefined) info.format = format;
  if (disk !== undefined) info.disk = disk;
  return info;
}

/** @example poolDbFileName('20240102-030405') // 'metadata_20240102-030405.db' */
export function poolDbFileName(stamp: string): string {
  requireNewStamp(stamp);
  return `metadata_${stamp}.db`;
}

/** A file of a single-file series (POOL_DB, HOSTS). */
export interface SeriesFileInfo {
  name: string;
  stamp: string;
  legacy: boolean;
  date: Date;
  partial: boolean;
  /** For `.partial` files: the writer's tag; absent for earlier versions' partials. */
  writer?: string;
  /** HOSTS only: the host's name component; null for VmBackup's `hosts_<stamp>.xbk`. */
  host?: string | null;
}

const POOL_DB_RE = /^metadata_(\d{8}-\d{6})\.db$/;

/**
 * @example parsePoolDbFileName('metadata_20240102-030405.db.partial') // { partial: true, legacy: false, … }
 * @example parsePoolDbFileName('metadata_01022024-030405.db')         // { partial: false, legacy: true, … }
 */
export function parsePoolDbFileName(name: string, opts: StampOptions = {}): SeriesFileInfo | null {
  const split = splitPartial(name);
  const partial = split !== null;
  const m = POOL_DB_RE.exec(split?.final ?? name);
  if (!m) return null;
  const parsed = parseStamp(m[1]!, opts);
  if (!parsed || (parsed.legacy && partial)) return null;
  return { name, stamp: m[1]!, legacy: parsed.legacy, date: parsed.date, partial, ...(split?.writer !== undefined ? { writer: split.writer } : {}) };
}

// Room the host component leaves for `hosts_`, `_<stamp>.xbk` and `.partial`.
const HOST_COMPONENT_BYTES = MAX_COMPONENT_BYTES - 'hosts_'.length - '_YYYYMMDD-HHMMSS.xbk'.length - 1 - WRITER_TAG_MAX - PARTIAL_SUFFIX.length;

/**
 * The host name as it appears in `hosts_<host>_<stamp>.xbk`: mapped like a VM folder name
 * (see the table above), bounded so that the whole file name fits in 255 bytes.
 *
 * @example hostFileComponent('xcp-host1') // 'xcp-host1'
 */
export function hostFileComponent(host: string): string {
  return mapComponent(host, HOST_COMPONENT_BYTES, '');
}

/** @example hostBackupFileName('xcp-host1', '20240102-030405') // 'hosts_xcp-host1_20240102-030405.xbk' */
export function hostBackupFileName(host: string, stamp: string): string {
  requireNewStamp(stamp);
  return `hosts_${hostFileComponent(host)}_${stamp}.xbk`;
}

const HOSTS_RE = /^hosts_(.+)_(\d{8}-\d{6})\.xbk$/;
const LEGACY_HOSTS_RE = /^hosts_(\d{8}-\d{6})\.xbk$/;

/**
 * @example parseHostBackupFileName('hosts_xcp-host1_20240102-030405.xbk') // { host: 'xcp-host1', legacy: false, … }
 * @example parseHostBackupFileName('hosts_01022024-030405.xbk')           // { host: null, legacy: true, … }
 */
export function parseHostBackupFileName(name: string, opts: StampOptions = {}): SeriesFileInfo | null {
  const split = splitPartial(name);
  const partial = split !== null;
  const inner = split?.final ?? name;
  const m = HOSTS_RE.exec(inner);
  if (m) {
    const parsed = parseStamp(m[2]!, opts);
    if (!parsed || parsed.legacy) return null;
    return { name, stamp: m[2]!, legacy: false, date: parsed.date, partial, host: m[1]!, ...(split?.writer !== undefined ? { writer: split.writer } : {}) };
  }
  const l = LEGACY_HOSTS_RE.exec(inner);
  if (!l || partial) return null;
  const parsed = parseStamp(l[1]!, opts);
  if (!parsed || !parsed.legacy) return null;
  return { name, stamp: l[1]!, legacy: true, date: parsed.date, partial: false, host: null };
}

// Control chars (C0, DEL, C1), line/paragraph separators, lone surrogates, path separators,
// and what SMB shares refuse.
const UNSAFE_CHAR_RE = /[\p{Cc}\p{Cs}\u2028\u2029/\\:*?"<>|]/u;
const UNSAFE_CHARS_RE = /[\p{Cc}\p{Cs}\u2028\u2029/\\:*?"<>|]/gu;
const SUFFIX_LIKE_RE = /~[0-9a-f]{8}$/;

function utf8Bytes(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

function isSafeComponent(name: string, maxBytes: number): boolean {
  return (
    name.length > 0 &&
    !name.startsWith('.') &&
    !/[ .]$/.test(name) &&
    !UNSAFE_CHAR_RE.test(name) &&
    !SUFFIX_LIKE_RE.test(name) &&
    name === name.normalize('NFC') &&
    utf8Bytes(name) <= maxBytes
  );
}

function sanitize(name: string): string {
  let s = name.normalize('NFC').replace(UNSAFE_CHARS_RE, '_');
  if (s.startsWith('.')) s = '_' + s.slice(1);
  s = s.replace(/[ .]+$/, (m) => '_'.repeat(m.length));
  return s === '' ? '_' : s;
}

function truncateBytes(s: string, maxBytes: number): string {
  let out = '';
  let bytes = 0;
  for (const ch of s) {
    const b = utf8Bytes(ch);
    if (bytes + b > maxBytes) break;
    out += ch;
    bytes += b;
  }
  return out;
}

function nameHash(name: string): string {
  return createHash('sha256').update(name, 'utf8').digest('hex').slice(0, 8);
}

function mapComponent(name: string, maxBytes: number, tail: string): string {
  const safe = isSafeComponent(name, maxBytes);
  let base = safe ? name : sanitize(name);
  let hashed = !safe;
  let suffix = (hashed ? '~' + nameHash(name) : '') + tail;
  if (utf8Bytes(base) + utf8Bytes(suffix) > maxBytes) {
    if (!hashed) {
      hashed = true;
      suffix = '~' + nameHash(name) + tail;
    }
    base = truncateBytes(base, maxBytes - utf8Bytes(suffix));
  }
  return base + suffix;
}

/**
 * The folder of a VM inside backup_dir: always one path component, never `.`/`..`, at most
 * 255 bytes, the same for the same input. `shared` says several VMs of the pool carry this
 * name (see `duplicateNames` in functions/plan/select.ts); each then gets its own folder.
 * See the table in this file's header.
 *
 * @example vmFolderName('DEV-web3', uuid, { shared: false })  // 'DEV-web3'
 * @example vmFolderName('a/b', uuid, { shared: false })       // 'a_b~9f3c…' (8 hex of sha256('a/b'))
 * @example vmFolderName('web', '1a2b3c4d-…', { shared: true }) // 'web~1a2b3c4d'
 */
export function vmFolderName(name: string, uuid: string, opts: { shared: boolean }): string {
  let tail = '';
  if (opts.shared) {
    const m = /^[0-9a-fA-F]{8}/.exec(uuid);
    if (!m) throw new PermanentError('INVALID_UUID', `VM "${name}": uuid "${uuid}" does not start with 8 hex digits`, { name, uuid });
    tail = '~' + m[0].toLowerCase();
  }
  return mapComponent(name, MAX_COMPONENT_BYTES, tail);
}
