/**
 * Exports through the real snapshot + export functions, in a fresh process, for the
 * benchmarks: one VM, or several at once (as `pool_workers = 2` would), each as an XVA
 * (`vm`, compressed by XAPI with `gzip`/`zstd`) or its disks as raw/VHD (`vdi:raw`,
 * `vdi:vhd`). Prints `{ bytes, ms, maxRssMiB }` as JSON on stdout: all VMs' bytes, the wall
 * time from the first export's start to the last one's end (after fsync and rename).
 *
 *   tsx test/bench/export-once.ts <xapi url> <user> <password> <backup dir> <none|gzip|zstd> <vm|vdi:raw|vdi:vhd> <uuid:name>…
 */
import { exportFn } from '../../functions/export/export.js';
import { snapshot } from '../../functions/snapshot/snapshot.js';
import { localCtx } from '../../runtime/function.js';
import { silentLogger } from '../../runtime/log.js';
import { XapiClient } from '../../runtime/xapi/client.js';
import { vmJob } from '../helpers/jobs.js';

const [url, user, password, dir, compress, kind, ...vms] = process.argv.slice(2) as [string, string, string, string, 'none' | 'gzip' | 'zstd', string, ...string[]];
const [mode, format] = kind.split(':') as ['vm' | 'vdi', 'raw' | 'vhd' | undefined];
const xapi = await XapiClient.connect({ url, user, password });
const ctx = localCtx({ log: silentLogger(), xapi });
const snaps = await Promise.all(
  vms.map(async (vm) => {
    const [uuid, name] = vm.split(':') as [string, string];
    const input = vmJob({
      runId: 'bench',
      vm: { uuid, name },
      backupDir: dir,
      mode,
      disks: mode === 'vdi' ? ['xvda'] : [],
      folder: `bench-${name}`,
      maxBackups: 1,
      compress,
      format: format ?? 'raw',
      idleTimeoutS: 300,
      // verify_after_backup's default (on for XVA exports): an uncompressed XVA is checked as it is written.
      verify: mode === 'vm',
    });
    return snapshot.output.parse(await snapshot.handle(input, ctx));
  }),
);
const started = performance.now();
const outs = await Promise.all(snaps.map((snap) => exportFn.handle(snap, ctx)));
const ms = performance.now() - started;
await xapi.close();
process.stdout.write(JSON.stringify({ bytes: outs.reduce((n, o) => n + o.bytes, 0), ms, maxRssMiB: process.resourceUsage().maxRSS / 1024 }) + '\n');
process.exit(0);
