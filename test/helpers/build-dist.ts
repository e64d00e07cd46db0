import { execFileSync } from 'node:child_process';
import { readdirSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The commands (bin/vmbackup.js, bin/vmbackup-sim.js) run the compiled dist/, and the tests,
 * the demo and the bench start them as processes: they must run the sources as they are now.
 * `ensureDist` rebuilds dist/ (`tsc -p tsconfig.build.json`, a few seconds) when a source or
 * the build's config is newer than the last build, and does nothing otherwise (a stat per
 * file). It is a vitest global setup, and `tsx test/helpers/build-dist.ts` runs it before
 * the demo and the bench.
 */
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SOURCES = ['functions', 'runtime', 'infra', 'test/sim'];
const CONFIGS = ['tsconfig.json', 'tsconfig.build.json', 'package.json'];
/** Written after each build here, dated when it started (a source saved during it is newer). */
const STAMP = path.join(ROOT, 'dist', '.built');

function newestSource(): number {
  let newest = 0;
  const visit = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, entry.name);
      if (entry.isDirectory()) visit(p);
      else if (entry.name.endsWith('.ts')) newest = Math.max(newest, statSync(p).mtimeMs);
    }
  };
  for (const dir of SOURCES) visit(path.join(ROOT, dir));
  for (const file of CONFIGS) newest = Math.max(newest, statSync(path.join(ROOT, file)).mtimeMs);
  return newest;
}

function builtAt(): number {
  try {
    return statSync(STAMP).mtimeMs;
  } catch {
    return -1;
  }
}

export function ensureDist(): void {
  if (builtAt() >= newestSource()) return;
  const started = new Date();
  execFileSync(process.execPath, [path.join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', path.join(ROOT, 'tsconfig.build.json')], { cwd: ROOT, stdio: 'inherit' });
  writeFileSync(STAMP, `${started.toISOString()}\n`);
  utimesSync(STAMP, started, started);
}

export default function setup(): void {
  ensureDist();
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) ensureDist();
