import { soakCluster, tally } from './cluster.js';
import { measureStall } from './stall.js';
import { thousandVms } from './thousand.js';

/**
 * `npm run soak -- cluster [--tries N] [--vm-mib M] [--ack-wait S]`: kills one node of a
 * three-node JetStream cluster under each of N runs (test/soak/cluster.ts) and prints each
 * try and the tally. Exit 1 on a hang, a failed run or a leftover; 2 on bad arguments.
 *
 * `npm run soak -- stall [--tries N]`: how long the coordinator's kind of consumer stalls
 * when its leader is killed, N times (test/soak/stall.ts; default 4).
 *
 * `npm run soak -- thousand [--vms N] [--nodes 1|3]`: one run of N VMs (default 1,000) on
 * four workers, on one nats-server or the three-node cluster (default 3; test/soak/
 * thousand.ts). Exit 1 unless every VM is backed up and nothing is left over.
 */
const [scenario, ...rest] = process.argv.slice(2);
const flags = new Map<string, string>();
for (let i = 0; i < rest.length; i += 2) flags.set(rest[i]!, rest[i + 1] ?? '');
const number = (flag: string, fallback: number): number => {
  const v = flags.get(flag);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) {
    console.error(`${flag} must be a whole number ≥ 1 (got ${JSON.stringify(v)})`);
    process.exit(2);
  }
  return n;
};
const allowed: Record<string, string[]> = { cluster: ['--tries', '--vm-mib', '--ack-wait'], stall: ['--tries'], thousand: ['--vms', '--nodes'] };
if (scenario === undefined || allowed[scenario] === undefined || [...flags.keys()].some((k) => !allowed[scenario]!.includes(k))) {
  console.error('usage: npm run soak -- cluster [--tries N] [--vm-mib M] [--ack-wait S]\n       npm run soak -- stall [--tries N]\n       npm run soak -- thousand [--vms N] [--nodes 1|3]');
  process.exit(2);
}
if (scenario === 'thousand') {
  const nodes = number('--nodes', 3);
  if (nodes !== 1 && nodes !== 3) {
    console.error(`--nodes must be 1 or 3 (got ${nodes})`);
    process.exit(2);
  }
  const vms = number('--vms', 1000);
  const r = await thousandVms({ vms, nodes, print: (line) => console.log(line) });
  const ok = r.summary.exitCode === 0 && r.backups === vms && r.leftovers.length === 0;
  process.exit(ok ? 0 : 1);
}
if (scenario === 'stall') {
  await measureStall({ kills: number('--tries', 4), print: (line) => console.log(line) });
  process.exit(0);
}
// Ctrl-C: the run under way is killed, and the cluster, workers and simulator are stopped.
const stop = new AbortController();
process.once('SIGINT', () => stop.abort());
process.once('SIGTERM', () => stop.abort());
const result = await soakCluster({
  signal: stop.signal,
  tries: number('--tries', 20),
  vmMib: number('--vm-mib', 384),
  ackWaitS: number('--ack-wait', 30),
  print: (line) => console.log(line),
});
console.log(tally(result));
process.exit(result.ok ? 0 : 1);
