import { soakCluster, tally } from './cluster.js';
import { measureStall } from './stall.js';

/**
 * `npm run soak -- cluster [--tries N] [--vm-mib M] [--ack-wait S]`: kills one node of a
 * three-node JetStream cluster under each of N runs (test/soak/cluster.ts) and prints each
 * try and the tally. Exit 1 on a hang, a failed run or a leftover; 2 on bad arguments.
 *
 * `npm run soak -- stall [--tries N]`: how long the coordinator's kind of consumer stalls
 * when its leader is killed, N times (test/soak/stall.ts; default 4).
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
if ((scenario !== 'cluster' && scenario !== 'stall') || [...flags.keys()].some((k) => !['--tries', '--vm-mib', '--ack-wait'].includes(k))) {
  console.error('usage: npm run soak -- cluster [--tries N] [--vm-mib M] [--ack-wait S]\n       npm run soak -- stall [--tries N]');
  process.exit(2);
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
