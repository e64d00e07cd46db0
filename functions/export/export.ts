import path from 'node:path';
import { rm } from 'node:fs/promises';
import { z } from 'zod';
import { defineFunction, subject } from '../../runtime/function.js';
import type { Ctx } from '../../runtime/function.js';
import { PermanentError, RestartError, VmbackupError, errorInfo } from '../../runtime/errors.js';
import { jobSubject } from '../../runtime/events.js';
import { writeStreamAtomic } from '../../runtime/storage/atomic.js';
import { dataFileName } from '../../runtime/storage/naming.js';
import type { BackupFormat } from '../../runtime/storage/naming.js';
import { formatBytes, formatSeconds } from '../../runtime/units.js';
import type { XapiClient } from '../../runtime/xapi/client.js';
import { destroySnapshotVdi, destroySnapshotVm, unblockStart } from '../../runtime/xapi/snapshots.js';
import { TarError } from '../../runtime/formats/tar.js';
import { XvaChecker, XvaError } from '../../runtime/formats/xva.js';
import type { XvaReport } from '../../runtime/formats/xva.js';
import { WrittenFile } from '../job.js';
import { describeFailure, xvaDetail } from '../verify/check.js';
import { SnapshotOutput } from '../snapshot/snapshot.js';

/**
 * export — streams the snapshot out of XAPI into the VM's folder.
 *
 * vm-export: `GET /export` → `backup_<stamp>.xva` (`.xva.gz` with gzip, `.xva.zst` with zstd,
 * compressed by XAPI). vdi-export: `GET /export_raw_vdi` per disk → `backup_<disk>_<stamp>.raw`
 * or `.vhd`. Each file is written to `.partial`, fsynced, and renamed only once XAPI's task
 * says the transfer succeeded (an aborted XAPI export ends like a normal close).
 *
 * An uncompressed XVA the verify phase will check (`verify`) is checked as it is written: the
 * verify phase's XVA check (XvaChecker) sees each piece of the HTTP body as it goes to disk,
 * so verify then need not read the file back (it confirms the file's size and hash). A
 * problem fails the export like a failed write: nothing renamed, nothing counted, the error
 * names the chunk or entry and its byte offset. (Compressed XVAs are still read back by
 * verify: gunzip/zstd in the export's path would cost more than the re-read saves.)
 *
 * Whatever happens, the snapshot (VM record and its disks) is destroyed and a blocked start
 * lifted, also when the run was stopped before the transfer began (then nothing is
 * transferred). On failure, the files of this set are removed — no partial file is ever left
 * to be counted — and the error says whether a new attempt from a fresh snapshot may help.
 *
 * Subject `vmbackup.jobs.export`; input: the snapshot's output. Output: the meta's input.
 */
export const ExportInput = SnapshotOutput;
export type ExportInput = z.infer<typeof ExportInput>;

export const ExportOutput = ExportInput.extend({
  files: z.array(WrittenFile),
  bytes: z.number().int().min(0),
  exportMs: z.number().min(0),
});
export type ExportOutput = z.infer<typeof ExportOutput>;

export const ExportJob = subject(jobSubject('export'), ExportInput);

export const exportFn = defineFunction({
  name: 'export',
  description: 'Stream the snapshot to the backup folder (xva / raw / vhd), then destroy the snapshot.',
  subject: ExportJob,
  output: ExportOutput,
  // Redelivery is for a worker that died mid-export (its snapshot is still there); a failure
  // the handler saw is terminal for this message and restarts the VM's pipeline instead.
  retry: { maxDeliver: 3, backoffMs: [5_000, 30_000] },
  async handle(input, ctx) {
    const xapi = await ctx.xapi();
    const dir = path.join(input.backupDir, input.folder);
    const started = Date.now();
    const files: WrittenFile[] = [];
    const warnings = [...input.warnings];
    // What the transfer may move: the disks' virtual size (an XVA holds less when sparse or compressed).
    const total = input.snapshot.disks.reduce((n, d) => n + d.virtualSize, 0);
    const moved = () => files.reduce((n, f) => n + f.size, 0);
    const progress = (bytes: number) => ctx.progress(moved() + bytes, total > 0 ? total : undefined);
    let failure: unknown;
    try {
      // Stopped (or shutting down) before the transfer: only the clean-up below runs.
      ctx.signal.throwIfAborted();
      if (input.mode === 'vm') {
        const format: BackupFormat = input.compress === 'gzip' ? 'xva.gz' : input.compress === 'zstd' ? 'xva.zst' : 'xva';
        const query: Record<string, string> = { uuid: input.snapshot.vmUuid! };
        if (input.compress === 'gzip') query.use_compression = 'true';
        if (input.compress === 'zstd') query.use_compression = 'zstd';
        files.push(await transfer(xapi, ctx, input, '/export', query, path.join(dir, dataFileName(input.stamp, format)), format, progress, input.verify === true && format === 'xva'));
      } else {
        for (const disk of input.snapshot.disks) {
          const name = dataFileName(input.stamp, input.format, disk.device);
          const file = await transfer(xapi, ctx, input, '/export_raw_vdi', { vdi: disk.exportVdi, format: input.format }, path.join(dir, name), input.format, progress);
          files.push({ ...file, disk: disk.device });
        }
      }
    } catch (error) {
      failure = error;
    } finally {
      warnings.push(...(await cleanUp(xapi, ctx, input)));
    }
    if (failure !== undefined) {
      // The failure's event carries no output: its clean-up warnings are said here.
      for (const w of warnings.slice(input.warnings.length)) ctx.log.warn(`${input.vm.name}: ${w}`);
      await Promise.all(files.map((f) => rm(path.join(dir, f.name), { force: true })));
      throw asExportError(failure, input.vm.name);
    }
    const bytes = files.reduce((n, f) => n + f.size, 0);
    const exportMs = Date.now() - started;
    ctx.log.info(`${input.vm.name}: exported ${formatBytes(bytes)} in ${formatSeconds(exportMs)} → ${files.map((f) => path.join(dir, f.name)).join(', ')}`);
    return { ...input, files, bytes, exportMs, warnings };
  },
});

