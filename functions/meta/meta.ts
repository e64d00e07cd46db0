import path from 'node:path';
import { z } from 'zod';
import { defineFunction, subject } from '../../runtime/function.js';
import { jobSubject } from '../../runtime/events.js';
import { PermanentError } from '../../runtime/errors.js';
import { writeFileAtomic } from '../../runtime/storage/atomic.js';
import { Manifest } from '../../runtime/storage/manifest.js';
import { manifestFileName, metaFileName } from '../../runtime/storage/naming.js';
import { WrittenFile } from '../job.js';
import { ExportOutput } from '../export/export.js';
import { PruneInput } from '../prune/prune.js';
import { formatMeta } from './meta-format.js';

/**
 * meta — writes VmBackup's `.meta` beside the data (`backup_<stamp>.meta` for a vm-export,
 * `backup_<disk>_<stamp>.meta` per disk of a vdi-export), then the set's manifest
 * `backup_<stamp>.json` last: the manifest is what makes the set count.
 *
 * Idempotent: rewriting the same files from the same message gives the same result.
 *
 * Subject `vmbackup.jobs.meta`; input: the export's output. Output: the prune's input, plus
 * the set's files.
 */
export const MetaInput = ExportOutput;
export type MetaInput = z.infer<typeof MetaInput>;

export const MetaOutput = PruneInput.extend({
  /** verify_after_backup, for the verify phase that follows (false: it returns at once). */
  verify: z.boolean(),
  manifest: z.string(),
  files: z.array(WrittenFile),
  bytes: z.number().int().min(0),
  warnings: z.array(z.string()).default([]),
});
export type MetaOutput = z.infer<typeof MetaOutput>;

export const MetaJob = subject(jobSubject('meta'), MetaInput);

export const meta = defineFunction({
  name: 'meta',
  description: "Write VmBackup's .meta files and the set's manifest (written last: the commit point).",
  subject: MetaJob,
  output: MetaOutput,
  async handle(input, ctx) {
    // A delta-export's point is written by delta-export itself, manifest included.
    if (input.mode === 'delta') throw new PermanentError('WRONG_PHASE', `${input.vm.name}: a delta-export has no meta phase`, { vm: input.vm.uuid });
    const mode = input.mode;
    const dir = path.join(input.backupDir, input.folder);
    const text = formatMeta(input.records);
    const metaNames = input.mode === 'vm' ? [metaFileName(input.stamp)] : input.files.map((f) => metaFileName(input.stamp, f.disk));
    const files: WrittenFile[] = [...input.files];
    for (const name of metaNames) {
      const written = await writeFileAtomic(path.join(dir, name), text);
      files.push({ name, format: 'meta', size: written.size, xxh64: written.xxh64 });
    }
    const manifest: Manifest = {
      kind: 'vmbackup-set',
      version: 1,
      runId: input.runId,
      jobId: input.jobId,
      try: input.try,
      vm: input.vm,
      mode,
      stamp: input.stamp,
      createdAt: ctx.clock.now().toISOString(),
      ...(input.mode === 'vm' ? { compress: input.compress } : {}),
      bytes: input.bytes,
      files,
      timings: { snapshotAt: input.snapshot.at, exportMs: input.exportMs },
    };
    const manifestName = manifestFileName(input.stamp);
    const written = await writeFileAtomic(path.join(dir, manifestName), JSON.stringify(Manifest.parse(manifest), null, 2) + '\n');
    return {
      runId: input.runId,
      jobId: input.jobId,
      try: input.try,
      vm: input.vm,
      backupDir: input.backupDir,
      folder: input.folder,
      maxBackups: input.maxBackups,
      protect: [input.stamp],
      verify: input.verify ?? false,
      ...(input.failedKeepDays !== undefined ? { failedKeepDays: input.failedKeepDays } : {}),
      manifest: manifestName,
      files: [...files, { name: manifestName, format: 'manifest' as const, size: written.size, xxh64: written.xxh64 }],
      bytes: input.bytes,
      warnings: input.warnings,
    };
  },
});
