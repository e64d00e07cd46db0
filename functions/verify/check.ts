import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { TarError } from '../../runtime/formats/tar.js';
import { verifyVhd, VhdError } from '../../runtime/formats/vhd.js';
import { verifyXva, XvaError } from '../../runtime/formats/xva.js';
import type { XvaReport } from '../../runtime/formats/xva.js';
import { loadXxh64 } from '../../runtime/formats/xxh64.js';
import { Manifest } from '../../runtime/storage/manifest.js';
import { manifestFileName, parseBackupFileName } from '../../runtime/storage/naming.js';
import { PermanentError } from '../../runtime/errors.js';
import { WrittenFile } from '../job.js';
import { parseMeta } from '../meta/meta-format.js';
import type { MetaRecords } from '../meta/meta-format.js';
import { scanFile } from './scan.js';
import type { Decode, ScanFailure } from './scan.js';
import { groupSets } from './sets.js';

/**
 * The checks of one backup set, file by file, each file read once (scan.ts):
 *
 * | file        | checks                                                                          |
 * |-------------|---------------------------------------------------------------------------------|
 * | `.xva`      | tar structure, ova.xml, every chunk's XXH64/SHA-1, chunk numbering and sizes    |
 * | `.xva.gz`   | the same on the gunzipped stream, and gzip's own CRC                            |
 * | `.xva.zst`  | the same on the `zstd -dc` stream, and zstd's own checksum                      |
 * | `.vhd`      | footers, header, checksums, BAT, block layout; current size = the disk's virtual_size in `.meta` |
 * | `.raw`      | size = the disk's virtual_size in `.meta` (matched by device)                   |
 * | `.meta`     | it parses                                                                       |
 * | every file of the manifest | size and XXH64 equal the manifest's                              |
 *
 * VmBackup's sets (`MMDDYYYY-HHMMSS`) have no manifest: format checks only. A set without a
 * manifest under a new stamp is incomplete: its files are format-checked, and it fails.
 *
 * Problems are reported, never thrown: the first one of each file, with its place (byte
 * offset, XVA chunk, VHD block) and a sentence an operator understands. Throws only for what
 * is not the backup's fault: no such set, zstd missing, an abort.
 */

/** Codes of the problems verify reports itself (format problems keep their XVA_/TAR_/VHD_ codes). */
export const VerifyCode = {
  NO_MANIFEST: 'VERIFY_NO_MANIFEST',
  MANIFEST_INVALID: 'VERIFY_MANIFEST_INVALID',
  MANIFEST_CHANGED: 'VERIFY_MANIFEST_CHANGED',
  FILE_MISSING: 'VERIFY_FILE_MISSING',
  SIZE_MISMATCH: 'VERIFY_SIZE_MISMATCH',
  XXH64_MISMATCH: 'VERIFY_XXH64_MISMATCH',
  META_INVALID: 'VERIFY_META_INVALID',
  VIRTUAL_SIZE_MISMATCH: 'VERIFY_VIRTUAL_SIZE_MISMATCH',
  DECOMPRESS_FAILED: 'VERIFY_DECOMPRESS_FAILED',
  READ_ERROR: 'VERIFY_READ_ERROR',
} as const;
export type VerifyCode = (typeof VerifyCode)[keyof typeof VerifyCode];

/**
 * Where and why a file is bad.
 *
 * @example
 *   { "code": "XVA_BAD_CHECKSUM", "offset": 44107776, "chunk": "Ref:3/00000042", "index": 42, "entry": "Ref:3/00000042",
 *     "message": "backup_20261126-083000.xva: chunk Ref:3/00000042 fails its XXH64 checksum at byte 44107776" }
 */
export const VerifyProblem = z.object({
  code: z.string(),
  message: z.string(),
  /** Byte offset of the problem in the file (in the decompressed XVA when `decompressed`). */
  offset: z.number().int().min(0).optional(),
  /** `offset` counts bytes of the decompressed XVA of a `.xva.gz` / `.xva.zst`. */
  decompressed: z.boolean().optional(),
  /** The tar entry concerned (XVA). */
  entry: z.string().optional(),
  /** The XVA chunk concerned, `Ref:N/%08d`, and its number. */
  chunk: z.string().optional(),
  index: z.number().int().min(0).optional(),
  /** The VHD block concerned. */
  block: z.number().int().min(0).optional(),
});
export type VerifyProblem = z.infer<typeof VerifyProblem>;

