import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { PermanentError } from '../../runtime/errors.js';
import { jobSubject } from '../../runtime/events.js';
import { defineFunction, subject } from '../../runtime/function.js';
import type { Ctx } from '../../runtime/function.js';
import { openExistingStore, pointName, verifyPoints } from '../../runtime/chunkstore/chunkstore.js';
import { INDEX_SUFFIX } from '../../runtime/chunkstore/index-file.js';
import { POINT_PREFIX } from '../../runtime/chunkstore/points.js';
import { writeFileAtomic } from '../../runtime/storage/atomic.js';
import type { WriteResult } from '../../runtime/storage/atomic.js';
import { Manifest } from '../../runtime/storage/manifest.js';
import { parseBackupFileName } from '../../runtime/storage/naming.js';
import { formatBytes, formatSeconds } from '../../runtime/units.js';
import { JobBase, WrittenFile } from '../job.js';
import { MetaOutput } from '../meta/meta.js';
import { serializeManifest, VerifiedFile, VerifyProblem, verifySet } from './check.js';

/**
 * verify — re-reads a backup set and checks it (check.ts has the table): every XVA chunk
 * against its XXH64/SHA-1, VHD structure, raw sizes against the `.meta`, every file's size
 * and XXH64 against the manifest. Each file is read once, streamed (flat memory; compressed
 * XVAs are decompressed on the fly, never to disk). The result is written into the
 * manifest's `verify` field (atomically; nothing else in it changes), so prune can tell a
 * set that failed verification (it no longer counts toward max_backups).
 *
 * In the pipeline, a file the export checked as it wrote it (`checkedAsWritten` in `files`: an
 * uncompressed XVA) is not read again: its size on disk and the manifest's XXH64 must be those
 * of the bytes checked (check.ts `confirmChecked`); `verified.asWritten` says so. Without
 * `files` (`vmbackup verify`) every file is read back.
 *
 * A bad set is a result (`verified.ok: false`, naming the first bad file and the place in
 * it), not an error. Errors are for what is not the set's fault: a set that does not exist,
 * no `zstd` program, a shutdown.
 *
 * Subject `vmbackup.jobs.verify`. Input: the meta phase's output (the pipeline) plus
 * `verify`, or just `{backupDir, folder, stamp}` for any set. Output: the input plus
 * `stamp` and `verified` — a valid prune input when the input was one.
 *
 * @example input  { "backupDir": "/mnt/VmBackup/exports", "folder": "web1", "stamp": "20261126-083000" }
 * @example output { …input, "verified": { "ok": false, "at": "2026-11-26T08:41:02Z", "stamp": "20261126-083000",
 *                   "error": { "file": "backup_20261126-083000.xva", "code": "XVA_BAD_CHECKSUM", "chunk": "Ref:3/00000042", "index": 42, "offset": 44107776,
 *                              "message": "backup_20261126-083000.xva: chunk Ref:3/00000042 fails its XXH64 checksum at byte 44107776" },
 *                   "files": [{ "name": "backup_20261126-083000.xva", "ok": false, "bytes": 44107776, … }, …], … } }
 */
export const VerifyInput = MetaOutput.extend({
  /** Default `verify`: a set checked on its own belongs to no run. */
  runId: JobBase.shape.runId.default('verify'),
  jobId: JobBase.shape.jobId.default('verify'),
  /** Only the pipeline has these (they pass through to prune). */
  maxBackups: MetaOutput.shape.maxBackups.optional(),
  manifest: z.string().optional(),
  files: z.array(WrittenFile).optional(),
  bytes: z.number().int().min(0).optional(),
  /** The set's stamp (`YYYYMMDD-HHMMSS`, or VmBackup's `MMDDYYYY-HHMMSS`); default: from `manifest`. */
  stamp: z.string().regex(/^\d{8}-\d{6}$/, 'stamp: YYYYMMDD-HHMMSS').optional(),
  /** False: return at once with `verified: null` (verify_after_backup off). Default true. */
  verify: z.boolean().default(true),
  /** The backup is the point `<folder>/point_<stamp>` of the chunk store, not a set. */
  point: z.boolean().default(false),
  /** Points: check only this percentage of the chunks, drawn at random (a cheap nightly check). */
  samplePercent: z.number().gt(0).max(100).default(100),
  /** Points: skip chunks an earlier verify found good less than this long ago. */
  skipVerifiedWithinMs: z.number().int().min(0).default(0),
});
export type VerifyInput = z.infer<typeof VerifyInput>;

