/**
 * One copy of a file to another, as a restore writes its disk (`writeStreamAtomic`: hashed,
 * fsynced, renamed), in a fresh process, for the benchmarks: prints `{ bytes, ms, cpuMs, maxRssMiB }`
 * as JSON on stdout, like restore-once.ts beside it.
 *
 *   tsx test/bench/copy-once.ts <from> <to>
 */
import { createReadStream } from 'node:fs';
import { writeStreamAtomic } from '../../runtime/storage/atomic.js';

const [from, to] = process.argv.slice(2) as [string, string];
const start = process.cpuUsage();
const started = performance.now();
const out = await writeStreamAtomic(to, createReadStream(from, { highWaterMark: 1 << 20 }));
const ms = performance.now() - started;
const cpu = process.cpuUsage(start);
process.stdout.write(JSON.stringify({ bytes: out.size, ms, cpuMs: (cpu.user + cpu.system) / 1000, maxRssMiB: process.resourceUsage().maxRSS / 1024 }) + '\n');