/** What was checked of a file. */
export const Check = z.enum(['size', 'xxh64', 'xva', 'vhd', 'virtual-size', 'meta']);
export type Check = z.infer<typeof Check>;

/** The result of one file. */
export const VerifiedFile = z.object({
  name: z.string(),
  format: WrittenFile.shape.format,
  ok: z.boolean(),
  /** Bytes read from the file. */
  bytes: z.number().int().min(0),
  /** XXH64 of the whole file, when it was read to the end. */
  xxh64: z.string().optional(),
  /** The checks that ran (a failed one included). */
  checks: z.array(Check),
  /** What the format check found (`2 disks, 11534336 bytes in 12 chunks`). */
  detail: z.string().optional(),
  /**
   * The format check ran on the bytes as the export wrote them (verify_after_backup); this
   * verification only confirmed that the file on disk is the one checked (its size, and the
   * manifest's XXH64 is the hash of the bytes checked), without reading it (`bytes` 0).
   */
  asWritten: z.boolean().optional(),
  error: VerifyProblem.optional(),
});
export type VerifiedFile = z.infer<typeof VerifiedFile>;

/** The result of one set. */
export interface SetResult {
  ok: boolean;
  stamp: string;
  legacy: boolean;
  /** The manifest's name (absent for VmBackup's sets). */
  manifest?: string;
  /** The manifest as read, when it was valid: what `recordResult` rewrites. */
  manifestText?: string;
  /** The first problem: of the set itself (manifest), else of the first bad file. */
  error?: VerifyProblem & { file: string };
  files: VerifiedFile[];
  bytes: number;
  warnings: string[];
}

export interface VerifySetOptions {
  signal?: AbortSignal;
  /** Called as bytes are read (liveness). */
  heartbeat?: () => void;
  /**
   * The manifest's size and XXH64 as the meta phase wrote it (pipeline): the manifest must
   * still be those bytes (apart from a `verify` field a previous verification added).
   */
  expectedManifest?: { size: number; xxh64?: string | undefined };
  /**
   * Files the export checked as it wrote them (pipeline): their size and XXH64 as checked and
   * what the check found. Their format check is not run again; the file's size and the
   * manifest's XXH64 must equal the checked bytes'.
   */
  checkedAsWritten?: Map<string, { size: number; xxh64: string; detail: string }>;
}

/** Largest `.meta` read (they are a few KiB). */
const MAX_META_BYTES = 16 << 20;

type Format = WrittenFile['format'];

interface FileToCheck {
  name: string;
  format: Format;
  disk?: string | undefined;
  /** From the manifest; absent for sets without one. */
  size?: number;
  xxh64?: string | undefined;
}

/** The warning of a VmBackup set: what could not be checked. */
export function legacyNotice(stamp: string): string {
  return `backup set ${stamp} is a VmBackup set: it has no manifest, so no checksums of its files; format checks only`;
}

/**
 * Verifies the set `stamp` of folder `dir`.
 *
 * @example
 *   const r = await verifySet('/mnt/VmBackup/exports/web1', '20261126-083000');
 *   r.ok; r.error?.message; // 'backup_20261126-083000.xva: chunk Ref:3/00000042 fails its XXH64 checksum at byte 44107776'
 */
