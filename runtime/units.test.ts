import { describe, expect, it } from 'vitest';
import { formatBytes, formatSeconds } from './units.js';

describe('formatBytes', () => {
  it.each([
    [0, '0 B'],
    [1023, '1023 B'],
    [1024, '1.0 KiB'],
    [1536, '1.5 KiB'],
    [3 * 2 ** 20, '3.0 MiB'],
    [6.44 * 2 ** 20, '6.4 MiB'],
    [2 ** 30, '1.0 GiB'],
    [5 * 2 ** 40, '5.0 TiB'],
    [2048 * 2 ** 40, '2048.0 TiB'],
  ])('%d → %s', (n, text) => {
    expect(formatBytes(n)).toBe(text);
  });

  it.each([
    [0, '0 bytes'],
    [512, '512 bytes'],
    [1024, '1.0 KiB'],
    [10 * 2 ** 20 + 4096, '10.0 MiB'],
  ])('%d with bytesUnit bytes → %s', (n, text) => {
    expect(formatBytes(n, { bytesUnit: 'bytes' })).toBe(text);
  });
});

describe('formatSeconds', () => {
  it.each([
    [0, '0.0 s'],
    [49, '0.0 s'],
    [1234, '1.2 s'],
    [61_950, '62.0 s'],
  ])('%d ms → %s', (ms, text) => {
    expect(formatSeconds(ms)).toBe(text);
  });
});
