/**
 * How every `npm run bench` line is printed and measured, so they all read alike:
 *
 *   export_vs_curl_fsync_ratio=0.93 min=0.88 max=0.97 rounds=3 | vmbackup (fsynced) 0.41 GiB/s / curl -o + fsync 0.44 GiB/s
 *
 * `name=<median over the rounds>` first (the headline figure, what a script reads), then the
 * minimum, the maximum and the number of rounds, then what was measured and the baseline it
 * is compared with, both measured in the same run (their medians).
 */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

export interface LineDetail {
  /** What was measured, with its median (e.g. `vmbackup (fsynced) 0.41 GiB/s`). */
  figure: string;
  /** The baseline of the same run, with its median (e.g. `curl -o + fsync 0.44 GiB/s`). */
  baseline: string;
  /** Decimals of the value (default 2). */
  digits?: number;
}

/** Prints one bench line: the value of each round, summarised; see the header. */
export function benchLine(name: string, values: readonly number[], detail: LineDetail): void {
  const d = detail.digits ?? 2;
  console.log(`${name}=${median(values).toFixed(d)} min=${Math.min(...values).toFixed(d)} max=${Math.max(...values).toFixed(d)} rounds=${values.length} | ${detail.figure} / ${detail.baseline}`);
}

/** GiB/s, for people: `rate(bytes, ms)`. */
export function rate(bytes: number, ms: number): string {
  return `${((bytes / ms) * 1e3 / (1 << 30)).toFixed(2)} GiB/s`;
}

/**
 * Runs `a` and `b` one after the other, `a` first in even rounds and `b` first in odd ones:
 * on a shared machine neither side is always the one that inherits the other's leftovers
 * (dirty pages, garbage, a warm cache).
 */
export async function alternate<A, B>(round: number, a: () => Promise<A>, b: () => Promise<B>): Promise<[A, B]> {
  if (round % 2 === 0) {
    const ra = await a();
    return [ra, await b()];
  }
  const rb = await b();
  return [await a(), rb];
}
