/**
 * `npm run demo`: starts the XAPI simulator with a sample pool (over HTTPS, with its own CA),
 * backs it up with the real `vmbackup` command on its embedded defaults — VMs, pool database
 * and hosts — and says where the files are. Everything lands in ./demo (git-ignored).
 */
import { spawn } from 'node:child_process';
import { chmod, mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PoolSpec } from '../sim/pool-spec.js';
import { startSimulator } from '../sim/server.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const base = path.join(root, 'demo');

const pool = PoolSpec.parse(JSON.parse(await readFile(path.join(root, 'test/demo/demo-pool.json'), 'utf8')));
await rm(base, { recursive: true, force: true });
await mkdir(path.join(base, 'exports'), { recursive: true });
const passwordFile = path.join(base, 'password');
await writeFile(passwordFile, pool.credentials.password + '\n');
await chmod(passwordFile, 0o600);

const sim = await startSimulator({ pool, https: true, tlsDir: path.join(base, 'sim-tls') });
console.log(`demo: simulated pool "demo-pool" listening on ${sim.url} (CA ${path.relative(root, sim.caFile!)})\n`);

const args = [
  path.join(root, 'bin/vmbackup.js'),
  '-b', base,
  '--xapi', sim.url,
  '--user', pool.credentials.user,
  '--password-file', passwordFile,
  '--tls-ca-file', sim.caFile!,
  '-p', '-H',
];
console.log(`demo: vmbackup ${args.slice(1).map((a) => path.isAbsolute(a) ? path.relative(root, a) || '.' : a).join(' ')}\n`);
const code = await new Promise<number>((resolve) => {
  const child = spawn(process.execPath, args, { stdio: 'inherit', cwd: root });
  child.on('close', (c) => resolve(c ?? 1));
});
await sim.close();

console.log(`\ndemo: vmbackup exited with ${code}. The backups are in ${path.relative(root, path.join(base, 'exports'))}/:`);
async function list(dir: string, indent: string): Promise<void> {
  for (const name of (await readdir(dir)).sort()) {
    const full = path.join(dir, name);
    const s = await stat(full);
    if (s.isDirectory()) {
      console.log(`${indent}${name}/`);
      await list(full, indent + '  ');
    } else {
      console.log(`${indent}${name}  (${s.size.toLocaleString('en')} bytes)`);
    }
  }
}
await list(path.join(base, 'exports'), '  ');
console.log(`\ndemo: the log is ${path.relative(root, path.join(base, 'logs', 'vmbackup.log'))}`);
process.exit(code);
