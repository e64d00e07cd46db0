import path from 'node:path';
import type { Ctx } from '../runtime/function.js';
import { writeStreamAtomic } from '../runtime/storage/atomic.js';
import type { HostRecord } from '../runtime/xapi/records.js';
import type { WrittenFile } from './job.js';
import { applyDeletions, listFiles, lockedFolder, partialWriters } from './prune/prune.js';
import { planSeriesRetention } from './prune/retention.js';
import type { SeriesKind } from './prune/retention.js';

/**
 * What pool-db and host-backup share: download one XAPI resource into one file of a series
 * (`POOL_DB/metadata_<stamp>.db`, `HOSTS/hosts_<host>_<stamp>.xbk`) atomically, then keep the
 * newest `maxBackups` files of that series.
 */
export async function backupToSeries(
  ctx: Ctx,
  opts: {
    pathname: string;
    /** The run, as the folder lock names its holder. */
    runId: string;
    host?: HostRecord;
    dir: string;
    name: string;
    format: WrittenFile['format'];
    kind: SeriesKind;
    /** Only files of this series are pruned (a host's own files in HOSTS/). */
    series: (name: string) => boolean;
    maxBackups: number;
    idleTimeoutMs: number;
  },
): Promise<{ file: WrittenFile; deleted: { stamp: string; files: string[]; reason: string }[] }> {
  const xapi = await ctx.xapi();
  const target = path.join(opts.dir, opts.name);
  const download = await xapi.download(opts.pathname, {}, { ...(opts.host !== undefined ? { host: opts.host } : {}), signal: ctx.signal });
  let result;
  try {
    result = await writeStreamAtomic(target, download.body, {
      signal: ctx.signal,
      idleTimeoutMs: opts.idleTimeoutMs,
      onProgress: () => ctx.heartbeat(),
      commit: async () => {
        await download.task;
      },
    });
  } catch (error) {
    download.abort();
    throw error;
  }
  // Under the folder's lock: another run may be pruning POOL_DB or HOSTS right now.
  const plan = await lockedFolder(opts.dir, opts.runId, ctx, async () => {
    const files = (await listFiles(opts.dir)).filter((f) => opts.series(f.name));
    const now = ctx.clock.now().getTime();
    const planned = planSeriesRetention({ kind: opts.kind, files, maxBackups: opts.maxBackups, now, protect: [], writers: partialWriters(files, now) });
    await applyDeletions(opts.dir, planned, ctx);
    return planned;
  });
  return {
    file: { name: opts.name, format: opts.format, size: result.size, xxh64: result.xxh64 },
    deleted: (plan?.delete ?? []).map((d) => ({ stamp: d.stamp, files: d.files, reason: d.reason })),
  };
}
