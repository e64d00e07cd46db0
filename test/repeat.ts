import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { z } from 'zod';
import { ProvisionError, provision } from './provision.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The part of vitest's JSON report (`--reporter=json`) a repeat run reads. */
export const VitestReport = z.object({
  testResults: z.array(
    z.object({
      name: z.string(),
      status: z.string(),
      message: z.string().optional(),
      assertionResults: z.array(
        z.object({ ancestorTitles: z.array(z.string()), title: z.string(), status: z.string(), failureMessages: z.array(z.string()).nullish() }),
      ),
    }),
  ),
});
export type VitestReport = z.infer<typeof VitestReport>;

/** One failed test (or a file that failed outside any test, e.g. in beforeAll). */
export interface Failure {
  /** The file, relative to the repository. */
  file: string;
  /** The test's name under its describe blocks (`a > b > test`), or `(file)` for a failure outside a test. */
  test: string;
  /** The error's first lines. */
  error: string;
}

/** The failures of one run, in report order; `lines` is how many lines of each error's message to keep. */
export function failuresOf(report: VitestReport, root: string = ROOT, lines = 4): Failure[] {
  const out: Failure[] = [];
  for (const file of report.testResults) {
    const rel = path.relative(root, file.name);
    const failed = file.assertionResults.filter((t) => t.status === 'failed');
    for (const t of failed) out.push({ file: rel, test: [...t.ancestorTitles, t.title].join(' > '), error: firstLines(t.failureMessages?.join('\n') ?? '', lines, root) });
    if (failed.length === 0 && file.status === 'failed') out.push({ file: rel, test: '(file)', error: firstLines(file.message ?? '', lines, root) });
  }
  return out;
}

/**
 * The tally of a repeated run: one line per test that failed at least once, most failures
 * first, then the totals.
 *
 * @example
 *   tally([[], [{ file: 'a.test.ts', test: 'x', error: '…' }]])
 *   // 1/2  a.test.ts > x
 *   // 2 runs: 1 passed, 1 failed; 1 test failed at least once
 */
export function tally(runs: readonly Failure[][]): string {
  const counts = new Map<string, number>();
  for (const run of runs) {
    for (const key of new Set(run.map((f) => `${f.file} > ${f.test}`))) counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  const rows = [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map(([key, n]) => `${n}/${runs.length}  ${key}`);
  const failedRuns = runs.filter((r) => r.length > 0).length;
  const total = `${runs.length} run${runs.length === 1 ? '' : 's'}: ${runs.length - failedRuns} passed, ${failedRuns} failed; ${counts.size} test${counts.size === 1 ? '' : 's'} failed at least once`;
  return [...rows, total].join('\n');
}

/** The message's first `n` lines and the first stack line in the project's own code. */
function firstLines(text: string, n: number, root: string): string {
  const all = text.split('\n').filter((l) => l.trim() !== '');
  const isStack = (l: string) => /^\s+at /.test(l);
  const ours = all.find((l) => isStack(l) && l.includes(root) && !l.includes('node_modules'));
  return [...all.filter((l) => !isStack(l)).slice(0, n), ...(ours ? [ours.trim().replace(`${root}/`, '')] : [])].join('\n');
}

/** `npm run test:repeat -- [N] [vitest args…]`: the suite (or the files named) N times (default 5). */
function main(argv: string[]): number {
  const n = argv[0] !== undefined && /^\d+$/.test(argv[0]) ? Number(argv.shift()) : 5;
  if (n < 1) {
    process.stderr.write('test:repeat: N must be at least 1\n');
    return 2;
  }
  try {
    provision();
  } catch (e) {
    if (!(e instanceof ProvisionError)) throw e;
    process.stderr.write(`${e.message}\n`);
    return 1;
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vmbackup-repeat-'));
  const runs: Failure[][] = [];
  try {
    for (let i = 1; i <= n; i++) {
      const json = path.join(dir, `run-${i}.json`);
      process.stdout.write(`\n== run ${i}/${n} ==\n`);
      const r = spawnSync(process.execPath, [path.join(ROOT, 'node_modules/vitest/vitest.mjs'), 'run', '--reporter=dot', '--reporter=json', `--outputFile.json=${json}`, ...argv], {
        cwd: ROOT,
        stdio: 'inherit',
      });
      let failures: Failure[];
      try {
        failures = failuresOf(VitestReport.parse(JSON.parse(readFileSync(json, 'utf8'))));
      } catch (e) {
        failures = [{ file: '(vitest)', test: '(run)', error: `no report: vitest exited ${r.status ?? r.signal} (${(e as Error).message})` }];
      }
      if (failures.length === 0 && r.status !== 0) failures = [{ file: '(vitest)', test: '(run)', error: `vitest exited ${r.status ?? r.signal} with no failed test in its report` }];
      runs.push(failures);
      for (const f of failures) process.stdout.write(`FAIL run ${i}: ${f.file} > ${f.test}\n${f.error.replace(/^/gm, '    ')}\n`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  process.stdout.write(`\n== tally ==\n${tally(runs)}\n`);
  return runs.some((r) => r.length > 0) ? 1 : 0;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) process.exitCode = main(process.argv.slice(2));
