import { describe, expect, it } from 'vitest';
import { CBT_BLOCK_SIZE, decodeChangedBlocks } from './cbt.js';

const K = CBT_BLOCK_SIZE;

describe('decodeChangedBlocks', () => {
  it.each([
    ['nothing changed', Buffer.from([0, 0]), 16 * K, { blocks: 0, bytes: 0, ranges: [] }],
    ['block 0 is the most significant bit', Buffer.from([0x80]), 8 * K, { blocks: 1, bytes: K, ranges: [{ offset: 0, length: K }] }],
    ['adjacent blocks merge, across bytes', Buffer.from([0x01, 0x80, 0x20]), 24 * K, { blocks: 3, bytes: 3 * K, ranges: [{ offset: 7 * K, length: 2 * K }, { offset: 18 * K, length: K }] }],
    ['the last block is clipped to the disk, padding bits are ignored', Buffer.from([0xff]), 2 * K + 100, { blocks: 3, bytes: 2 * K + 100, ranges: [{ offset: 0, length: 2 * K + 100 }] }],
  ])('%s', (_name, bitmap, size, expected) => {
    expect(decodeChangedBlocks(bitmap.toString('base64'), size)).toEqual(expected);
  });
});
