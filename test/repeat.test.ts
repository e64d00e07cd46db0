import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tally } from './repeat.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

describe('tally', () => {
  const f = (test: string) => ({ file: 'a.test.ts', test, error: 'e' });
  it.each([
    ['no failure', [[], []], '2 runs: 2 passed, 0 failed; 0 tests failed at least once'],
    ['one run', [[]], '1 run: 1 passed, 0 failed; 0 tests failed at least once'],
    [
      'most failures first, a test counted once per run',
      [[f('y'), f('y')], [f('x'), f('y')], [f('x'), f('y')]],
      '3/3  a.test.ts > y\n2/3  a.test.ts > x\n3 runs: 0 passed, 3 failed; 2 tests failed at least once',
    ],
  ] as const)('%s', (_name, runs, text) => {
    expect(tally(runs.map((r) => [...r]))).toBe(text);
  });
});

describe('npm run test:repeat on a suite with a failing and a flaky test', () => {
  let dir: string;
  let out: { code: number; stdout: string };
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'repeat-'));
    out = await new Promise((resolve) => {
      execFile(
        'npm',
        ['run', '--silent', 'test:repeat', '--', '2', '--config', 'test/repeat-fixture/vitest.config.ts'],
        { cwd: ROOT, env: { ...process.env, REPEAT_FIXTURE_RUNS: path.join(dir, 'runs') } },
        (err, stdout) => resolve({ code: err ? Number(err.code) : 0, stdout }),
      );
    });
  }, 240_000); // two vitest runs, each starting its own workers
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('runs it N times and exits 1', () => {
    expect(out.stdout.match(/^== run \d\/2 ==$/gm)).toEqual(['== run 1/2 ==', '== run 2/2 ==']);
    expect(out.code).toBe(1);
  });

  it('prints each failure: run, file, test name and the error', () => {
    const file = 'test/repeat-fixture/sample.check.ts';
    expect(out.stdout).toContain(`FAIL run 1: ${file} > repeat fixture > always fails\n    AssertionError: expected 2 to be 3 // Object.is equality\n    at ${file}:15:19\n`);
    expect(out.stdout).toContain(`FAIL run 2: ${file} > repeat fixture > always fails\n`);
    expect(out.stdout).toContain(`FAIL run 2: ${file} > repeat fixture > fails on the second run\n    AssertionError: expected 2 not to be 2`);
    expect(out.stdout).not.toContain(`FAIL run 1: ${file} > repeat fixture > fails on the second run`);
  });

  it('ends with the tally', () => {
    expect(out.stdout.split('== tally ==\n')[1]).toBe(
      [
        '2/2  test/repeat-fixture/sample.check.ts > repeat fixture > always fails',
        '1/2  test/repeat-fixture/sample.check.ts > repeat fixture > fails on the second run',
        '2 runs: 0 passed, 2 failed; 2 tests failed at least once',
        '',
      ].join('\n'),
    );
  });
});
