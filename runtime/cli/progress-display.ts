import { Writable } from 'node:stream';
import cliProgress from 'cli-progress';
import type { PhaseEvent, PhaseProgress } from '../events.js';
import { ProgressBoard } from '../run/progress.js';
import type { ProgressRow } from '../run/progress.js';
import { formatBytes } from '../units.js';
import type { Io } from './io.js';

/**
 * Whether `vmbackup` and `vmbackup run` draw the live progress lines: `--progress` /
 * `--no-progress` when given, else only when stdout is a terminal — cron's output (a pipe)
 * stays exactly as it was.
 *
 * @example progressWanted(undefined, process.stdout) // true on a terminal
 */
export function progressWanted(flag: boolean | undefined, stdout: NodeJS.WritableStream): boolean {
  return flag ?? (stdout as { isTTY?: boolean }).isTTY === true;
}

/**
 * One line per job under way, with cli-progress:
 *
 *     web1      [████████░░░░░░░░░░░░] export  812.0 MiB of ≤ 2.0 GiB · 96.3 MiB/s · ETA 13 s
 *     db1       [░░░░░░░░░░░░░░░░░░░░] snapshot
 *
 * A job's line appears when its phase starts and goes when its last phase ends. The log
 * lines of the command are printed above the bars (`io()` gives the streams to log to), and
 * the bars are cleared before the summary. Fed with the run's phase events and progress
 * signals; redrawn at most 10 times a second, and each second for the time left.
 *
 * @example
 *   const display = new TerminalProgress(io);
 *   const log = commandLogger(settings, display.io(), …);
 *   runEmbedded(run, { …, onEvent: (e) => display.event(e), onProgress: (p) => display.signal(p) });
 *   display.stop(); report(summary, settings, io, false);
 */
export class TerminalProgress {
  private readonly board = new ProgressBoard();
  private readonly bars: cliProgress.MultiBar;
  private readonly shown = new Map<string, cliProgress.SingleBar>();
  private readonly timer: NodeJS.Timeout;
  private stopped = false;

  constructor(private readonly base: Io) {
    const tty = (base.stdout as { isTTY?: boolean }).isTTY === true;
    this.bars = new cliProgress.MultiBar(
      {
        stream: base.stdout as NodeJS.WriteStream,
        format: ' {label} [{bar}] {figures}',
        barsize: 20,
        hideCursor: tty,
        clearOnComplete: true,
        autopadding: true,
        // Forced with --progress on something that is not a terminal: a line every 2 s.
        noTTYOutput: !tty,
        gracefulExit: false,
      },
      cliProgress.Presets.shades_classic,
    );
    this.timer = setInterval(() => this.sync(), 1_000);
    this.timer.unref();
  }

  /**
   * The command's streams with the bars in mind: what is written to them while bars are
   * shown is printed above the bars (stderr too, when it is the same terminal; a redirected
   * stderr is written as it is).
   */
  io(): Io {
    const above = (direct: NodeJS.WritableStream, viaBars: boolean) =>
      new Writable({
        write: (chunk: Buffer | string, _encoding, callback) => {
          const text = typeof chunk === 'string' ? chunk : chunk.toString('utf8');
          if (viaBars && this.shown.size > 0 && !this.stopped) this.bars.log(text);
          else direct.write(text);
          callback();
        },
      });
    const errTty = (this.base.stderr as { isTTY?: boolean }).isTTY === true;
    return { ...this.base, stdout: above(this.base.stdout, true), stderr: above(this.base.stderr, errTty) };
  }

  event(e: PhaseEvent): void {
    this.board.event(e, Date.now());
    this.sync();
  }

  signal(p: PhaseProgress): void {
    this.board.signal(p, Date.now());
    this.sync();
  }

  /** Clears the bars (printing the log lines still waiting); the summary comes after. */
  stop(): void {
    if (this.stopped) return;
    clearInterval(this.timer);
    this.bars.update();
    this.bars.stop();
    this.stopped = true;
  }

  private sync(): void {
    if (this.stopped) return;
    const rows = this.board.rows(Date.now());
    const width = Math.min(24, Math.max(8, ...rows.map((r) => r.label.length)));
    const live = new Set<string>();
    for (const row of rows) {
      const key = `${row.runId} ${row.jobId}`;
      live.add(key);
      const total = row.total !== undefined && row.total > 0 ? row.total : 1;
      const value = row.bytes !== undefined && row.total !== undefined ? Math.min(row.bytes, total) : 0;
      const payload = { label: row.label.padEnd(width).slice(0, width), figures: figures(row) };
      const bar = this.shown.get(key);
      if (bar === undefined) this.shown.set(key, this.bars.create(total, value, payload));
      else {
        bar.setTotal(total);
        bar.update(value, payload);
      }
    }
    for (const [key, bar] of this.shown) {
      if (live.has(key)) continue;
      this.bars.remove(bar);
      this.shown.delete(key);
    }
  }
}

/** `export  812.0 MiB of ≤ 2.0 GiB · 96.3 MiB/s · ETA 13 s`: what one line says after its bar. */
export function figures(row: ProgressRow): string {
  const parts = [row.phase.padEnd(8)];
  if (row.bytes !== undefined) parts.push(row.total !== undefined ? `${formatBytes(row.bytes)} of ≤ ${formatBytes(row.total)}` : formatBytes(row.bytes));
  if (row.rateBps !== undefined) parts.push(`${formatBytes(row.rateBps)}/s`);
  if (row.etaS !== undefined) parts.push(`ETA ${eta(row.etaS)}`);
  return parts.join(' · ').replace(' · ', '  ');
}

function eta(s: number): string {
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
}
