import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../runtime/errors.js';
import { compilePythonMatch, duplicateNames, isSimpleName, literalNameEntry, parseEntry, selectVms, type PoolVm, type SelectOptions, type SelectionSources } from './select.js';

// A pool holding a name for every README example, and the near misses that tell them apart.
const NAMES = [
  'DEV-phishing-test', 'DEV-phishing-test2', 'PRD-PRINTER1', 'PRD-PRINTER10', 'PRD-PRINT', 'PRD-PRINT-old',
  'PRD-a', 'PRD-aa', 'PRD-abc', 'PRD-', 'PRD-Test', 'PRD-123', 'PRD-b', 'xPRD-a',
  'DEV-VTEMP', 'DEV-V1-TEMP', 'DEV-V1-TEMP-old', 'DEV-XTEMP',
  'DEV-web3', 'DEV-web30', 'DEV-web3-old',
  'DEV-myTEST1', 'DEV-mytest', 'DEV-myTest', 'DEV-TEST', 'DEV-test',
  'DEV-EUWWW01', 'DEV-EUWWW012',
  'BACKUP-SAVE', 'SAVE', 'SAVE-not', 'X-SAVE-2',
  'PRD-xprint4', 'PRD-print5', 'PRD-print45', 'PRD-print6', 'PRD-print8', 'PRD-print9', 'PRD-print{', 'PRD-print,',
  'DEV-USWWW05', 'DEV-USWWW050',
  'DEV-MYSQL', 'DEV MYSQL', 'DEV-MYSQL2',
];
const POOL: PoolVm[] = NAMES.map((name, i) => ({ uuid: `${String(i).padStart(8, '0')}-0000-4000-8000-000000000000`, name }));

function select(opts: Partial<SelectOptions>, pool: readonly PoolVm[] = POOL) {
  return selectVms(pool, { excludes: [], vdiExports: [], vmExports: [], maxBackups: 4, ...opts });
}
const names = (vms: { name: string }[]) => vms.map((v) => v.name);
const vdi = (r: ReturnType<typeof select>) => r.vdiExports.map((s) => `${s.vm.name}:${s.maxBackups}:${s.disks.join(';')}`);
const vm = (r: ReturnType<typeof select>) => r.vmExports.map((s) => `${s.vm.name}:${s.maxBackups}`);

describe('parseEntry', () => {
  it.each([
    ['DEV-web3', { name: 'DEV-web3', kind: 'name', maxBackups: null, disks: null }],
    ['DEV-web3:7', { name: 'DEV-web3', kind: 'name', maxBackups: 7, disks: null }],
    ['DEV-web3:-1', { name: 'DEV-web3', kind: 'name', maxBackups: null, disks: null }],
    ['DEV-web3:-1:xvda;xvdb', { name: 'DEV-web3', kind: 'name', maxBackups: null, disks: ['xvda', 'xvdb'] }],
    ['DEV-MYSQL:7:xvda;xvdb', { name: 'DEV-MYSQL', kind: 'name', maxBackups: 7, disks: ['xvda', 'xvdb'] }],
    ['DEV MYSQL', { name: 'DEV MYSQL', kind: 'name', maxBackups: null, disks: null }],
    ['  DEV-web3 : 7 : xvda ; xvdb ', { name: 'DEV-web3', kind: 'name', maxBackups: 7, disks: ['xvda', 'xvdb'] }],
    ['.*SAVE$:5', { name: '.*SAVE$', kind: 'regex', maxBackups: 5, disks: null }],
    ['PRD-.*print[\\d{1,}]$:8', { name: 'PRD-.*print[\\d{1,}]$', kind: 'regex', maxBackups: 8, disks: null }],
    ['(?:a|b).*:3', { name: '(?:a|b).*', kind: 'regex', maxBackups: 3, disks: null }],
    ['(?:a|b).*', { name: '(?:a|b).*', kind: 'regex', maxBackups: null, disks: null }],
    ['(?:a|b)[:]x\\:y:-1:xvdc', { name: '(?:a|b)[:]x\\:y', kind: 'regex', maxBackups: null, disks: ['xvdc'] }],
    ['(?#a:b)web:2', { name: '(?#a:b)web', kind: 'regex', maxBackups: 2, disks: null }],
    ['[]:]x:2', { name: '[]:]x', kind: 'regex', maxBackups: 2, disks: null }],
    ['Café-01:007', { name: 'Café-01', kind: 'name', maxBackups: 7, disks: null }],
  ])('%s', (entry, expected) => {
    expect(parseEntry(entry)).toMatchObject(expected);
  });

  it.each([
    ['', /empty entry/],
    ['   ', /empty entry/],
    ['NAME:0', /invalid entry "NAME:0": max_backups must be -1 or a positive integer, got "0"/],
    ['NAME:-2', /max_backups must be -1 or a positive integer/],
    ['NAME:1.5', /"1.5" is not a number/],
    ['NAME:abc:xvdb', /invalid entry "NAME:abc:xvdb": max_backups "abc" is not a number/],
    ['NAME:xvdb', /MAX "xvdb" is not a number; to choose disks, put a MAX before them: NAME:-1:xvdb/],
    ['NAME:xvda;xvdb', /MAX "xvda;xvdb" is not a number; to choose disks, put a MAX before them: NAME:-1:xvda;xvdb/],
    ['NAME:', /max_backups "" is not a number/],
    ['NAME:-1:', /empty disk name/],
    ['NAME:-1:xvda;', /empty disk name/],
    ['NAME:-1:xv/da', /invalid disk name "xv\/da"/],
    ['NAME:-1:xvda;xvda', /disk "xvda" is listed twice/],
    ['a:b:3:4', /too many ":"-separated fields/],
    [':3', /NAME is empty/],
    ['PRD-(:3', /invalid regex "PRD-\(": .*/],
    ['[a-', /invalid regex/],
    ['a{2}{3}', /invalid regex/],
    ['(?i:a)', /scoped inline flags/],
  ])('refuses %j', (entry, message) => {
    expect(() => parseEntry(entry)).toThrow(ConfigError);
    expect(() => parseEntry(entry)).toThrow(message);
  });

  it('tells invalid regexes from invalid entries', () => {
    const reason = (e: string) => {
      try {
        parseEntry(e);
      } catch (error) {
        return (error as ConfigError).data.reason;
      }
      return 'ok';
    };
    expect(reason('NAME:0')).toBe('invalid-entry');
    expect(reason('PRD-(')).toBe('invalid-regex');
  });
});

