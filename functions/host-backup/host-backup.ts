import { formatBytes } from '../../runtime/units.js';
import path from 'node:path';
import { z } from 'zod';
import { defineFunction, subject } from '../../runtime/function.js';
import { PermanentError } from '../../runtime/errors.js';
import { jobSubject } from '../../runtime/events.js';
import { HOSTS_FOLDER, hostBackupFileName, hostFileComponent, parseHostBackupFileName } from '../../runtime/storage/naming.js';
import { JobBase, WrittenFile } from '../job.js';
import { backupToSeries } from '../series.js';

/**
 * host-backup — one host's dom0 backup, `GET /host_backup` asked of that host →
 * `<backupDir>/HOSTS/hosts_<host>_<stamp>.xbk` (restore with `xe host-restore`), keeping the
 * newest `maxBackups` of that host. The plan makes one job per host.
 *
 * Subject `vmbackup.jobs.host-backup`.
 *
 * @example { "runId": "…", "jobId": "host.8d2f…", "backupDir": "/mnt/VmBackup/exports",
 *            "stamp": "20261126-083000", "maxBackups": 4, "host": {"uuid": "8d2f…", "name": "xcp1"} }
 */
export const HostBackupInput = JobBase.extend({
  backupDir: z.string().min(1),
  stamp: z.string().regex(/^\d{8}-\d{6}$/),
  maxBackups: z.number().int().min(1),
  host: z.object({ uuid: z.string().min(1), name: z.string() }),
  idleTimeoutS: z.number().int().min(1).default(300),
});
export type HostBackupInput = z.infer<typeof HostBackupInput>;

export const HostBackupOutput = HostBackupInput.extend({
  files: z.array(WrittenFile),
  deleted: z.array(z.object({ stamp: z.string(), files: z.array(z.string()), reason: z.string() })),
});

export const HostBackupJob = subject(jobSubject('host-backup'), HostBackupInput);

export const hostBackup = defineFunction({
  name: 'host-backup',
  description: "Back up one host's dom0 (host_backup) to HOSTS/, with retention per host.",
  subject: HostBackupJob,
  output: HostBackupOutput,
  async handle(input, ctx) {
    const xapi = await ctx.xapi();
    const host = await xapi.getRecordByUuid('host', input.host.uuid).catch((error: unknown) => {
      const code = (error as { code?: string }).code;
      if (code === 'UUID_INVALID' || code === 'HANDLE_INVALID') {
        throw new PermanentError('HOST_GONE', `host ${input.host.name} (${input.host.uuid}) is no longer in the pool`, { host: input.host.uuid });
      }
      throw error;
    });
    const name = hostBackupFileName(host.name_label, input.stamp);
    const component = hostFileComponent(host.name_label);
    const { file, deleted } = await backupToSeries(ctx, {
      runId: input.runId,
      pathname: '/host_backup',
      host,
      dir: path.join(input.backupDir, HOSTS_FOLDER),
      name,
      format: 'xbk',
      kind: 'hosts',
      series: (n) => parseHostBackupFileName(n)?.host === component,
      maxBackups: input.maxBackups,
      idleTimeoutMs: input.idleTimeoutS * 1000,
    });
    ctx.log.info(`host ${host.name_label} backed up to ${path.join(input.backupDir, HOSTS_FOLDER, name)} (${formatBytes(file.size)})`);
    return { ...input, files: [{ ...file, name: `${HOSTS_FOLDER}/${name}` }], deleted };
  },
});
