import { spawn } from 'node:child_process';
import path from 'node:path';
import { ROOT } from './cli.js';

/** A simulator running as its own process (`bin/vmbackup-sim.js`). */
export interface SimProcess {
  url: string;
  stop(): void;
}

/**
 * The simulator in its own process, so it shares neither the caller's event loop nor its RSS
 * (benchmarks): `vmbackup-sim --pool FILE --port 0 …extra`, resolved once it listens.
 *
 * @example const sim = await simulatorProcess('/tmp/pool.json', ['--generate', '5000']); … sim.stop();
 */
export async function simulatorProcess(poolFile: string, extra: string[] = []): Promise<SimProcess> {
  const child = spawn(process.execPath, [path.join(ROOT, 'bin/vmbackup-sim.js'), '--pool', poolFile, '--port', '0', ...extra], { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.on('exit', (code) => reject(new Error(`simulator exited with ${code}`)));
  });
  return { url, stop: () => child.kill() };
}