describe('isSimpleName', () => {
  it.each([
    ['DEV-web3', true], ['DEV MYSQL', true], ['a_b', true], ['Café', true], ['数据库', true],
    ['DEV-web3.', false], ['a*', false], ['a:b', false], ['a\tb', false], ['', false],
  ])('%j → %s', (name, simple) => {
    expect(isSimpleName(name)).toBe(simple);
  });
});

describe('compilePythonMatch: Python re.match semantics', () => {
  it.each([
    // anchored at the start only
    ['DEV', 'DEV-web3', true],
    ['DEV', 'xDEV', false],
    ['^DEV', 'DEV-web3', true],
    ['web3', 'DEV-web3', false],
    ['.*web3', 'DEV-web3', true],
    ['a|b', 'bx', true], // the anchor covers every alternative
    // $ matches at the end or before a final newline; \Z only at the end
    ['PRD-PRINT$', 'PRD-PRINT', true],
    ['PRD-PRINT$', 'PRD-PRINT\n', true],
    ['PRD-PRINT$', 'PRD-PRINTER1', false],
    ['PRD-PRINT\\Z', 'PRD-PRINT\n', false],
    ['PRD-PRINT\\Z', 'PRD-PRINT', true],
    ['\\APRD', 'PRD', true],
    // named groups and back references
    ['(?P<x>ab)-(?P=x)$', 'ab-ab', true],
    ['(?P<x>ab)-(?P=x)$', 'ab-ac', false],
    ['(a)\\1', 'aa', true],
    // literal braces where Python has no quantifier, {,n}
    ['a{', 'a{', true],
    ['a{x}', 'a{x}', true],
    ['a}', 'a}', true],
    ['x{}', 'x{}', true],
    ['a{,2}$', 'aa', true],
    ['a{,2}$', 'aaa', false],
    ['a{2,}$', 'aaa', true],
    // classes: ] first is literal, escapes, \d ASCII
    ['[]a]+$', ']a]', true],
    ['[^]a]$', 'b', true],
    ['[\\d{1,}]$', '{', true],
    ['[\\d{1,}]$', '7', true],
    // \\w \\d \\s \\b are Unicode as in Python 3; (?a) makes them ASCII
    ['\\d$', '٣', true],
    ['(?a)\\d$', '٣', false],
    ['\\w+$', 'Café_1', true],
    ['(?a)\\w+$', 'Café_1', false],
    ['Caf\\b', 'Café', false],
    ['(?a)Caf\\b', 'Café', true],
    ['\\B', '', false], // Python's \\B never matches an empty string
    ['\\b+', 'a', 'error'], // nothing to repeat
    ['a\\s', 'a\x1c', true],
    ['a\\s', 'a\ufeff', false],
    ['[\\Wa]+$', 'a-a', true],
    ['[^\\Wa]+$', 'bé', true],
    ['[^\\Wa]+$', 'ba', false],
    ['[a-\\w]', 'a', 'error'], // bad character range
    ['[a-]$', '-', true],
    ['a]', 'a]', true], // a lone ] is literal
    ['(a)(?P=x)', 'aa', 'error'],
    ['(a\\1)', 'aa', 'error'], // cannot refer to an open group
    ['(?P<x>a)(?P<x>b)', 'ab', 'error'],
    ['(a', 'a', 'error'],
    ['a)', 'a', 'error'],
    ['[\\:]$', ':', true],
    ['\\:\\-\\#\\ \\~$', ':-# ~', true],
    ['[\\b]', '\b', true],
    // escapes
    ['\\x41\\u0042\\U00000043$', 'ABC', true],
    ['\\101$', 'A', true], // octal
    ['\\0$', '\0', true],
    ['\\a', '\x07', true],
    ['\\N', 'x', 'error'],
    // . excludes only \n; (?s) includes it
    ['a.b', 'a\rb', true],
    ['a.b', 'a\nb', false],
    ['(?s)a.b', 'a\nb', true],
    // flags at the start
    ['(?i)dev-WEB3$', 'DEV-web3', true],
    ['(?m)x$', 'x\ny', true],
    ['(?m)^y', 'x\ny', false], // re.match still starts at 0: ^ is only tried there
    ['(?a)\\w+$', 'abc', true],
    ['(?ai)a', 'A', 'error'], // ASCII-only case folding: not in JavaScript
    ['(?x)a b', 'ab', 'error'],
    ['a(?i)b', 'ab', 'error'],
    ['(?#comment)DEV', 'DEV-web3', true],
    // unicode
    ['Caf.$', 'Café', true],
    ['.$', '😀', true],
    ['😀+$', '😀😀', true],
    // what JavaScript lacks, or Python refuses
    ['(?>a)', 'a', 'error'],
    ['(?(1)a|b)', 'a', 'error'],
    ['a*+', 'a', 'error'],
    ['(?<n>a)', 'a', 'error'],
    ['\\q', 'q', 'error'],
    ['\\p{L}', 'a', 'error'],
    ['(?P<1x>a)', 'a', 'error'],
    ['(?P=x)', 'a', 'error'],
    ['a\\', 'a', 'error'],
    ['[a', 'a', 'error'],
  ])('%j on %j → %s', (pattern, name, expected) => {
    if (expected === 'error') {
      expect(() => compilePythonMatch(pattern)).toThrow(SyntaxError);
    } else {
      expect(compilePythonMatch(pattern).test(name)).toBe(expected);
    }
  });
});

