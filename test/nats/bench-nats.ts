import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { vmbackup } from '../helpers/cli.js';
import { startNatsServer } from '../helpers/nats-server.js';
import { startWorker } from './workers.js';

/**
 * The `nats` section of `npm run bench`: the same run — every VM of the simulator's pool —
 * embedded (`vmbackup`) and through NATS (`vmbackup run` with two workers), wall time of the
 * command each, alternating which goes first. The workers are started (and logged in to
 * nothing yet) before the first round, as they would be, long-lived, on a management node.
 *
 * @example const r = await natsVsEmbedded({ simUrl, user: 'root', password: 'bench', work, rounds: 3 });
 */
export async function natsVsEmbedded(opts: {
  simUrl: string;
  user: string;
  password: string;
  work: string;
  rounds: number;
  note?: (line: string) => void;
}): Promise<{ ratio: number; embeddedMs: number[]; natsMs: number[] }> {
  const base = await mkdtemp(path.join(opts.work, 'nats-bench-'));
  const passwordFile = path.join(base, 'password');
  await writeFile(passwordFile, `${opts.password}\n`);
  await chmod(passwordFile, 0o600);
  const nats = await startNatsServer();
  const common = ['-b', base, '--xapi', opts.simUrl, '--user', opts.user, '--password-file', passwordFile, '-l', 'warning'];
  const workers = [0, 1].map(() => startWorker([...common, '--nats', nats.url, '-l', 'info']));
  try {
    await Promise.all(workers.map((w) => w.ready));
    const embeddedMs: number[] = [];
    const natsMs: number[] = [];
    const timed = async (kind: 'embedded' | 'nats', round: number): Promise<number> => {
      const dir = path.join(base, `${kind}-${round}`);
      await mkdir(dir);
      const args = kind === 'embedded' ? [...common, '-d', dir] : ['run', ...common, '-d', dir, '--nats', nats.url];
      const started = performance.now();
      const r = await vmbackup(args, { timeoutMs: 600_000 });
      const ms = performance.now() - started;
      if (r.code !== 0) throw new Error(`${kind} run exited ${r.code}:\n${r.stderr.slice(-2000)}`);
      await rm(dir, { recursive: true, force: true });
      return ms;
    };
    for (let round = 0; round < opts.rounds; round++) {
      const order: ('embedded' | 'nats')[] = round % 2 === 0 ? ['embedded', 'nats'] : ['nats', 'embedded'];
      for (const kind of order) (kind === 'embedded' ? embeddedMs : natsMs).push(await timed(kind, round));
      opts.note?.(`  nats round ${round + 1}: embedded ${(embeddedMs.at(-1)! / 1000).toFixed(1)} s, NATS with two workers ${(natsMs.at(-1)! / 1000).toFixed(1)} s`);
    }
    return { ratio: median(natsMs) / median(embeddedMs), embeddedMs, natsMs };
  } finally {
    await Promise.all(workers.map((w) => w.stop()));
    await nats.stop();
    await rm(base, { recursive: true, force: true });
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}