/**
 * The outcome of one verification, as the output carries it.
 *
 * `recorded` says whether it was written into the manifest (not for VmBackup's sets, which
 * have none, nor for a manifest that is invalid or read-only). `bytes` were read in `ms`.
 */
export const Verified = z.object({
  ok: z.boolean(),
  /** When the verification ended (ISO). */
  at: z.string(),
  stamp: z.string(),
  /** A VmBackup set: format checks only. */
  legacy: z.boolean(),
  manifest: z.string().optional(),
  recorded: z.boolean(),
  /** The first problem: the manifest's, else the first bad file's. */
  error: VerifyProblem.extend({ file: z.string() }).optional(),
  files: z.array(VerifiedFile),
  bytes: z.number().int().min(0),
  ms: z.number().min(0),
  /** The set's data files were checked as the export wrote them, none read back (see VerifiedFile.asWritten). */
  asWritten: z.boolean().optional(),
  warnings: z.array(z.string()),
  /** A point: its chunks checked, skipped (checked recently), and each bad one with every point that shares it. */
  point: z
    .object({
      chunksChecked: z.number().int().min(0),
      chunksSkipped: z.number().int().min(0),
      samplePercent: z.number(),
      badChunks: z.array(z.object({ digest: z.string(), message: z.string(), points: z.array(z.string()) })),
    })
    .optional(),
});
export type Verified = z.infer<typeof Verified>;

export const VerifyOutput = VerifyInput.extend({
  verified: Verified.nullable(),
});
export type VerifyOutput = z.infer<typeof VerifyOutput>;

export const VerifyJob = subject(jobSubject('verify'), VerifyInput);

/** What the manifest's `verify` field records. */
export type VerifyRecord = NonNullable<Manifest['verify']>;