describe('selectVms: the README examples', () => {
  it('excludes simple names: DEV-phishing-test,PRD-PRINTER1', () => {
    const r = select({ excludes: ['DEV-phishing-test', 'PRD-PRINTER1'], vmExports: ['.*'] });
    expect(names(r.excludes)).toEqual(['DEV-phishing-test', 'PRD-PRINTER1']);
    expect(vm(r)).toContain('DEV-phishing-test2:4');
    expect(vm(r)).toContain('PRD-PRINTER10:4');
    expect(r.vmExports).toHaveLength(POOL.length - 2);
    expect(r.warnings).toEqual([]);
  });

  it('excludes PRD-PRINT$ (end of string)', () => {
    expect(names(select({ excludes: ['PRD-PRINT$'] }).excludes)).toEqual(['PRD-PRINT']);
  });

  it('excludes PRD-a.* (PRD-a followed by anything)', () => {
    expect(names(select({ excludes: ['PRD-a.*'] }).excludes)).toEqual(['PRD-a', 'PRD-aa', 'PRD-abc']);
  });

  it('the PRD-a* pitfall: zero "a" also matches, so every PRD- VM goes', () => {
    const ex = names(select({ excludes: ['PRD-a*'] }).excludes);
    expect(ex).toEqual(NAMES.filter((n) => n.startsWith('PRD-')));
    expect(ex).toContain('PRD-Test');
    expect(ex).toContain('PRD-123');
    expect(ex).toContain('PRD-');
    expect(ex).not.toContain('xPRD-a');
  });

  it('excludes DEV-V.*TEMP$', () => {
    expect(names(select({ excludes: ['DEV-V.*TEMP$'] }).excludes)).toEqual(['DEV-VTEMP', 'DEV-V1-TEMP']);
  });

  it('vdi_exports DEV-web3: the root disk, global max', () => {
    expect(vdi(select({ vdiExports: ['DEV-web3'] }))).toEqual(['DEV-web3:4:xvda']);
  });

  it('vdi_exports DEV-web3:7', () => {
    expect(vdi(select({ vdiExports: ['DEV-web3:7'] }))).toEqual(['DEV-web3:7:xvda']);
  });

  it('vdi_exports DEV-web3:-1:xvda;xvdb', () => {
    expect(vdi(select({ vdiExports: ['DEV-web3:-1:xvda;xvdb'], maxBackups: 6 }))).toEqual(['DEV-web3:6:xvda;xvdb']);
  });

  it('vdi_exports DEV-.*(TEST|test).*,DEV-EUWWW01', () => {
    const r = select({ vdiExports: ['DEV-.*(TEST|test).*', 'DEV-EUWWW01'] });
    expect(names(r.vdiExports.map((s) => s.vm))).toEqual(['DEV-phishing-test', 'DEV-phishing-test2', 'DEV-myTEST1', 'DEV-mytest', 'DEV-TEST', 'DEV-test', 'DEV-EUWWW01']);
    expect(r.vdiExports.every((s) => s.disks.join() === 'xvda')).toBe(true);
  });

  it('vdi_exports DEV-.*[Tt]est.*', () => {
    const r = select({ vdiExports: ['DEV-.*[Tt]est.*'] });
    expect(names(r.vdiExports.map((s) => s.vm))).toEqual(['DEV-phishing-test', 'DEV-phishing-test2', 'DEV-mytest', 'DEV-myTest', 'DEV-test']);
  });

  it('vm_exports .*SAVE$:5', () => {
    expect(vm(select({ vmExports: ['.*SAVE$:5'] }))).toEqual(['BACKUP-SAVE:5', 'SAVE:5']);
  });

  it('vm_exports PRD-.*print[4-5]$:5,DEV-USWWW05:2', () => {
    expect(vm(select({ vmExports: ['PRD-.*print[4-5]$:5', 'DEV-USWWW05:2'] }))).toEqual(['PRD-xprint4:5', 'PRD-print5:5', 'DEV-USWWW05:2']);
  });

  it('vm_exports PRD-.*print[6-8]$:10', () => {
    expect(vm(select({ vmExports: ['PRD-.*print[6-8]$:10'] }))).toEqual(['PRD-print6:10', 'PRD-print8:10']);
  });

  it('vm_exports PRD-.*print[\\d{1,}]$:8 is ONE character of [0-9{1,}], as Python reads it', () => {
    // The README hopes for "print followed by any number(s)"; Python (and we) disagree.
    expect(vm(select({ vmExports: ['PRD-.*print[\\d{1,}]$:8'] }))).toEqual([
      'PRD-xprint4:8', 'PRD-print5:8', 'PRD-print6:8', 'PRD-print8:8', 'PRD-print9:8', 'PRD-print{:8', 'PRD-print,:8',
    ]);
  });

  it('command-line examples: DEV-MYSQL, "DEV MYSQL", DEV-MY.*, DEV-MYSQL:2', () => {
    expect(vm(select({ vmExports: ['DEV-MYSQL'] }))).toEqual(['DEV-MYSQL:4']);
    expect(vm(select({ vmExports: ['DEV MYSQL'] }))).toEqual(['DEV MYSQL:4']);
    expect(vm(select({ vmExports: ['DEV-MY.*'] }))).toEqual(['DEV-MYSQL:4', 'DEV-MYSQL2:4']);
    expect(vm(select({ vmExports: ['DEV-MYSQL:2'] }))).toEqual(['DEV-MYSQL:2']);
    expect(vdi(select({ vdiExports: ['DEV-MYSQL'] }))).toEqual(['DEV-MYSQL:4:xvda']);
    expect(vdi(select({ vdiExports: ['DEV-MYSQL:-1:xvdb'] }))).toEqual(['DEV-MYSQL:4:xvdb']);
    expect(vdi(select({ vdiExports: ['DEV-MYSQL:7:xvda;xvdb'] }))).toEqual(['DEV-MYSQL:7:xvda;xvdb']);
  });

  it('cron example -x ".*" with the default vm_exports .*: nothing selected, no warning', () => {
    const r = select({ excludes: ['.*'], vmExports: ['.*'] });
    expect(r.excludes).toHaveLength(POOL.length);
    expect(r.vdiExports).toEqual([]);
    expect(r.vmExports).toEqual([]);
    expect(r.warnings).toEqual([]);
  });
});

