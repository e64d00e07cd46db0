/**
 * The chunk store driven from a child process, for the tests that kill it, fill its disk or
 * run it beside another writer. Prints one line per step on stdout.
 *
 *   backup <backupDir> <vmFolder> <stamp> <seed> <chunks>   one point, one disk (64 KiB chunks)
 *   loop <backupDir> <vmFolder> <points> <chunks>           points seed 0..n-1, one after the other
 *   gc <backupDir> [marginMs]                                one garbage collection
 *   random <backupDir> <vmFolder> <stamp> <chunks>         one point of incompressible chunks
 *   verify <backupDir>                                       verifies every point; prints the report
 *   stream <mib>                                             a zero-heavy disk of <mib> MiB; prints peak RSS
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ChunkStore, PointWriter, collectGarbage, listPoints, verifyPoints } from '../../runtime/chunkstore/chunkstore.js';

const TEST_CHUNK = 64 << 10;

/**
 * Chunk `j` of the disk of `seed`: zeros for every third chunk, otherwise a pattern that
 * consecutive seeds share for half the chunks, so each point reuses chunks of the one before.
 */
function testChunk(seed: number, j: number): Buffer {
  if ((j + seed) % 3 === 0) return Buffer.alloc(TEST_CHUNK);
  const generation = j % 2 === 0 ? Math.floor(seed / 2) : seed;
  const pattern = createHash('sha256').update(`${j}/${generation}`).digest();
  const b = Buffer.alloc(TEST_CHUNK);
  for (let at = 0; at < b.length; at += 32) pattern.copy(b, at);
  b.writeUInt32LE(j, 0);
  return b;
}

async function* disk(seed: number, chunks: number): AsyncGenerator<Buffer> {
  for (let j = 0; j < chunks; j++) {
    yield seed < 0 ? randomBytes(TEST_CHUNK) : testChunk(seed, j);
    if (j % 8 === 7) console.log(`chunk ${j}`);
  }
}

async function backup(dir: string, vmFolder: string, stamp: string, seed: number, chunks: number): Promise<void> {
  const store = await ChunkStore.open(dir, { chunkSize: TEST_CHUNK });
  const p = await PointWriter.begin(store, { vmFolder, stamp, vm: { uuid: `uuid-${vmFolder}`, name: vmFolder } });
  console.log('begun');
  try {
    await p.addDisk('xvda', disk(seed, chunks));
    console.log('disk');
    await p.setMeta(`<vm seed="${seed}"/>`);
    console.log('meta');
    await p.commit();
  } catch (error) {
    await p.abort();
    throw error;
  }
  console.log('committed');
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === 'backup') {
  await backup(args[0]!, args[1]!, args[2]!, Number(args[3]), Number(args[4]));
} else if (cmd === 'random') {
  await backup(args[0]!, args[1]!, args[2]!, -1, Number(args[3]));
} else if (cmd === 'verify') {
  const store = await ChunkStore.open(args[0]!, { chunkSize: TEST_CHUNK });
  const l = await listPoints(store);
  const r = await verifyPoints(store, l.points);
  console.log(JSON.stringify({ ok: r.ok, points: l.points.map((p) => `${p.vmFolder}/${p.stamp}`), problems: r.points.flatMap((p) => p.problems) }));
} else if (cmd === 'loop') {
  for (let i = 0; i < Number(args[2]); i++) await backup(args[0]!, args[1]!, `p${String(i).padStart(4, '0')}`, i, Number(args[3]));
} else if (cmd === 'gc') {
  const store = await ChunkStore.open(args[0]!, { chunkSize: TEST_CHUNK });
  console.log('gc started');
  const r = await collectGarbage(store, { safetyMarginMs: Number(args[1] ?? 0) });
  console.log(`gc ${JSON.stringify(r)}`);
} else if (cmd === 'stream') {
  const mib = Number(args[0]);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'chunkstore-rss-'));
  try {
    const store = await ChunkStore.open(dir, { chunkSize: 4 << 20 });
    const zeros = Buffer.alloc(1 << 20);
    async function* source() {
      for (let i = 0; i < mib; i++) {
        // One MiB of data every 64 MiB, the rest zeros: a mostly empty VM disk.
        if (i % 64 === 0) yield Buffer.alloc(1 << 20, `data ${i} `);
        else yield zeros;
      }
    }
    const p = await PointWriter.begin(store, { vmFolder: 'big', vm: { uuid: 'u', name: 'big' } });
    const d = await p.addDisk('xvda', source());
    await p.commit();
    console.log(JSON.stringify({ size: d.size, chunks: d.chunks, zeroChunks: d.zeroChunks, maxRssMiB: process.resourceUsage().maxRSS / 1024 }));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
} else {
  console.error(`unknown command ${cmd}`);
  process.exit(2);
}
