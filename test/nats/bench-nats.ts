import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { connect } from 'nats';
import { NatsRunStore } from '../../runtime/run/nats-store.js';
import type { JobState } from '../../runtime/run/state.js';
import type { RunSummary } from '../../runtime/run/summary.js';
import { vmbackup } from '../helpers/cli.js';
import { startNatsServer } from '../helpers/nats-server.js';
import { startCluster } from './cluster-rig.js';
import { startWorker } from './workers.js';
import type { WorkerProcess } from './workers.js';

/** One run of a benchmark: the command's wall time and its JSON summary. */
export interface TimedRun {
  ms: number;
  summary: RunSummary;
  /** Through NATS: the jobs' state as the runs bucket holds it (with each phase's time). */
  jobs?: JobState[];
}

/**
 * The `nats` and `thousand` sections of `npm run bench`: the same run — every VM of the
 * simulator's pool — embedded (`vmbackup`) and through NATS (`vmbackup run` with `workers`
 * workers, default two; on one nats-server, or on the three-node cluster of
 * infra/nats/cluster/ with `cluster`), wall time of the command each, alternating which goes
 * first. The workers are started before the first round, as they would be, long-lived, on
 * a management node. With `coordinator`, the workers serve the functions only and one more
 * process (`--functions run-end`) runs the coordinator, so its memory is its own: its peak
 * RSS (VmHWM) is returned.
 *
 * @example const r = await natsVsEmbedded({ simUrl, user: 'root', password: 'bench', work, rounds: 3 });
 */
export async function natsVsEmbedded(opts: {
  simUrl: string;
  user: string;
  password: string;
  work: string;
  rounds: number;
  workers?: number;
  /** Flags for both kinds of run and the workers (`--concurrency 4`). */
  args?: string[];
  cluster?: boolean;
  coordinator?: boolean;
  note?: (line: string) => void;
}): Promise<{ ratio: number; embedded: TimedRun[]; nats: TimedRun[]; coordinatorPeakRssMiB?: number }> {
  const base = await mkdtemp(path.join(opts.work, 'nats-bench-'));
  const passwordFile = path.join(base, 'password');
  await writeFile(passwordFile, `${opts.password}\n`);
  await chmod(passwordFile, 0o600);
  const server = opts.cluster === true ? await startCluster() : await startNatsServer();
  const common = ['-b', base, '--xapi', opts.simUrl, '--user', opts.user, '--password-file', passwordFile, '-l', 'warning', ...(opts.args ?? [])];
  const workerArgs = [...common, '--nats', server.url, '-l', 'info', ...(opts.cluster === true ? ['--replicas', '3'] : [])];
  const workers: WorkerProcess[] = [];
  let coordinator: WorkerProcess | undefined;
  try {
    if (opts.coordinator === true) {
      coordinator = startWorker([...workerArgs, '--functions', 'run-end'], { readyTimeoutMs: 60_000 });
      await coordinator.ready;
    }
    for (let i = 0; i < (opts.workers ?? 2); i++) workers.push(startWorker([...workerArgs, ...(coordinator !== undefined ? ['--no-coordinator'] : [])], { readyTimeoutMs: 60_000 }));
    await Promise.all(workers.map((w) => w.ready));
    const embedded: TimedRun[] = [];
    const nats: TimedRun[] = [];
    const timed = async (kind: 'embedded' | 'nats', round: number): Promise<TimedRun> => {
      const dir = path.join(base, `${kind}-${round}`);
      await mkdir(dir);
      const args = kind === 'embedded' ? [...common, '-d', dir, '--json'] : ['run', ...common, '-d', dir, '--nats', server.url, '--json'];
      const started = performance.now();
      const r = await vmbackup(args, { timeoutMs: 1_800_000 });
      const ms = performance.now() - started;
      if (r.code !== 0) throw new Error(`${kind} run exited ${r.code}:\n${r.stderr.slice(-2000)}`);
      await rm(dir, { recursive: true, force: true });
      const summary = JSON.parse(r.stdout) as RunSummary;
      return { ms, summary, ...(kind === 'nats' ? { jobs: await jobStates(server.url, summary.runId) } : {}) };
    };
    for (let round = 0; round < opts.rounds; round++) {
      const order: ('embedded' | 'nats')[] = round % 2 === 0 ? ['embedded', 'nats'] : ['nats', 'embedded'];
      for (const kind of order) (kind === 'embedded' ? embedded : nats).push(await timed(kind, round));
      opts.note?.(
        `  nats round ${round + 1}: embedded ${(embedded.at(-1)!.ms / 1000).toFixed(1)} s, NATS with ${workers.length} workers${opts.cluster === true ? ' (three-node cluster)' : ''} ${(nats.at(-1)!.ms / 1000).toFixed(1)} s`,
      );
    }
    const ms = (runs: TimedRun[]) => runs.map((r) => r.ms);
    return {
      ratio: median(ms(nats)) / median(ms(embedded)),
      embedded,
      nats,
      ...(coordinator !== undefined ? { coordinatorPeakRssMiB: await peakRssMiB(coordinator.pid) } : {}),
    };
  } finally {
    await Promise.all([...workers, ...(coordinator !== undefined ? [coordinator] : [])].map((w) => w.stop()));
    await server.stop();
    await rm(base, { recursive: true, force: true });
  }
}

async function jobStates(url: string, runId: string): Promise<JobState[]> {
  const nc = await connect({ servers: url.split(', ') });
  try {
    return await (await NatsRunStore.open(nc.jetstream())).allJobs(runId);
  } finally {
    await nc.close();
  }
}

/** A process's peak resident set (Linux: VmHWM of /proc/<pid>/status), in MiB. */
export async function peakRssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kib = /^VmHWM:\s+(\d+) kB/m.exec(status);
  if (kib === null) throw new Error(`no VmHWM in /proc/${pid}/status`);
  return Number(kib[1]) / 1024;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}