describe('selectVms: precedence', () => {
  it('excludes win over vdi_exports and vm_exports', () => {
    const r = select({ excludes: ['DEV-web3'], vdiExports: ['DEV-web3:7'], vmExports: ['DEV-web3:2'] });
    expect(names(r.excludes)).toEqual(['DEV-web3']);
    expect(r.vdiExports).toEqual([]);
    expect(r.vmExports).toEqual([]);
    expect(r.warnings).toEqual([]); // taken by an earlier list: the documented precedence, not a warning
  });

  it('a VM is backed up one way only, with or without :MAX (VmBackup defect 6)', () => {
    const r = select({ vdiExports: ['DEV-web3:7', 'DEV-MYSQL'], vmExports: ['DEV-.*:2'] });
    expect(vdi(r)).toEqual(['DEV-web3:7:xvda', 'DEV-MYSQL:4:xvda']);
    const vmNames = names(r.vmExports.map((s) => s.vm));
    expect(vmNames).not.toContain('DEV-web3');
    expect(vmNames).not.toContain('DEV-MYSQL');
    expect(vmNames).toContain('DEV-web30');
  });

  it('within a list, the first matching entry wins', () => {
    const r = select({ vmExports: ['DEV-web3.*:2', 'DEV-web3:9', '.*:3'] });
    expect(r.vmExports.find((s) => s.vm.name === 'DEV-web3')).toMatchObject({ maxBackups: 2, entry: 'DEV-web3.*:2' });
    expect(r.vmExports.find((s) => s.vm.name === 'SAVE')).toMatchObject({ maxBackups: 3, entry: '.*:3' });
    expect(r.vmExports).toHaveLength(POOL.length);
    expect(r.warnings).toEqual([]);
    const v = select({ vdiExports: ['DEV-web3:-1:xvdb', 'DEV-web.*:5:xvda;xvdc'] });
    expect(vdi(v)).toEqual(['DEV-web3:4:xvdb', 'DEV-web30:5:xvda;xvdc', 'DEV-web3-old:5:xvda;xvdc']);
  });

  it('NAME:-1 means the global max for vm-exports too (VmBackup defect 5 kept one)', () => {
    expect(vm(select({ vmExports: ['DEV-web3:-1'], maxBackups: 5 }))).toEqual(['DEV-web3:5']);
  });

  it('results follow the pool order, not the entry order', () => {
    expect(vm(select({ vmExports: ['SAVE', 'DEV-web3', 'PRD-a'] }))).toEqual(['PRD-a:4', 'DEV-web3:4', 'SAVE:4']);
  });

  it('keeps the callers VM objects', () => {
    const pool = [{ uuid: 'u1', name: 'a', powerState: 'Running' }];
    expect(selectVms(pool, { excludes: [], vdiExports: [], vmExports: ['a'], maxBackups: 1 }).vmExports[0]!.vm).toBe(pool[0]);
  });

  it('an empty entry excludes nothing (VmBackup defect 7 excluded every VM)', () => {
    const r = select({ excludes: [''], vmExports: ['.*'] });
    expect(r.excludes).toEqual([]);
    expect(r.vmExports).toHaveLength(POOL.length);
    expect(r.errors).toMatchObject([{ entry: '', list: 'excludes', code: 'invalid-entry' }]);
  });

  it('spaces around entries are ignored', () => {
    expect(vm(select({ vmExports: [' DEV-web3', 'SAVE :2 '] }))).toEqual(['DEV-web3:4', 'SAVE:2']);
  });

  it('refuses a global max_backups < 1', () => {
    expect(() => select({ maxBackups: 0 })).toThrow(/max_backups must be an integer >= 1, got 0/);
    expect(() => select({ maxBackups: 2.5 })).toThrow(ConfigError);
  });
});