async function transfer(
  xapi: XapiClient,
  ctx: Ctx,
  input: ExportInput,
  pathname: string,
  query: Record<string, string>,
  target: string,
  format: BackupFormat,
  progress: (bytes: number) => void,
  checkXva = false,
): Promise<WrittenFile> {
  const checker = checkXva ? await XvaChecker.create() : undefined;
  let report: XvaReport | undefined;
  const download = await xapi.download(pathname, query, { signal: ctx.signal, direct: true });
  try {
    const result = await writeStreamAtomic(target, download.body, {
      ...(checker !== undefined
        ? {
            inspect: {
              push: (chunk: Buffer) => checker.push(chunk),
              end: () => {
                report = checker.end();
              },
            },
          }
        : {}),
      signal: ctx.signal,
      idleTimeoutMs: input.idleTimeoutS * 1000,
      onProgress: (bytes) => {
        ctx.heartbeat();
        progress(bytes);
      },
      commit: async () => {
        await download.task;
      },
    });
    return {
      name: path.basename(target),
      format,
      size: result.size,
      xxh64: result.xxh64,
      ...(report !== undefined ? { checkedAsWritten: { detail: xvaDetail(report) } } : {}),
    };
  } catch (error) {
    download.abort();
    if (error instanceof XvaError || error instanceof TarError) throw checkFailed(path.basename(target), error);
    throw error;
  }
}

/**
 * The export's own check of an XVA found a problem in the bytes XAPI sent: the sentence
 * `vmbackup verify` would say of the file, which was not kept. Corruption on the way may not
 * happen again: the VM may be backed up again from a new snapshot (a RestartError).
 */
function checkFailed(name: string, error: XvaError | TarError): RestartError {
  const problem = describeFailure(name, { kind: 'check', error }, false);
  return new RestartError(
    problem.code,
    `checked as written: ${problem.message}; the export was discarded`,
    { file: name, ...(problem.offset !== undefined ? { offset: problem.offset } : {}), ...(problem.entry !== undefined ? { entry: problem.entry } : {}), ...(problem.chunk !== undefined ? { chunk: problem.chunk } : {}) },
    { cause: error },
  );
}

/** Destroys what the snapshot phase made and lifts a start block; returns warnings. */
async function cleanUp(xapi: XapiClient, ctx: Ctx, input: ExportInput): Promise<string[]> {
  const warnings: string[] = [];
  const snap = input.snapshot;
  try {
    if (snap.kind === 'vm') {
      const ref = await xapi.call<string>('VM.get_by_uuid', snap.vmUuid);
      await destroySnapshotVm(xapi, ref);
    } else if (snap.kind === 'vdi') {
      for (const disk of snap.disks) {
        const ref = await xapi.call<string>('VDI.get_by_uuid', disk.exportVdi).catch(() => undefined);
        if (ref !== undefined) await destroySnapshotVdi(xapi, ref);
      }
    }
  } catch (error) {
    if ((error as { code?: string }).code !== 'UUID_INVALID') {
      // The summary and the logs put the VM's name before a job's warnings.
      ctx.log.debug({ err: error }, `${input.vm.name}: destroying the snapshot`);
      warnings.push(`snapshot not destroyed (${errorInfo(error).message}); the next run removes it by its tag`);
    }
  }
  if (snap.startBlocked) {
    try {
      await unblockStart(xapi, await xapi.call<string>('VM.get_by_uuid', snap.vmUuid), snap.blockHolder);
    } catch (error) {
      ctx.log.debug({ err: error }, `${input.vm.name}: lifting the start block`);
      const hold = snap.blockHolder !== undefined ? `param-name=other-config param-key=${snap.blockHolder}, then ` : '';
      warnings.push(
        `could not lift the start block (${errorInfo(error).message}); the next run lifts it once no run holds it, or remove it with xe vm-param-remove uuid=${snap.vmUuid} ${hold}param-name=blocked-operations param-key=start (and start_on)`,
      );
    }
  }
  return warnings;
}

/**
 * After a failure the snapshot is gone, so this message cannot be retried: a failure that
 * may clear (network, stall, XAPI hiccup) becomes a RestartError — the coordinator may back
 * the VM up again from a new snapshot — and one that cannot (disk full, VM gone) stays final.
 */
function asExportError(error: unknown, vmName: string): VmbackupError {
  if (error instanceof PermanentError) return error;
  const info = errorInfo(error);
  if (info.code === 'UUID_INVALID' || info.code === 'HANDLE_INVALID') {
    return new RestartError('SNAPSHOT_GONE', `the snapshot of ${vmName} to export is gone (${info.code})`, {}, { cause: error });
  }
  return new RestartError(info.code, info.message, error instanceof VmbackupError ? error.data : {}, { cause: error });
}