export const verify = defineFunction({
  name: 'verify',
  description: "Re-read a backup set: XVA chunk checksums, VHD structure, raw sizes, every file's size and XXH64 against the manifest.",
  subject: VerifyJob,
  output: VerifyOutput,
  async handle(input, ctx) {
    if (!input.verify) return { ...input, verified: null };
    if (input.point) return { ...input, stamp: input.stamp ?? stampOf(input), verified: await verifyPoint(input, ctx) };
    const stamp = stampOf(input);
    const dir = path.join(input.backupDir, input.folder);
    const listedManifest = input.files?.find((f) => f.format === 'manifest');
    const checkedAsWritten = new Map(
      (input.files ?? []).flatMap((f) => (f.checkedAsWritten !== undefined && f.xxh64 !== undefined ? [[f.name, { size: f.size, xxh64: f.xxh64, detail: f.checkedAsWritten.detail }] as const] : [])),
    );
    const started = performance.now();
    const result = await verifySet(dir, stamp, {
      ...(checkedAsWritten.size > 0 ? { checkedAsWritten } : {}),
      signal: ctx.signal,
      heartbeat: () => ctx.heartbeat(),
      ...(listedManifest !== undefined ? { expectedManifest: { size: listedManifest.size, xxh64: listedManifest.xxh64 } } : {}),
    });
    const at = ctx.clock.now().toISOString();
    const warnings = [...result.warnings];
    let written: WriteResult | undefined;
    if (result.manifest !== undefined && result.manifestText !== undefined) {
      const outcome = await recordResult(dir, result.manifest, result.manifestText, { at, ok: result.ok, ...(result.error ? { error: result.error.message } : {}) });
      if ('skipped' in outcome) warnings.push(`${input.folder}: result of verifying ${stamp} not recorded in ${result.manifest}: ${outcome.skipped}`);
      else written = outcome.written;
    }
    const ms = Math.round(performance.now() - started);
    const data = result.files.filter((f) => f.format !== 'meta');
    const asWritten = data.length > 0 && data.every((f) => f.asWritten === true);
    const verified: Verified = {
      ok: result.ok,
      at,
      stamp,
      legacy: result.legacy,
      ...(result.manifest !== undefined ? { manifest: result.manifest } : {}),
      recorded: written !== undefined,
      ...(result.error ? { error: result.error } : {}),
      files: result.files,
      bytes: result.bytes,
      ms,
      ...(asWritten ? { asWritten } : {}),
      warnings,
    };
    const speed = ms > 0 ? ` (${Math.round(result.bytes / 1048576 / (ms / 1000))} MiB/s)` : '';
    if (result.ok && asWritten) ctx.log.info(`${input.folder}: backup ${stamp} verified: ${result.files.length} files, checked as written (not read back), confirmed in ${formatSeconds(ms)}`);
    else if (result.ok) ctx.log.info(`${input.folder}: backup ${stamp} verified: ${result.files.length} files, ${formatBytes(result.bytes)} in ${formatSeconds(ms)}${speed}`);
    else ctx.log.warn({ code: result.error!.code, file: result.error!.file }, `${input.folder}: backup ${stamp} FAILED verification: ${result.error!.message}`);
    // The warnings are in the output: the run's coordinator (or the verify command) says them.
    // The manifest's own entry, when the pipeline lists it, now describes the rewritten file.
    const files = input.files?.map((f) => (f.format === 'manifest' && f.name === result.manifest && written ? { ...f, size: written.size, xxh64: written.xxh64 } : f));
    return {
      ...input,
      stamp,
      ...(files !== undefined ? { files } : {}),
      warnings: [...input.warnings, ...warnings],
      verified,
    };
  },
});

function stampOf(input: VerifyInput): string {
  const fromManifest = input.manifest !== undefined ? parseBackupFileName(input.manifest) : undefined;
  if (input.manifest !== undefined && fromManifest?.kind !== 'manifest') {
    throw new PermanentError('BAD_INPUT', `verify: manifest ${JSON.stringify(input.manifest)} is not a manifest name (backup_<stamp>.json)`);
  }
  if (input.stamp !== undefined && fromManifest && fromManifest.stamp !== input.stamp) {
    throw new PermanentError('BAD_INPUT', `verify: stamp ${input.stamp} and manifest ${input.manifest} disagree`);
  }
  const stamp = input.stamp ?? fromManifest?.stamp;
  if (stamp === undefined) throw new PermanentError('BAD_INPUT', 'verify: give the set by `stamp` (or `manifest`)');
  return stamp;
}

/** Longest error text kept in a manifest. */
const MAX_RECORDED_ERROR = 1000;

/**
 * Writes `record` into the manifest's `verify` field, atomically, changing nothing else
 * (same files, same bytes for every other field, so the set's validity for prune depends
 * only on `verify.ok`). Skipped when the manifest changed or vanished since it was read (a
 * prune deleting the set, another verification), or cannot be written (read-only share).
 *
 * @example await recordResult(dir, 'backup_20261126-083000.json', text, { at, ok: true })
 */
