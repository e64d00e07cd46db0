import { formatBytes } from '../../runtime/units.js';
import path from 'node:path';
import { z } from 'zod';
import { defineFunction, subject } from '../../runtime/function.js';
import { jobSubject } from '../../runtime/events.js';
import { POOL_DB_FOLDER, parsePoolDbFileName, poolDbFileName } from '../../runtime/storage/naming.js';
import { JobBase, WrittenFile } from '../job.js';
import { backupToSeries } from '../series.js';

/**
 * pool-db — the pool database, `GET /pool/xmldbdump` → `<backupDir>/POOL_DB/metadata_<stamp>.db`
 * (restore with `xe pool-restore-database`), keeping the newest `maxBackups` dumps.
 *
 * Subject `vmbackup.jobs.pool-db`.
 *
 * @example { "runId": "20261126-083000-7f3a", "jobId": "pool-db", "backupDir": "/mnt/VmBackup/exports",
 *            "stamp": "20261126-083000", "maxBackups": 4 }
 */
export const PoolDbInput = JobBase.extend({
  backupDir: z.string().min(1),
  stamp: z.string().regex(/^\d{8}-\d{6}$/),
  maxBackups: z.number().int().min(1),
  idleTimeoutS: z.number().int().min(1).default(300),
});
export type PoolDbInput = z.infer<typeof PoolDbInput>;

export const PoolDbOutput = PoolDbInput.extend({
  files: z.array(WrittenFile),
  deleted: z.array(z.object({ stamp: z.string(), files: z.array(z.string()), reason: z.string() })),
});

export const PoolDbJob = subject(jobSubject('pool-db'), PoolDbInput);

export const poolDb = defineFunction({
  name: 'pool-db',
  description: 'Back up the pool database (xmldbdump) to POOL_DB/, with retention.',
  subject: PoolDbJob,
  output: PoolDbOutput,
  async handle(input, ctx) {
    const name = poolDbFileName(input.stamp);
    const { file, deleted } = await backupToSeries(ctx, {
      runId: input.runId,
      pathname: '/pool/xmldbdump',
      dir: path.join(input.backupDir, POOL_DB_FOLDER),
      name,
      format: 'db',
      kind: 'pool-db',
      series: (n) => parsePoolDbFileName(n) !== null,
      maxBackups: input.maxBackups,
      idleTimeoutMs: input.idleTimeoutS * 1000,
    });
    ctx.log.info(`pool database saved to ${path.join(input.backupDir, POOL_DB_FOLDER, name)} (${formatBytes(file.size)})`);
    return { ...input, files: [{ ...file, name: `${POOL_DB_FOLDER}/${name}` }], deleted };
  },
});