export async function verifySet(dir: string, stamp: string, options: VerifySetOptions = {}): Promise<SetResult> {
  const names = await readdir(dir).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') throw new PermanentError('SET_NOT_FOUND', `no folder ${dir}`, { dir });
    throw error;
  });
  const set = groupSets(names).find((s) => s.stamp === stamp);
  if (set === undefined) throw new PermanentError('SET_NOT_FOUND', `no backup set ${stamp} in ${dir}`, { dir, stamp });
  const warnings: string[] = [];
  let setError: (VerifyProblem & { file: string }) | undefined;
  let manifestText: string | undefined;
  let toCheck: FileToCheck[] | undefined;
  const manifestName = set.legacy ? undefined : manifestFileName(stamp);

  if (set.legacy) {
    warnings.push(legacyNotice(stamp));
  } else if (set.manifest === undefined) {
    setError = {
      file: manifestName!,
      code: VerifyCode.NO_MANIFEST,
      message: `${manifestName}: missing: backup set ${stamp} is incomplete (its backup did not finish${set.partial ? ', or is still being written' : ''}) and does not count; its files get format checks only`,
    };
  } else {
    const read = await readManifest(dir, manifestName!, stamp, options.expectedManifest);
    if ('problem' in read) {
      setError = { file: manifestName!, ...read.problem };
    } else {
      manifestText = read.text;
      toCheck = read.manifest.files.map((f) => ({ name: f.name, format: f.format, disk: f.disk, size: f.size, xxh64: f.xxh64 }));
      const listed = new Set(toCheck.map((f) => f.name));
      for (const f of set.files) {
        if (f.kind !== 'manifest' && f.kind !== 'partial' && !listed.has(f.name)) warnings.push(`${f.name} carries the set's stamp but is not in its manifest: not verified`);
      }
    }
  }
  // Without a manifest: the data files, then their .meta files (the manifest's order).
  toCheck ??= [...set.files.filter((f) => f.kind === 'data'), ...set.files.filter((f) => f.kind === 'meta')].map((f) => ({
    name: f.name,
    format: (f.kind === 'meta' ? 'meta' : f.format!) as Format,
    disk: f.disk,
  }));

  // .meta files first: the raw and vhd checks need their disks' virtual sizes.
  const results = new Map<string, VerifiedFile>();
  const metas = new Map<string, MetaRecords>();
  for (const file of toCheck.filter((f) => f.format === 'meta')) {
    const { result, records } = await checkMeta(dir, file);
    results.set(file.name, result);
    if (records) metas.set(parseBackupFileName(file.name)?.disk ?? '', records);
  }
  for (const file of toCheck.filter((f) => f.format !== 'meta')) {
    options.signal?.throwIfAborted();
    results.set(file.name, await checkData(dir, file, metas, options));
  }
  const files = toCheck.map((f) => results.get(f.name)!);
  const firstBad = files.find((f) => !f.ok);
  const error = setError ?? (firstBad ? { file: firstBad.name, ...firstBad.error! } : undefined);
  return {
    ok: error === undefined,
    stamp,
    legacy: set.legacy,
    ...(manifestName !== undefined ? { manifest: manifestName } : {}),
    ...(manifestText !== undefined ? { manifestText } : {}),
    ...(error ? { error } : {}),
    files,
    bytes: files.reduce((n, f) => n + f.bytes, 0),
    warnings,
  };
}

type ManifestRead = { text: string; manifest: Manifest } | { problem: VerifyProblem };