describe('selectVms: warnings', () => {
  it('entries matching nothing, in every list', () => {
    const r = select({ excludes: ['NOPE'], vdiExports: ['nope.*:3'], vmExports: ['DEV-web3', 'Nothing:2'] });
    expect(r.warnings).toEqual([
      { entry: 'NOPE', list: 'excludes', code: 'no-match', message: 'entry "NOPE" matches no VM of the pool' },
      { entry: 'nope.*:3', list: 'vdi_exports', code: 'no-match', message: 'entry "nope.*:3" matches no VM of the pool' },
      { entry: 'Nothing:2', list: 'vm_exports', code: 'no-match', message: 'entry "Nothing:2" matches no VM of the pool' },
    ]);
  });

  it('invalid regexes and entries are errors (the run must not start), naming the entry, in every list', () => {
    const r = select({ excludes: ['PRD-(', 'DEV-web3:0'], vmExports: ['DEV-web3', 'SAVE:abc:xvdb'] });
    expect(r.excludes).toEqual([]);
    expect(vm(r)).toEqual(['DEV-web3:4']);
    expect(r.warnings).toEqual([]);
    expect(r.errors.map((w) => [w.entry, w.list, w.code])).toEqual([
      ['PRD-(', 'excludes', 'invalid-regex'],
      ['DEV-web3:0', 'excludes', 'invalid-entry'],
      ['SAVE:abc:xvdb', 'vm_exports', 'invalid-entry'],
    ]);
    expect(r.errors[0]!.message).toMatch(/^invalid entry "PRD-\(": invalid regex: /);
  });

  it('disks on a vm_exports entry are ignored, the entry is used', () => {
    const r = select({ vmExports: ['DEV-web3:3:xvdb'] });
    expect(vm(r)).toEqual(['DEV-web3:3']);
    expect(r.warnings).toMatchObject([{ entry: 'DEV-web3:3:xvdb', list: 'vm_exports', code: 'disks-ignored' }]);
  });

  it('MAX on an excludes entry is ignored, the entry is used', () => {
    const r = select({ excludes: ['DEV-web3:3'] });
    expect(names(r.excludes)).toEqual(['DEV-web3']);
    expect(r.warnings).toMatchObject([{ entry: 'DEV-web3:3', list: 'excludes', code: 'fields-ignored' }]);
  });

  it('several VMs with one name: all backed up, one warning per name (VmBackup skipped them)', () => {
    const pool: PoolVm[] = [
      { uuid: 'aaaaaaaa-1', name: 'web' },
      { uuid: 'bbbbbbbb-2', name: 'db' },
      { uuid: 'cccccccc-3', name: 'web' },
      { uuid: 'dddddddd-4', name: 'web' },
      { uuid: 'eeeeeeee-5', name: 'db' },
      { uuid: 'ffffffff-6', name: 'solo' },
    ];
    const r = select({ vdiExports: ['db'], vmExports: ['.*'] }, pool);
    expect(r.vmExports.map((s) => s.vm.uuid)).toEqual(['aaaaaaaa-1', 'cccccccc-3', 'dddddddd-4', 'ffffffff-6']);
    expect(r.vdiExports.map((s) => s.vm.uuid)).toEqual(['bbbbbbbb-2', 'eeeeeeee-5']);
    expect(r.warnings.map((w) => [w.entry, w.list, w.code])).toEqual([
      ['.*', 'vm_exports', 'duplicate-name'],
      ['db', 'vdi_exports', 'duplicate-name'],
    ]);
    expect(r.warnings[0]!.message).toBe('3 VMs are named "web" (aaaaaaaa-1, cccccccc-3, dddddddd-4): each selected one is backed up into its own folder');
    expect(duplicateNames(pool)).toEqual(new Set(['web', 'db']));
    // excluded duplicates are not worth a warning
    expect(select({ excludes: ['web'], vmExports: ['solo'] }, pool).warnings).toEqual([]);
  });
});

