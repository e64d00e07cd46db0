import { appendFileSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

// Counts the runs in the file test/repeat.test.ts names.
const runs = (): number => {
  appendFileSync(process.env.REPEAT_FIXTURE_RUNS ?? '', 'x');
  return readFileSync(process.env.REPEAT_FIXTURE_RUNS ?? '', 'utf8').length;
};

describe('repeat fixture', () => {
  it('passes', () => {
    expect(1 + 1).toBe(2);
  });
  it('always fails', () => {
    expect(1 + 1).toBe(3);
  });
  it('fails on the second run', () => {
    expect(runs()).not.toBe(2);
  });
});
