import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from './server.js';
import { login } from './test-helpers.js';

const run = promisify(execFile);

// A 512 MiB disk streamed whole to a client in its own process (so it does not share the
// simulator's event loop) that discards the bytes: the simulator's memory must not grow with
// the disk (a simulator that buffered the export would grow by its full size, four times the
// bound below). How fast it streams is `npm run bench -- sim` (sim_export_vs_plain_http_ratio),
// a ratio against a plain HTTP server in the same run; a test cannot time it on a loaded machine.
let sim: Simulator;
let session: string;

beforeAll(async () => {
  sim = await startSimulator({
    pool: {
      credentials: { user: 'root', password: 'secret' },
      hosts: [{ name_label: 'h' }],
      srs: [{ name_label: 'big SR', size_gib: 100, used_gib: 1 }],
      vms: [{ name_label: 'big', power_state: 'Halted', disks: [{ device: 'xvda', size_mib: 512, fill: 'pattern' }], vifs: [] }],
    },
  });
  session = await login(sim.url);
});
afterAll(async () => {
  await sim.close();
});

describe('throughput', () => {
  it('streams a 512 MiB XVA whole and in constant memory', async () => {
    const rss = process.memoryUsage().rss;
    const client = `let n = 0;
require('node:http').get(process.argv[1], (res) => { res.on('data', (c) => (n += c.length)); res.on('end', () => console.log(n)); });`;
    const { stdout } = await run(process.execPath, ['-e', client, `${sim.url}/export?session_id=${session}&ref=${sim.state.vm('big').ref}`]);
    const bytes = Number(stdout.trim());
    expect(bytes).toBeGreaterThan(512 * 2 ** 20);
    expect(process.memoryUsage().rss - rss).toBeLessThan(128 << 20);
    expect(sim.state.transfers('export').at(-1)).toMatchObject({ status: 'done', bytes });
  });
});
