import { describe, expect, it } from 'vitest';
import { soakCluster, tally } from '../soak/cluster.js';

/**
 * Three tries of the cluster soak (`npm run soak -- cluster`, test/soak/cluster.ts): a node
 * of the three-node cluster is killed under a run — the jobs stream's leader, then the
 * events stream's, then the runs bucket's — and started again. Each run ends with every VM
 * backed up, and leaves no partial file, no snapshot and no job behind.
 */
describe('a three-node cluster losing a node under a run', () => {
  it('three tries: no hang, no failed run, nothing left over', async () => {
    const lines: string[] = [];
    const result = await soakCluster({ tries: 3, vmMib: 16, print: (l) => lines.push(l) });
    expect(result.tries.map((t) => t.role)).toEqual(['jobs stream leader', 'events stream leader', 'runs bucket leader']);
    const report = `${lines.join('\n')}\n${tally(result)}`;
    expect(result.tries.filter((t) => t.hang || t.failure !== undefined || t.leftovers.length > 0), report).toEqual([]);
    expect(result.ok, report).toBe(true);
  }, 900_000);
});
