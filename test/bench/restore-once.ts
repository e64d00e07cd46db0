/**
 * One restore of a point's disk to a file, in a fresh process, for the benchmarks: prints
 * `{ bytes, ms, cpuMs, maxRssMiB }` as JSON on stdout.
 *
 *   tsx test/bench/restore-once.ts <point folder> <disk> <file> [raw|vhd]
 */
import { restorePointToFile } from '../../functions/restore/restore-point.js';

const [file, disk, to, format] = process.argv.slice(2) as [string, string, string, string | undefined];
const start = process.cpuUsage();
const started = performance.now();
const out = await restorePointToFile({ file, disk, to, format: format === 'vhd' ? 'vhd' : 'raw' });
const ms = performance.now() - started;
const cpu = process.cpuUsage(start);
process.stdout.write(JSON.stringify({ bytes: out.bytes, ms, cpuMs: (cpu.user + cpu.system) / 1000, maxRssMiB: process.resourceUsage().maxRSS / 1024 }) + '\n');