export async function recordResult(dir: string, name: string, readText: string, record: VerifyRecord): Promise<{ written: WriteResult } | { skipped: string }> {
  const file = path.join(dir, name);
  let now: string;
  try {
    now = await readFile(file, 'utf8');
  } catch (error) {
    return { skipped: `it can no longer be read (${(error as NodeJS.ErrnoException).code ?? String(error)})` };
  }
  if (now !== readText) return { skipped: 'it changed while the set was being verified' };
  const raw = JSON.parse(readText) as Record<string, unknown>;
  raw.verify = { at: record.at, ok: record.ok, ...(record.error !== undefined ? { error: record.error.slice(0, MAX_RECORDED_ERROR) } : {}) };
  // Guard: what is written must still be a valid manifest.
  Manifest.parse(raw);
  try {
    return { written: await writeFileAtomic(file, serializeManifest(raw)) };
  } catch (error) {
    return { skipped: `it cannot be written (${(error as Error).message})` };
  }
}

/** Codes of what verify finds wrong in a point. */
export const PointVerifyCode = {
  /** A chunk the point references is missing, or does not decompress or hash to its name. */
  badChunk: 'VERIFY_CHUNK_BAD',
  /** The manifest, the metadata or an index does not check. */
  invalid: 'VERIFY_POINT_INVALID',
} as const;

/**
 * Verifies a point with the chunk store's verifyPoints (runtime/chunkstore/verify.ts): its
 * manifest, metadata and indexes, and every chunk it references (or `samplePercent` of them,
 * skipping those found good within `skipVerifiedWithinMs`). A bad chunk is named with the
 * OTHER points that share it. verifyPoints records the result in the point's `verified.json`.
 */
async function verifyPoint(input: VerifyInput, ctx: Ctx): Promise<Verified> {
  const stamp = input.stamp ?? stampOf(input);
  const ref = { vmFolder: input.folder, stamp };
  const name = pointName(ref);
  const store = await openExistingStore(input.backupDir);
  if (store === undefined) throw new PermanentError('POINT_NO_STORE', `verify: ${name}: no chunk store in ${input.backupDir}`, { point: name });
  const started = performance.now();
  const report = await verifyPoints(store, [ref], { samplePercent: input.samplePercent, skipVerifiedWithinMs: input.skipVerifiedWithinMs, signal: ctx.signal });
  const result = report.points[0]!;
  const badChunks = report.badChunks.map((b) => ({ ...b, points: b.points.filter((p) => p !== name) }));
  const first = result.problems[0];
  let error: Verified['error'];
  if (first !== undefined) {
    const shared = first.digest !== undefined ? badChunks.find((b) => b.digest === first.digest)?.points ?? [] : [];
    const also = shared.length > 0 ? `; the chunk is also used by ${shared.join(', ')}` : first.digest !== undefined ? '; no other point uses it' : '';
    const more = result.problems.length > 1 ? ` (and ${result.problems.length - 1} more problem${result.problems.length > 2 ? 's' : ''})` : '';
    error = {
      file: first.disk !== undefined ? `${POINT_PREFIX}${stamp}/${first.disk}${INDEX_SUFFIX}` : `${POINT_PREFIX}${stamp}`,
      code: first.digest !== undefined ? PointVerifyCode.badChunk : PointVerifyCode.invalid,
      message: `${name}${first.disk !== undefined ? `, disk ${first.disk}` : ''}: ${first.message}${also}${more}`,
    };
  }
  const ms = Math.round(performance.now() - started);
  const warnings = report.recordError !== undefined ? [`${name}: when each chunk was checked could not be recorded (${report.recordError}): the next verify checks them again`] : [];
  if (result.ok) ctx.log.info(`${name} verified: ${result.chunksChecked} chunks checked, ${result.chunksSkipped} skipped (checked recently)`);
  else ctx.log.warn({ code: error!.code }, `${name} FAILED verification: ${error!.message}`);
  return {
    ok: result.ok,
    at: ctx.clock.now().toISOString(),
    stamp,
    legacy: false,
    recorded: true,
    ...(error !== undefined ? { error } : {}),
    files: [],
    bytes: 0,
    ms,
    warnings,
    point: { chunksChecked: result.chunksChecked, chunksSkipped: result.chunksSkipped, samplePercent: input.samplePercent, badChunks },
  };
}
