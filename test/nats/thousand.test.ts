import { describe, expect, it } from 'vitest';
import { thousandVms } from '../soak/thousand.js';

/**
 * A thousand VMs on four workers and one nats-server (test/soak/thousand.ts): every VM backed
 * up, no partial file, no snapshot, no job left. The same on the three-node cluster is
 * `npm run soak -- thousand` (too long for the suite on two cores).
 */
describe('a thousand VMs on four workers', () => {
  it('one nats-server: 1,000 backups, nothing left over', async () => {
    const lines: string[] = [];
    const r = await thousandVms({ vms: 1000, nodes: 1, print: (l) => lines.push(l) });
    expect(r.summary.exitCode, lines.join('\n')).toBe(0);
    expect(r.summary.categories['vm-export']).toEqual({ S: 1000, W: 0, E: 0 });
    expect(r.backups).toBe(1000);
    expect(r.leftovers).toEqual([]);
  }, 1_200_000);
});