async function readManifest(dir: string, name: string, stamp: string, expected: VerifySetOptions['expectedManifest']): Promise<ManifestRead> {
  const invalid = (why: string): ManifestRead => ({ problem: { code: VerifyCode.MANIFEST_INVALID, message: `${name}: ${why}` } });
  let text: string;
  try {
    text = await readFile(path.join(dir, name), 'utf8');
  } catch (error) {
    return { problem: { code: VerifyCode.READ_ERROR, message: `${name}: cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})` } };
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    return invalid(`not valid JSON (${(error as Error).message})`);
  }
  const parsed = Manifest.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    return invalid(`not a valid manifest: ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  const manifest = parsed.data;
  if (expected !== undefined && !(await sameManifest(text, raw, expected))) {
    return {
      problem: {
        code: VerifyCode.MANIFEST_CHANGED,
        message: `${name}: changed since the backup wrote it (${Buffer.byteLength(text)} bytes, it wrote ${expected.size}${expected.xxh64 ? ` with XXH64 ${expected.xxh64}` : ''})`,
      },
    };
  }
  if (manifest.stamp !== stamp) return invalid(`records stamp ${manifest.stamp}, its name says ${stamp}`);
  for (const f of manifest.files) {
    const info = parseBackupFileName(f.name);
    if (info === null || info.stamp !== stamp || info.kind === 'partial' || info.kind === 'manifest') return invalid(`lists ${JSON.stringify(f.name)}, which is not a file of backup set ${stamp}`);
  }
  const data = manifest.files.filter((f) => f.format !== 'meta').reduce((n, f) => n + f.size, 0);
  if (data !== manifest.bytes) return invalid(`records ${manifest.bytes} bytes of data, its files add up to ${data}`);
  return { text, manifest };
}

/** True when `text` is the manifest as written (`expected`), or that plus a `verify` field. */
async function sameManifest(text: string, raw: unknown, expected: { size: number; xxh64?: string | undefined }): Promise<boolean> {
  const xxh = await loadXxh64();
  const matches = (t: string): boolean => {
    const bytes = Buffer.from(t, 'utf8');
    return bytes.length === expected.size && (expected.xxh64 === undefined || xxh.hash(bytes) === expected.xxh64);
  };
  if (matches(text)) return true;
  if (typeof raw !== 'object' || raw === null || !('verify' in raw)) return false;
  const { verify: _ignored, ...rest } = raw as Record<string, unknown>;
  return matches(serializeManifest(rest));
}

/** How manifests are written (meta.ts): pretty JSON and a newline. */
export function serializeManifest(manifest: unknown): string {
  return JSON.stringify(manifest, null, 2) + '\n';
}

async function checkMeta(dir: string, file: FileToCheck): Promise<{ result: VerifiedFile; records?: MetaRecords }> {
  const base = { name: file.name, format: file.format };
  const full = path.join(dir, file.name);
  let size: number;
  try {
    size = (await stat(full)).size;
  } catch {
    return { result: { ...base, ok: false, bytes: 0, checks: [], error: missing(file.name) } };
  }
  const checks: Check[] = [];
  const fail = (bytes: number, problem: VerifyProblem, xxh64?: string) => ({ result: { ...base, ok: false, bytes, ...(xxh64 ? { xxh64 } : {}), checks, error: problem } });
  if (file.size !== undefined) {
    checks.push('size');
    if (size !== file.size) return fail(0, sizeProblem(file.name, size, file.size));
  }
  if (size > MAX_META_BYTES) return fail(0, { code: VerifyCode.META_INVALID, message: `${file.name}: ${size} bytes, too large for a .meta file` });
  let bytes: Buffer;
  try {
    bytes = await readFile(full);
  } catch (error) {
    return fail(0, readProblem(file.name, error as NodeJS.ErrnoException, 0));
  }
  const xxh64 = (await loadXxh64()).hash(bytes);
  if (file.xxh64 !== undefined) {
    checks.push('xxh64');
    if (xxh64 !== file.xxh64) return fail(bytes.length, xxhProblem(file.name, xxh64, file.xxh64), xxh64);
  }
  checks.push('meta');
  try {
    const records = parseMeta(bytes.toString('utf8'));
    return { result: { ...base, ok: true, bytes: bytes.length, xxh64, checks, detail: `${records.disks.length} disk(s), ${records.vifs.length} VIF(s)` }, records };
  } catch (error) {
    return fail(bytes.length, { code: VerifyCode.META_INVALID, message: `${file.name}: does not parse: ${(error as Error).message}` }, xxh64);
  }
}

async function checkData(dir: string, file: FileToCheck, metas: Map<string, MetaRecords>, options: VerifySetOptions): Promise<VerifiedFile> {
  const base = { name: file.name, format: file.format };
  const full = path.join(dir, file.name);
  let size: number;
  try {
    size = (await stat(full)).size;
  } catch {
    return { ...base, ok: false, bytes: 0, checks: [], error: missing(file.name) };
  }
  const checked = options.checkedAsWritten?.get(file.name);
  if (checked !== undefined && file.format === 'xva' && file.size !== undefined && file.xxh64 !== undefined) return confirmChecked({ ...file, size: file.size, xxh64: file.xxh64 }, size, checked);
  const checks: Check[] = [];
  const virtualSize = file.disk !== undefined ? diskSize(metas, file.disk) : undefined;
  let detail: string | undefined;
  let decode: Decode | undefined;
  let check: ((input: AsyncIterable<Buffer>) => Promise<unknown>) | undefined;
  if (file.format === 'xva' || file.format === 'xva.gz' || file.format === 'xva.zst') {
    checks.push('xva');
    decode = file.format === 'xva.gz' ? 'gzip' : file.format === 'xva.zst' ? 'zstd' : undefined;
    check = async (input) => {
      detail = xvaDetail(await verifyXva(input));
    };
  } else if (file.format === 'vhd') {
    checks.push('vhd');
    if (virtualSize !== undefined) checks.push('virtual-size');
    check = async (input) => {
      const report = await verifyVhd(input, virtualSize !== undefined ? { size: virtualSize } : {});
      detail = `${report.diskType} VHD of ${report.size} bytes, ${report.allocatedBlocks} of ${report.maxTableEntries} blocks allocated`;
    };
  }

  const scanOptions = {
    ...(decode ? { decode } : {}),
    ...(check ? { check } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.heartbeat ? { onRead: options.heartbeat } : {}),
  };
  let scan = await scanFile(full, scanOptions);
  // A failure seen through reused read buffers is confirmed with fresh ones (see scan.ts).
  if (scan.failure !== undefined && decode === undefined) scan = await scanFile(full, { ...scanOptions, pooled: false });
  const result = (error?: VerifyProblem): VerifiedFile => ({
    ...base,
    ok: error === undefined,
    bytes: scan.bytes,
    ...(scan.xxh64 !== undefined ? { xxh64: scan.xxh64 } : {}),
    checks,
    ...(detail !== undefined ? { detail } : {}),
    ...(error ? { error } : {}),
  });
  if (scan.failure) return result(describeFailure(file.name, scan.failure, decode !== undefined));
  if (file.size !== undefined) {
    checks.push('size');
    if (size !== file.size) return result(sizeProblem(file.name, size, file.size));
  }
  if (file.xxh64 !== undefined) {
    checks.push('xxh64');
    if (scan.xxh64 !== file.xxh64) return result(xxhProblem(file.name, scan.xxh64 ?? '?', file.xxh64));
  }
  if (file.format === 'raw') {
    if (virtualSize === undefined) {
      detail = `disk ${file.disk}: virtual size unknown (no valid .meta describes it): size not checked`;
    } else {
      checks.push('virtual-size');
      if (size !== virtualSize) {
        return result({
          code: VerifyCode.VIRTUAL_SIZE_MISMATCH,
          message: `${file.name}: ${size} bytes, but disk ${file.disk} is ${virtualSize} bytes (virtual_size in its .meta)${size < virtualSize ? ': the file is truncated' : ''}`,
          offset: Math.min(size, virtualSize),
        });
      }
      detail = `raw disk ${file.disk} of ${size} bytes`;
    }
  } else if (file.format === 'vhd' && virtualSize === undefined) {
    detail = `${detail ?? 'VHD'}; disk ${file.disk}: virtual size unknown (no valid .meta describes it): not compared`;
  }
  return result();
}

/**
 * A file the export checked as it wrote it: the file on disk must be those bytes — its size
 * the size checked, and the manifest (which the meta phase wrote from the export's output)
 * recording the size and XXH64 of the bytes checked. Nothing is read.
 */
function confirmChecked(file: FileToCheck & { size: number; xxh64: string }, size: number, checked: { size: number; xxh64: string; detail: string }): VerifiedFile {
  const base = { name: file.name, format: file.format, bytes: 0, xxh64: checked.xxh64, checks: ['xva', 'size', 'xxh64'] as Check[], detail: `${checked.detail}; checked as written`, asWritten: true };
  if (file.size !== checked.size) return { ...base, ok: false, error: sizeProblem(file.name, checked.size, file.size) };
  if (size !== checked.size) {
    return {
      ...base,
      ok: false,
      error: { code: VerifyCode.SIZE_MISMATCH, message: `${file.name}: ${size} bytes on disk, ${checked.size} were written and checked${size < checked.size ? ': the file is truncated' : ''}`, offset: Math.min(size, checked.size) },
    };
  }
  if (file.xxh64 !== checked.xxh64) {
    return {
      ...base,
      ok: false,
      error: { code: VerifyCode.XXH64_MISMATCH, message: `${file.name}: the manifest records XXH64 ${file.xxh64}, the bytes written and checked hash to ${checked.xxh64}` },
    };
  }
  return { ...base, ok: true };
}

/** What the XVA check found, in a few words (`2 disk(s), 11534336 bytes in 12 chunks, xxhash checksums`). */
export function xvaDetail(report: XvaReport): string {
  const chunks = report.disks.reduce((n, d) => n + d.chunks, 0);
  return `${report.disks.length} disk(s), ${report.disks.reduce((n, d) => n + d.bytes, 0)} bytes in ${chunks} chunks, ${report.disks.flatMap((d) => d.checksums).filter((c, i, a) => a.indexOf(c) === i).join('+') || 'no'} checksums`;
}

/** The virtual size of disk `device` from its own .meta, else from any .meta of the set. */
function diskSize(metas: Map<string, MetaRecords>, device: string): number | undefined {
  for (const records of [metas.get(device), ...metas.values()]) {
    const disk = records?.disks.find((d) => d.vbd.device === device);
    if (disk) return Number(disk.vdi.virtual_size);
  }
  return undefined;
}

function missing(name: string): VerifyProblem {
  return { code: VerifyCode.FILE_MISSING, message: `${name}: listed in the manifest, but missing` };
}

function sizeProblem(name: string, actual: number, recorded: number): VerifyProblem {
  return {
    code: VerifyCode.SIZE_MISMATCH,
    message: `${name}: ${actual} bytes, the manifest records ${recorded}${actual < recorded ? ': the file is truncated' : ''}`,
    offset: Math.min(actual, recorded),
  };
}

function xxhProblem(name: string, computed: string, recorded: string): VerifyProblem {
  return {
    code: VerifyCode.XXH64_MISMATCH,
    message: `${name}: XXH64 of its bytes is ${computed}, the manifest records ${recorded}: the file changed after it was written (the format checks found nothing, so the place is unknown)`,
  };
}

function readProblem(name: string, error: NodeJS.ErrnoException, offset: number): VerifyProblem {
  return { code: VerifyCode.READ_ERROR, message: `${name}: read error near byte ${offset} (${error.message})`, offset };
}

const CHECKSUM_KIND = /: (xxhash|sha1) stored /;

/** An operator's sentence for a failed scan, with the place of the problem. */
export function describeFailure(name: string, failure: ScanFailure, decompressed: boolean): VerifyProblem {
  if (failure.kind === 'read') return readProblem(name, failure.error, failure.offset);
  if (failure.kind === 'decompress') {
    return {
      code: VerifyCode.DECOMPRESS_FAILED,
      message: `${name}: the ${failure.codec} data is corrupt near byte ${failure.offset} of the file (${failure.message})`,
      offset: failure.offset,
    };
  }
  const error = failure.error;
  const where = decompressed ? ' of the decompressed XVA' : '';
  const flag = decompressed ? { decompressed: true } : {};
  if (error instanceof XvaError || error instanceof TarError) {
    const ref = error instanceof XvaError ? error.ref : undefined;
    const index = error instanceof XvaError ? error.index : undefined;
    const chunk = ref !== undefined && index !== undefined ? `${ref}/${String(index).padStart(8, '0')}` : undefined;
    const place = { offset: error.offset, ...flag, ...(error.entry !== undefined ? { entry: error.entry } : {}), ...(chunk !== undefined ? { chunk, index } : {}) };
    if (error.code === 'XVA_BAD_CHECKSUM' && chunk !== undefined) {
      const kind = CHECKSUM_KIND.exec(error.message)?.[1];
      const sum = kind === 'sha1' ? 'SHA-1' : kind === 'xxhash' ? 'XXH64' : '';
      return { code: error.code, message: `${name}: chunk ${chunk} fails its ${sum ? `${sum} ` : ''}checksum at byte ${error.offset}${where}`, ...place };
    }
    if (error.code === 'TAR_BAD_HEADER_CHECKSUM') {
      return { code: error.code, message: `${name}: the tar header at byte ${error.offset}${where} is damaged (its checksum does not match${error.entry ? `; entry ${JSON.stringify(error.entry)}` : ''})`, ...place };
    }
    return { code: error.code, message: `${name}: ${error.message.replace(/^invalid XVA: /, '')}${decompressed ? ' (byte offsets of the decompressed XVA)' : ''}`, ...place };
  }
  if (error instanceof VhdError) {
    return { code: error.code, message: `${name}: ${error.message}`, offset: error.offset, ...(error.block !== undefined ? { block: error.block } : {}) };
  }
  if (error instanceof PermanentError) return { code: error.code, message: `${name}: ${error.message}` };
  return { code: VerifyCode.DECOMPRESS_FAILED, message: `${name}: ${(error as Error).message}` };
}