describe('selectVms: where a VM\'s MAX comes from (never looser than the config)', () => {
  const CFG = '/etc/vmbackup.cfg';
  const sources = (requested: SelectionSources['requested'], config: SelectionSources['config']): SelectionSources => ({
    requested,
    config,
    maxBackups: `${CFG} line 2`,
  });
  const max = (r: ReturnType<typeof select>) => [...r.vdiExports, ...r.vmExports].map((s) => [s.vm.name, s.maxBackups, s.maxFrom]);

  it.each([
    // [what, request entries, config vm_exports, config vdi_exports, expected MAX, expected source]
    ['the request\'s own MAX wins', ['SAVE:3'], ['SAVE:7'], [], 3, { from: 'request', entry: 'SAVE:3', where: 'command line (-e)' }],
    ['else the config\'s entry for that VM', ['SAVE'], ['SAVE:7'], [], 7, { from: 'config', entry: 'SAVE:7', where: `${CFG} line 3` }],
    ['a config regex selecting the VM counts', ['SAVE'], ['DEV-.*', '.*SAVE$:6'], [], 6, { from: 'config', entry: '.*SAVE$:6', where: `${CFG} line 3` }],
    ['the config\'s vdi_exports too (tried first, as the config\'s own run does)', ['SAVE'], ['SAVE:7'], ['SAVE:5:xvdb'], 5, { from: 'config', entry: 'SAVE:5:xvdb', where: `${CFG} line 4` }],
    ['the config entry that selects the VM decides, also without MAX', ['SAVE'], ['.*', 'SAVE:7'], [], 1, { from: 'max_backups', where: `${CFG} line 2` }],
    ['`:-1` in the request falls back like no MAX', ['SAVE:-1'], ['SAVE:7'], [], 7, { from: 'config', entry: 'SAVE:7', where: `${CFG} line 3` }],
    ['no config entry: max_backups', ['SAVE'], ['DEV-.*:9'], [], 1, { from: 'max_backups', where: `${CFG} line 2` }],
  ] as const)('%s', (_what, request, configVm, configVdi, expected, from) => {
    const r = select({
      vmExports: [...request],
      maxBackups: 1,
      sources: sources(
        [{ list: 'vm_exports', where: 'command line (-e)' }],
        [
          { list: 'vm_exports', entries: [...configVm], where: `${CFG} line 3` },
          ...(configVdi.length > 0 ? [{ list: 'vdi_exports' as const, entries: [...configVdi], where: `${CFG} line 4` }] : []),
        ],
      ),
    });
    expect(r.errors).toEqual([]);
    expect(max(r)).toEqual([['SAVE', expected, from]]);
  });

  it('a list of the config keeps its entries\' MAX, with the file and line', () => {
    const r = select({ vmExports: ['SAVE:7', 'DEV-web3'], maxBackups: 1, sources: sources([], [{ list: 'vm_exports', entries: ['SAVE:7', 'DEV-web3'], where: `${CFG} line 3` }]) });
    expect(max(r)).toEqual([
      ['DEV-web3', 1, { from: 'max_backups', where: `${CFG} line 2` }],
      ['SAVE', 7, { from: 'config', entry: 'SAVE:7', where: `${CFG} line 3` }],
    ]);
  });

  it('without sources (a plan message of an older client): the entry\'s MAX, else max_backups', () => {
    const r = select({ vmExports: ['SAVE:7', 'DEV-web3'], maxBackups: 2 });
    expect(max(r)).toEqual([
      ['DEV-web3', 2, { from: 'max_backups' }],
      ['SAVE', 7, { from: 'config', entry: 'SAVE:7' }],
    ]);
  });
});

