import { describe, expect, it } from 'vitest';
import { pointLocation } from './restore-point.js';

describe('pointLocation: a point named by its folder or its manifest.json', () => {
  it.each([
    ['/b/web1/point_20261206-080000', { backupDir: '/b', ref: { vmFolder: 'web1', stamp: '20261206-080000' }, dir: '/b/web1/point_20261206-080000' }],
    ['/b/web1/point_20261206-080000/', { backupDir: '/b', ref: { vmFolder: 'web1', stamp: '20261206-080000' } }],
    ['/mnt/VmBackup/exports/web1/point_20261206-080000/manifest.json', { backupDir: '/mnt/VmBackup/exports', dir: '/mnt/VmBackup/exports/web1/point_20261206-080000' }],
  ])('%s', (file, expected) => {
    expect(pointLocation(file)).toMatchObject(expected);
  });

  it.each([
    ['a relative path', 'web1/point_20261206-080000'],
    ['a set file', '/b/web1/backup_20261206-080000.xva'],
    ['a set manifest', '/b/web1/backup_20261206-080000.json'],
    ['a point folder at the root', '/point_20261206-080000'],
    ['"point_" alone', '/b/web1/point_'],
    ['another file of a point', '/b/web1/point_20261206-080000/xvda.cidx'],
  ])('not a point: %s', (_what, file) => {
    expect(pointLocation(file)).toBeUndefined();
  });
});
