import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from './server.js';
import { login } from './test-helpers.js';

const run = promisify(execFile);

// Size is the point here: a 2 GiB disk, streamed to a client in its own process (so it does
// not share the simulator's event loop) that discards the bytes. The target is ~1 GB/s; the assertion is a floor that
// a loaded CI machine still clears, the measured rate is printed.
let sim: Simulator;
let session: string;

beforeAll(async () => {
  sim = await startSimulator({
    pool: {
      credentials: { user: 'root', password: 'secret' },
      hosts: [{ name_label: 'h' }],
      srs: [{ name_label: 'big SR', size_gib: 100, used_gib: 1 }],
      vms: [{ name_label: 'big', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 2048, fill: 'pattern' }], vifs: [] }],
    },
  });
  session = await login(sim.url);
});
afterAll(async () => {
  await sim.close();
});

describe('throughput', () => {
  it('streams a 2 GiB XVA fast and in constant memory', async () => {
    const rss = process.memoryUsage().rss;
    const client = `const t0 = performance.now(); let n = 0;
require('node:http').get(process.argv[1], (res) => { res.on('data', (c) => (n += c.length)); res.on('end', () => console.log(n, n / ((performance.now() - t0) / 1000))); });`;
    const { stdout } = await run(process.execPath, ['-e', client, `${sim.url}/export?session_id=${session}&ref=${sim.state.vm('big').ref}`]);
    const [bytes, speed] = stdout.trim().split(' ').map(Number);
    console.log(`2 GiB XVA export: ${(speed! / 1e9).toFixed(2)} GB/s`);
    expect(bytes).toBeGreaterThan(2 * 2 ** 30);
    expect(speed).toBeGreaterThan(250e6);
    expect(process.memoryUsage().rss - rss).toBeLessThan(256 << 20);
    expect(sim.state.transfers('export').at(-1)).toMatchObject({ status: 'done', bytes });
  });
});