describe('selectVms: a request that matches nothing is an error', () => {
  const requested = (...lists: ('excludes' | 'vdi_exports' | 'vm_exports')[]) => ({ requested: lists.map((list) => ({ list, where: 'request' })), config: [], maxBackups: 'default' });

  it('an export entry of the request matching no VM is an error; of the config, or an exclude, a warning', () => {
    const r = select({ excludes: ['NOPE-x'], vdiExports: ['nope.*:3'], vmExports: ['DEV-web3', 'Nothing:2'], sources: requested('vm_exports', 'excludes') });
    expect(r.errors).toEqual([{ entry: 'Nothing:2', list: 'vm_exports', code: 'no-match', message: 'entry "Nothing:2" matches no VM of the pool' }]);
    expect(r.warnings).toEqual([
      { entry: 'NOPE-x', list: 'excludes', code: 'no-match', message: 'entry "NOPE-x" matches no VM of the pool' },
      { entry: 'nope.*:3', list: 'vdi_exports', code: 'no-match', message: 'entry "nope.*:3" matches no VM of the pool' },
    ]);
    const vdi = select({ vdiExports: ['nope.*:3'], sources: requested('vdi_exports') });
    expect(vdi.errors).toMatchObject([{ entry: 'nope.*:3', list: 'vdi_exports', code: 'no-match' }]);
  });

  it('an entry whose VMs an earlier list took is no error (the documented precedence)', () => {
    const r = select({ excludes: ['DEV-web3'], vmExports: ['DEV-web3'], sources: requested('vm_exports') });
    expect(r.errors).toEqual([]);
    expect(r.vmExports).toEqual([]);
  });

  it('a name with regex characters that equals a VM\'s name says so, and how to escape it', () => {
    const pool = [...POOL, { uuid: 'f0000000-0000-4000-8000-000000000000', name: 'File Server (old)' }];
    const r = select({ vmExports: ['File Server (old)'], sources: requested('vm_exports') }, pool);
    expect(r.vmExports).toEqual([]);
    expect(r.errors).toEqual([
      {
        entry: 'File Server (old)',
        list: 'vm_exports',
        code: 'no-match',
        message:
          'entry "File Server (old)" matches no VM of the pool: it is read as a regular expression, which the VM named "File Server (old)" does not match; to select that VM by its name, escape the regex characters: File Server \\(old\\)$',
      },
    ]);
    // The suggested entry selects that VM, and only it.
    const fixed = select({ vmExports: ['File Server \\(old\\)$'], sources: requested('vm_exports') }, [...pool, { uuid: 'f1', name: 'File Server (old) 2' }]);
    expect(fixed.errors).toEqual([]);
    expect(names(fixed.vmExports.map((s) => s.vm))).toEqual(['File Server (old)']);
  });

  it('a regex that selects other VMs but not the one it names literally: a warning with the hint', () => {
    const pool = [{ uuid: 'a', name: 'web(1)' }, { uuid: 'b', name: 'web1' }];
    const r = select({ vmExports: ['web(1)'], sources: requested('vm_exports') }, pool);
    expect(names(r.vmExports.map((s) => s.vm))).toEqual(['web1']);
    expect(r.errors).toEqual([]);
    expect(r.warnings).toMatchObject([{ entry: 'web(1)', code: 'literal-name', message: expect.stringContaining('escape the regex characters: web\\(1\\)$') }]);
  });

  it.each(['a.b', ' lead', 'trail ', 'x:y', 'p|q', 'c++', '[x]', 'a\\b', '{1}', 'tab\there', 'ü ideo\u3000'])('literalNameEntry(%j) selects exactly that name', (name) => {
    const entry = literalNameEntry(name);
    const parsed = parseEntry(entry);
    expect(parsed.matches(name)).toBe(true);
    expect(parsed.matches(`${name}x`)).toBe(false);
    expect(parsed.matches(name.slice(1))).toBe(false);
  });
});

describe('selectVms: scale', () => {
  // How fast: `npm run bench -- plan` (plan_ms_5000, plan_vs_fetch_ratio), not a clock in a test.
  it('5,000 VMs × 100 entries: every VM lands in exactly one list', () => {
    const pool: PoolVm[] = Array.from({ length: 5000 }, (_, i) => ({ uuid: `${i}`, name: `${['PRD', 'DEV', 'TST'][i % 3]}-vm${i}` }));
    const entries = Array.from({ length: 100 }, (_, i) => (i % 2 ? `DEV-vm${i * 7}` : `(PRD|TST)-vm${i}[0-9]*5$:${(i % 5) + 1}`));
    const r = selectVms(pool, { excludes: entries.slice(0, 30), vdiExports: entries.slice(30, 60), vmExports: [...entries.slice(60), '.*'], maxBackups: 3 });
    expect(r.excludes.length + r.vdiExports.length + r.vmExports.length).toBe(5000);
    const uuids = [...r.excludes.map((v) => v.uuid), ...r.vdiExports.map((s) => s.vm.uuid), ...r.vmExports.map((s) => s.vm.uuid)];
    expect(new Set(uuids).size).toBe(5000);
    // DEV-vm7 is named by an exclude entry (i = 1 → DEV-vm7): excluded, not exported by '.*'.
    expect(r.excludes.map((v) => v.name)).toContain('DEV-vm7');
  });
});

