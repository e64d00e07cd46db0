import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, rotateLog } from './log.js';

describe('the log file', () => {
  it('is rotated at start-up once past its size: .1 … .keep, the oldest dropped', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-log-'));
    const file = path.join(dir, 'vmbackup.log');
    const opts = { maxBytes: 10, keep: 2 };
    writeFileSync(file, 'run 1 .......\n');
    rotateLog(file, opts);
    expect(readFileSync(`${file}.1`, 'utf8')).toBe('run 1 .......\n');
    expect(existsSync(file)).toBe(false);
    writeFileSync(file, 'small\n');
    rotateLog(file, opts); // not past maxBytes: left alone
    expect(readFileSync(file, 'utf8')).toBe('small\n');
    writeFileSync(file, 'run 2 .......\n');
    rotateLog(file, opts);
    writeFileSync(file, 'run 3 .......\n');
    rotateLog(file, opts);
    expect(readFileSync(`${file}.1`, 'utf8')).toBe('run 3 .......\n');
    expect(readFileSync(`${file}.2`, 'utf8')).toBe('run 2 .......\n');
    expect(existsSync(`${file}.3`)).toBe(false); // run 1 dropped
  });

  it('a logger opening a large log starts a new one', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-log-'));
    const file = path.join(dir, 'vmbackup.log');
    writeFileSync(file, 'x'.repeat(100));
    const log = createLogger({ consoleLevel: 'error', dir, console: new PassThrough(), consoleErrors: new PassThrough(), rotate: { maxBytes: 50, keep: 5 } });
    log.info('fresh');
    log.flush();
    expect(readFileSync(`${file}.1`, 'utf8')).toBe('x'.repeat(100));
    expect(readFileSync(file, 'utf8')).toMatch(/^\{.*"msg":"fresh"\}\n$/);
  });
});
