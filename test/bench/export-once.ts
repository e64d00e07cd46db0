/**
 * One export through the real snapshot + export functions, in a fresh process, for the
 * benchmarks: prints `{ bytes, ms, maxRssMiB }` as JSON on stdout.
 *
 *   tsx test/bench/export-once.ts <xapi url> <user> <password> <vm uuid> <vm name> <backup dir>
 */
import { exportFn } from '../../functions/export/export.js';
import { snapshot } from '../../functions/snapshot/snapshot.js';
import type { SnapshotInput } from '../../functions/snapshot/snapshot.js';
import { localCtx } from '../../runtime/function.js';
import { silentLogger } from '../../runtime/log.js';
import { formatStamp } from '../../runtime/storage/naming.js';
import { XapiClient } from '../../runtime/xapi/client.js';

const [url, user, password, uuid, name, dir] = process.argv.slice(2) as [string, string, string, string, string, string];
const xapi = await XapiClient.connect({ url, user, password });
const ctx = localCtx({ log: silentLogger(), xapi });
const input: SnapshotInput = {
  runId: 'bench',
  jobId: `vm.${uuid}`,
  try: 1,
  vm: { uuid, name },
  mode: 'vm',
  disks: [],
  backupDir: dir,
  folder: 'bench',
  stamp: formatStamp(new Date()),
  maxBackups: 1,
  compress: 'none',
  format: 'raw',
  spaceThreshold: 1,
  haltedWithoutSnapshot: true,
  idleTimeoutS: 300,
};
const snap = await snapshot.handle(input, ctx);
const started = performance.now();
const out = await exportFn.handle(snapshot.output.parse(snap), ctx);
const ms = performance.now() - started;
await xapi.close();
process.stdout.write(JSON.stringify({ bytes: out.bytes, ms, maxRssMiB: process.resourceUsage().maxRSS / 1024 }) + '\n');
process.exit(0);