describe('compilePythonMatch against Python itself', () => {
  // Differential test: thousands of generated patterns, matched by CPython's re.match (a real
  // python3 child process) and by our translation. Atoms that only meet features we refuse on
  // purpose are left out (possessive quantifiers arise from `*` followed by `+`: skipped below),
  // and back references (see the module comment for their one difference).
  it('agrees with python3 re.match on generated patterns', () => {
    let seed = 7;
    const rnd = (n: number) => {
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) % n;
    };
    const atoms = [
      'a', 'b', '.', '\\d', '\\w', '\\s', '\\W', '\\D', '\\S', '[ab]', '[^a]', '[]a]', '[\\Wa]', '[^\\Wa]', '[a-\\w]',
      '[\\s-]', '[\\d{1,}]', '[a-c]', '(a|b)', '(?:ab)', '(?P<g>a)', '$', '^', '\\Z', '\\A', '\\b', '\\B', '{', '}',
      '{1,2}', '{,2}', '{2}', '*', '+', '?', '*?', '\\-', '\\:', ':', '\\.', '\\n', '\\x61', '\\0', '\\141', '|', '(', ')',
      '[', ']', 'é', 'É', '-', ' ',
    ];
    const flags = ['', '', '', '(?i)', '(?a)', '(?s)', '(?m)', '(?si)', '(?am)'];
    const names = ['a', 'ab', 'ba', 'aab', 'a\n', 'a b', 'é', 'É1', 'a1', '1', '', 'abc', 'a:b', 'a-b', 'a.b', '{', ']a', 'a}', '٣', '\x1c', '\u00a0', '_', 'B', 'é_', 'ab ab'];
    const patterns = new Set<string>();
    while (patterns.size < 1500) {
      let p = flags[rnd(flags.length)]!;
      for (let k = 1 + rnd(5); k > 0; k--) p += atoms[rnd(atoms.length)];
      if (!/[*+?}]\+/.test(p)) patterns.add(p);
    }
    const cases = [...patterns].flatMap((p) => names.map((name) => [p, name] as const));
    const script = [
      'import json, re, sys, warnings',
      "warnings.simplefilter('ignore')",
      'out = []',
      'for p, s in json.load(sys.stdin):',
      '    try: out.append(bool(re.match(p, s)))',
      "    except re.error: out.append('error')",
      'print(json.dumps(out))',
    ].join('\n');
    const python: (boolean | 'error')[] = JSON.parse(execFileSync('python3', ['-c', script], { input: JSON.stringify(cases), maxBuffer: 1 << 26 }).toString());
    const compiled = new Map<string, RegExp | 'error'>();
    const disagreements: string[] = [];
    cases.forEach(([p, name], i) => {
      if (!compiled.has(p)) {
        try {
          compiled.set(p, compilePythonMatch(p));
        } catch {
          compiled.set(p, 'error');
        }
      }
      const re = compiled.get(p)!;
      const ours = re === 'error' ? 'error' : re.test(name);
      if (ours !== python[i]) disagreements.push(`${JSON.stringify(p)} on ${JSON.stringify(name)}: python ${python[i]}, ours ${ours}`);
    });
    expect(disagreements.slice(0, 10)).toEqual([]);
  });
});

describe('delta_exports', () => {
  const delta = (r: ReturnType<typeof select>) => r.deltaExports.map((s) => `${s.vm.name}:${s.maxBackups}`);

  it('takes its VMs after excludes and vdi_exports, before vm_exports; MAX is the points kept', () => {
    const r = select({ excludes: ['DEV-MYSQL$'], vdiExports: ['DEV-web3:7'], deltaExports: ['DEV-.*:14', 'PRD-a'], vmExports: ['DEV-.*', 'PRD-a.*'] });
    expect(names(r.excludes)).toEqual(['DEV-MYSQL']);
    expect(vdi(r)).toEqual(['DEV-web3:7:xvda']);
    expect(delta(r)).toContain('DEV-phishing-test:14');
    expect(delta(r)).toContain('PRD-a:4');
    expect(delta(r)).not.toContain('DEV-web3:14');
    expect(delta(r)).not.toContain('DEV-MYSQL:14');
    // vm_exports only gets what no earlier list took.
    expect(vm(r)).toEqual(['PRD-aa:4', 'PRD-abc:4']);
    expect(r.warnings).toEqual([]);
  });

  it('ignores a disks field with a warning (every disk is backed up) and reports an unmatched entry of the request', () => {
    const sources: SelectionSources = { requested: [{ list: 'delta_exports', where: 'command line (--delta-export)' }], config: [], maxBackups: 'default' };
    const r = select({ deltaExports: ['DEV-web3:2:xvdb', 'NOPE'], sources });
    expect(delta(r)).toEqual(['DEV-web3:2']);
    expect(r.warnings.map((w) => [w.list, w.code])).toEqual([['delta_exports', 'disks-ignored']]);
    expect(r.errors.map((e) => [e.list, e.code, e.entry])).toEqual([['delta_exports', 'no-match', 'NOPE']]);
  });

  it("a request's entry without MAX keeps the config's delta_exports MAX", () => {
    const sources: SelectionSources = {
      requested: [{ list: 'delta_exports', where: 'command line (--delta-export)' }],
      config: [{ list: 'delta_exports', entries: ['DEV-web3:9'], where: '/etc/vmbackup.cfg line 5' }],
      maxBackups: 'default',
    };
    const r = select({ deltaExports: ['DEV-web3'], sources });
    expect(r.deltaExports[0]).toMatchObject({ maxBackups: 9, maxFrom: { from: 'config', entry: 'DEV-web3:9', where: '/etc/vmbackup.cfg line 5' } });
  });
});
