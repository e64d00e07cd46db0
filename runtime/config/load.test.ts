import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, UsageError } from '../errors.js';
import { parseEntry } from '../../functions/plan/select.js';
import { loadSettings, normalizeXapiUrl, type ConfigIssue, type LoadedSettings } from './load.js';

const roots: string[] = [];
afterEach(() => {
  for (const root of roots.splice(0)) rmSync(root, { recursive: true, force: true });
});

/** A temp tree standing in for /mnt/VmBackup, /etc and ~; every read must stay inside it. */
function sandbox() {
  const root = mkdtempSync(join(tmpdir(), 'vmbackup-config-'));
  roots.push(root);
  const base = join(root, 'mnt', 'VmBackup');
  const home = join(root, 'root');
  const paths = {
    root,
    base,
    home,
    baseFile: join(base, 'etc', 'vmbackup.cfg'),
    system: join(root, 'etc', 'vmbackup.cfg'),
    homeFile: join(home, 'vmbackup.cfg'),
    extra: join(root, 'extra.cfg'),
  };
  mkdirSync(home, { recursive: true });
  const reads: string[] = [];
  const write = (path: string, text: string, mode = 0o600): string => {
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, text);
    chmodSync(path, mode);
    return path;
  };
  const load = (argv: string[] = [], env: Record<string, string> = {}): LoadedSettings =>
    loadSettings({
      argv,
      env,
      home,
      cwd: root,
      systemConfig: paths.system,
      defaultBaseDir: base,
      readFile: (path) => {
        reads.push(path);
        if (!path.startsWith(`${root}/`)) throw new Error(`test read outside its sandbox: ${path}`);
        return readFileSync(path, 'utf8');
      },
      fileMode: (path) => {
        if (!path.startsWith(`${root}/`)) throw new Error(`test stat outside its sandbox: ${path}`);
        try {
          return statSync(path).mode;
        } catch {
          return undefined;
        }
      },
    });
  const fail = (argv: string[] = [], env: Record<string, string> = {}): ConfigError => {
    try {
      load(argv, env);
    } catch (error) {
      if (error instanceof ConfigError) return error;
      throw error;
    }
    throw new Error('expected a ConfigError');
  };
  return { ...paths, reads, write, load, fail };
}

const cfg = (...lines: string[]) => `[vmbackup]\n${lines.join('\n')}\n`;

describe('loadSettings: defaults', () => {
  it('with no file, env or flag gives the schema defaults, backup_dir under base_dir and vm_exports .*', () => {
    const s = sandbox();
    const { settings, sources, files, warnings, flags } = s.load();
    expect(settings).toMatchObject({
      base_dir: s.base,
      backup_dir: join(s.base, 'exports'),
      share_type: 'nfs',
      space_threshold: 20,
      max_backups: 4,
      compress: 'none',
      vdi_export_format: 'raw',
      pool_backup: false,
      host_backup: false,
      log_level: 'info',
      vm_exports: ['.*'],
      vdi_exports: [],
      excludes: [],
      xapi_url: 'https://localhost',
      username: 'root',
      concurrency: 2,
    });
    expect(settings.password).toBeUndefined();
    expect(Object.values(sources).every((source) => source === 'default')).toBe(true);
    expect(files).toEqual([]);
    expect(warnings).toEqual([]);
    expect(flags).toEqual({ preview: false, json: false, help: false, version: false });
    expect(s.reads).toEqual([s.baseFile, s.system, s.homeFile]);
  });
});

describe('loadSettings: precedence defaults < files in order < env < flags', () => {
  // Each layer sets max_backups to its own number; the highest layer present must win.
  it.each([
    [['base'], 1, 'base'],
    [['base', 'system'], 2, 'system'],
    [['base', 'system', 'home'], 3, 'home'],
    [['base', 'system', 'home', 'extra'], 4, 'extra'],
    [['base', 'system', 'home', 'extra', 'env'], 5, 'env'],
    [['base', 'system', 'home', 'extra', 'env', 'flag'], 6, 'flag'],
    [['base', 'flag'], 6, 'flag'],
    [['home', 'env'], 5, 'env'],
    [['system', 'extra'], 4, 'extra'],
    [[], 4, 'default'],
  ] as const)('layers %j → max_backups %i from %s', (layers, expected, from) => {
    const s = sandbox();
    const files = { base: s.baseFile, system: s.system, home: s.homeFile, extra: s.extra } as const;
    const numbers = { base: 1, system: 2, home: 3, extra: 4 } as const;
    for (const layer of layers) if (layer in files) s.write(files[layer as keyof typeof files], cfg(`max_backups = ${numbers[layer as keyof typeof numbers]}`));
    const argv = [...(layers.includes('extra' as never) ? ['-c', 'extra.cfg'] : []), ...(layers.includes('flag' as never) ? ['--max-backups', '6'] : [])];
    const env: Record<string, string> = layers.includes('env' as never) ? { VMBACKUP_MAX_BACKUPS: '5' } : {};
    const { settings, sources } = s.load(argv, env);
    expect(settings.max_backups).toBe(expected);
    const source = from === 'env' || from === 'flag' || from === 'default' ? from : `file:${files[from]}`;
    expect(sources.max_backups).toBe(source);
  });

  it('reads the files in VmBackup order and reports which were read', () => {
    const s = sandbox();
    s.write(s.baseFile, cfg('excludes = a'));
    s.write(s.homeFile, cfg('excludes = b'));
    s.write(s.extra, cfg('excludes = c'));
    const { files, settings, where } = s.load(['--config', s.extra]);
    expect(files).toEqual([s.baseFile, s.homeFile, s.extra]);
    expect(settings.excludes).toEqual(['c']);
    expect(where.excludes).toBe(`${s.extra} line 2`);
  });

  it('merges key by key: a later file overrides only the keys it sets', () => {
    const s = sandbox();
    s.write(s.baseFile, cfg('max_backups = 7', 'pool_backup = true', 'excludes = a, b'));
    s.write(s.system, cfg('max_backups = 3'));
    const { settings, sources } = s.load();
    expect(settings).toMatchObject({ max_backups: 3, pool_backup: true, excludes: ['a', 'b'] });
    expect(sources).toMatchObject({ max_backups: `file:${s.system}`, pool_backup: `file:${s.baseFile}`, excludes: `file:${s.baseFile}` });
  });

  it('env sets scalar keys (VMBACKUP_<KEY>), empty env values count as unset', () => {
    const s = sandbox();
    s.write(s.system, cfg('username = fromfile', 'concurrency = 3'));
    const { settings, sources } = s.load([], { VMBACKUP_XAPI_URL: 'master.example', VMBACKUP_USERNAME: 'backup', VMBACKUP_CONCURRENCY: '', VMBACKUP_POOL_BACKUP: 'yes' });
    expect(settings).toMatchObject({ xapi_url: 'https://master.example', username: 'backup', concurrency: 3, pool_backup: true });
    expect(sources).toMatchObject({ xapi_url: 'env', username: 'env', concurrency: `file:${s.system}`, pool_backup: 'env' });
  });

  it('env cannot set lists, and says so', () => {
    const s = sandbox();
    const { settings, warnings } = s.load([], { VMBACKUP_EXCLUDES: 'a' });
    expect(settings.excludes).toEqual([]);
    expect(warnings).toEqual(['VMBACKUP_EXCLUDES is ignored: excludes is a list, set it in a config file or with -x']);
  });

  it('the -c file must exist; the others are optional', () => {
    const s = sandbox();
    const error = s.fail(['-c', 'missing.cfg']);
    expect(error.message).toBe(`config = ${join(s.root, 'missing.cfg')} on the command line (-c): config file does not exist`);
  });

  it('an optional file that exists but cannot be read is an error, not silently skipped', () => {
    const s = sandbox();
    mkdirSync(s.homeFile);
    expect(s.fail().message).toBe(`${s.homeFile}: config file cannot be read: is a directory`);
  });

  it('reads a file named twice only once, at its later place', () => {
    const s = sandbox();
    s.write(s.system, cfg('max_backups = 2'));
    s.write(s.homeFile, cfg('max_backups = 3'));
    const { files, settings } = s.load(['-c', s.system]);
    expect(files).toEqual([s.homeFile, s.system]);
    expect(settings.max_backups).toBe(2);
  });
});

describe('loadSettings: VmBackup defects fixed', () => {
  it('defect 1: -F sets vdi_export_format', () => {
    const s = sandbox();
    s.write(s.system, cfg('vdi_export_format = raw'));
    for (const argv of [['-F', 'vhd'], ['--format', 'vhd'], ['--format=vhd'], ['-Fvhd']]) {
      const { settings, sources, where } = s.load(argv);
      expect(settings.vdi_export_format).toBe('vhd');
      expect(sources.vdi_export_format).toBe('flag');
      expect(where.vdi_export_format).toMatch(/^command line \((-F|--format)\)$/);
    }
  });

  it('defect 2: -e/-E/-x replace the config list of the same kind, and leave the other kinds alone', () => {
    const s = sandbox();
    s.write(s.system, cfg('excludes = a, b', 'vm_exports = c:2', 'vdi_exports = d:-1:xvdb'));
    expect(s.load(['-x', 'e']).settings).toMatchObject({ excludes: ['e'], vm_exports: ['c:2'], vdi_exports: ['d:-1:xvdb'] });
    expect(s.load(['-e', 'f', '-e', 'g:3']).settings).toMatchObject({ excludes: ['a', 'b'], vm_exports: ['f', 'g:3'], vdi_exports: ['d:-1:xvdb'] });
    expect(s.load(['-E', 'h']).settings).toMatchObject({ excludes: ['a', 'b'], vm_exports: ['c:2'], vdi_exports: ['h'] });
    expect(s.load(['-x', '']).settings.excludes).toEqual([]);
  });

  it.each([
    ['a flag turns off what a file turned on', [cfg('pool_backup = true')], ['--no-pool-backup'], { pool_backup: false }],
    ['--no-host-backup', [cfg('host_backup = yes')], ['--no-host-backup'], { host_backup: false }],
    ['--no-compress', [cfg('compress = true')], ['--no-compress'], { compress: 'none' }],
    ['--no-insecure', [cfg('insecure = on')], ['--no-insecure'], { insecure: false }],
    ['a later file turns off what an earlier one turned on', [cfg('pool_backup = True', 'compress = True'), cfg('pool_backup = off', 'compress = no')], [], { pool_backup: false, compress: 'none' }],
    ['the last of -p / --no-pool-backup wins', [], ['--no-pool-backup', '-p'], { pool_backup: true }],
  ])('defect 3: %s', (_name, texts, argv, expected) => {
    const s = sandbox();
    texts.forEach((text, n) => s.write([s.baseFile, s.homeFile][n]!, text));
    expect(s.load(argv).settings).toMatchObject(expected);
  });

  it('defect 5 (parse part): NAME:-1 is kept as -1 for the selection to resolve to max_backups', () => {
    const s = sandbox();
    s.write(s.system, cfg('max_backups = 6', 'vm_exports = DEV-MYSQL:-1'));
    const { settings } = s.load(['-E', 'DEV-DB:-1:xvdb']);
    expect(settings.vm_exports).toEqual(['DEV-MYSQL:-1']);
    // The selection reads -1 as "the global max_backups" (null), not as one backup.
    expect(parseEntry(settings.vm_exports[0]!).maxBackups).toBeNull();
    expect(parseEntry(settings.vdi_exports[0]!)).toMatchObject({ name: 'DEV-DB', maxBackups: null, disks: ['xvdb'] });
  });

  it.each([
    ['an empty excludes = is an empty list, not "every VM"', 'excludes =', []],
    ['an empty excludes: too', 'excludes:', []],
    ['a space after a comma does not break the name', 'excludes = DEV-phishing-test, PRD-PRINTER1', ['DEV-phishing-test', 'PRD-PRINTER1']],
    ['trailing comma', 'excludes = a,', ['a']],
  ])('defect 7: %s', (_name, line, expected) => {
    const s = sandbox();
    s.write(s.system, cfg(line));
    expect(s.load().settings.excludes).toEqual(expected);
  });
});

describe('loadSettings: values', () => {
  it.each([
    ['true', 'gzip'], ['True', 'gzip'], ['yes', 'gzip'], ['on', 'gzip'], ['1', 'gzip'],
    ['false', 'none'], ['False', 'none'], ['no', 'none'], ['off', 'none'], ['0', 'none'],
    ['gzip', 'gzip'], ['GZIP', 'gzip'], ['zstd', 'zstd'], ['none', 'none'],
  ])('compress = %s → %s', (value, expected) => {
    const s = sandbox();
    s.write(s.system, cfg(`compress = ${value}`));
    expect(s.load().settings.compress).toBe(expected);
  });

  it('compress from flags: -C is gzip, --compression zstd', () => {
    const s = sandbox();
    expect(s.load(['-C']).settings.compress).toBe('gzip');
    expect(s.load(['--compression', 'zstd']).settings.compress).toBe('zstd');
  });

  it('enums and booleans are case-insensitive, as Python getboolean and logging were', () => {
    const s = sandbox();
    s.write(s.system, cfg('vdi_export_format = VHD', 'log_level = WARNING', 'pool_backup = TRUE', 'share_type = SMB'));
    expect(s.load().settings).toMatchObject({ vdi_export_format: 'vhd', log_level: 'warning', pool_backup: true, share_type: 'smb' });
  });

  it("VmBackup's etc/vmbackup.example, uncommented, loads as meant", () => {
    const s = sandbox();
    const example = [
      '[vmbackup]', '', '##### Configure core settings #####', '', '# Type of share', 'share_type = nfs', '',
      'backup_dir = /mnt/VmBackup/exports', 'space_threshold = 20', 'max_backups = 4', 'compress = False',
      'vdi_export_format = raw', 'pool_backup = False', 'host_backup = False', '',
      'excludes = DEV-.*, TSTVM02', 'vdi_exports = MYVM01:-1:xvda;xvdb,MySql123:5:xvdb,PRD-LNXVM.*',
      'vm_exports = MYVM02:2,MySql345,PRD-.*', '',
    ].join('\n');
    s.write(s.baseFile, example);
    const { settings, warnings } = s.load();
    expect(warnings).toEqual([]);
    expect(settings).toMatchObject({
      share_type: 'nfs', backup_dir: '/mnt/VmBackup/exports', space_threshold: 20, max_backups: 4, compress: 'none',
      vdi_export_format: 'raw', pool_backup: false, host_backup: false,
      excludes: ['DEV-.*', 'TSTVM02'],
      vdi_exports: ['MYVM01:-1:xvda;xvdb', 'MySql123:5:xvdb', 'PRD-LNXVM.*'],
      vm_exports: ['MYVM02:2', 'MySql345', 'PRD-.*'],
    });
  });

  it('backup_dir defaults to <base_dir>/exports, wherever base_dir comes from', () => {
    const s = sandbox();
    const vb = join(s.root, 'srv', 'vb');
    expect(s.load(['-b', vb]).settings).toMatchObject({ base_dir: vb, backup_dir: join(vb, 'exports') });
    expect(s.load([], { VMBACKUP_BASE_DIR: vb }).settings).toMatchObject({ base_dir: vb, backup_dir: join(vb, 'exports') });
    expect(s.load(['-b', vb, '-d', '/backups']).settings).toMatchObject({ base_dir: vb, backup_dir: '/backups' });
    const fromFile = join(s.root, 'srv', 'file');
    s.write(s.system, cfg(`base_dir = ${fromFile}`));
    expect(s.load().settings).toMatchObject({ base_dir: fromFile, backup_dir: join(fromFile, 'exports') });
  });

  it('-b and VMBACKUP_BASE_DIR move where <base>/etc/vmbackup.cfg is searched', () => {
    const s = sandbox();
    const other = join(s.root, 'other');
    s.write(join(other, 'etc', 'vmbackup.cfg'), cfg('max_backups = 9'));
    expect(s.load(['-b', other]).settings.max_backups).toBe(9);
    expect(s.load([], { VMBACKUP_BASE_DIR: other }).settings.max_backups).toBe(9);
    expect(s.load().settings.max_backups).toBe(4);
  });

  it('base_dir inside a config file cannot move where config files are searched, and says so', () => {
    const s = sandbox();
    const other = join(s.root, 'other');
    s.write(join(other, 'etc', 'vmbackup.cfg'), cfg('max_backups = 9'));
    s.write(s.system, cfg(`base_dir = ${other}`));
    const { settings, warnings } = s.load();
    expect(settings).toMatchObject({ base_dir: other, backup_dir: join(other, 'exports'), max_backups: 4 });
    expect(warnings).toEqual([`base_dir = ${other} in ${s.system} line 2 does not make vmbackup read ${join(other, 'etc', 'vmbackup.cfg')}: config files are searched under -b or VMBACKUP_BASE_DIR (here ${s.base})`]);
  });

  it('%(key)s refers to another key and %% is a %, as in VmBackup (SafeConfigParser)', () => {
    const s = sandbox();
    s.write(s.system, cfg('backup_dir = %(base_dir)s/bk', 'excludes = 100%%-full, %(username)s-vm'));
    const vb = join(s.root, 'vb');
    const { settings } = s.load(['-b', vb, '--user', 'ops']);
    expect(settings.backup_dir).toBe(join(vb, 'bk'));
    expect(settings.excludes).toEqual(['100%-full', 'ops-vm']);
  });

  it('relative paths are resolved against the working directory', () => {
    const s = sandbox();
    s.write(join(s.root, 'rel.cfg'), cfg('backup_dir = out'));
    const { settings, files } = s.load(['-c', 'rel.cfg', '-b', 'vb']);
    expect(files).toContain(join(s.root, 'rel.cfg'));
    expect(settings).toMatchObject({ backup_dir: join(s.root, 'out'), base_dir: join(s.root, 'vb') });
  });

  it('an empty value unsets an optional key set by an earlier file', () => {
    const s = sandbox();
    const ca = s.write(join(s.root, 'ca.pem'), 'PEM');
    s.write(s.system, cfg(`tls_ca_file = ${ca}`));
    expect(s.load().settings.tls_ca_file).toBe(ca);
    s.write(s.homeFile, cfg('tls_ca_file ='));
    expect(s.load().settings.tls_ca_file).toBeUndefined();
  });

  it('passes on warnings of the files with file and line', () => {
    const s = sandbox();
    // Disks on a vm_exports entry are the selection's warning (disks-ignored), not the loader's.
    s.write(s.system, cfg('max_backup = 3', 'vm_exports = DEV:2:xvdb'));
    expect(s.load().warnings).toEqual([`unknown key max_backup in ${s.system} line 2 is ignored (did you mean max_backups?)`]);
  });

  it('--help and --version read nothing, so they work with a broken config', () => {
    const s = sandbox();
    s.write(s.system, cfg('max_backups = zero'));
    const loaded = s.load(['--help', '-c', 'missing.cfg']);
    expect(loaded.flags.help).toBe(true);
    expect(loaded.files).toEqual([]);
    expect(s.reads).toEqual([]);
    expect(s.load(['-v']).flags.version).toBe(true);
  });

  it('a bad command line is a UsageError, before any file is read', () => {
    const s = sandbox();
    expect(() => s.load(['--bogus'])).toThrow(UsageError);
    expect(s.reads).toEqual([]);
  });
});

describe('loadSettings: which list applies when (vm_exports = .* default)', () => {
  it.each([
    ['nothing configured: vm_exports = .*', [], [], ['.*'], []],
    ['only vdi_exports in a file: no default', ['vdi_exports = web'], [], [], ['web']],
    ['only -E: no default', [], ['-E', 'web'], [], ['web']],
    ['explicitly empty vm_exports = means none', ['vm_exports ='], [], [], []],
    ["-e '' means none", [], ['-e', ''], [], []],
    ['an empty vdi_exports = says nothing about vm_exports', ['vdi_exports ='], [], ['.*'], []],
    ['excludes alone keep the default', ['excludes = a'], [], ['.*'], []],
    ['both given', ['vm_exports = a', 'vdi_exports = b'], [], ['a'], ['b']],
  ])('%s', (_name, lines, argv, vmExports, vdiExports) => {
    const s = sandbox();
    if (lines.length > 0) s.write(s.system, cfg(...lines));
    const { settings, sources } = s.load(argv);
    expect(settings.vm_exports).toEqual(vmExports);
    expect(settings.vdi_exports).toEqual(vdiExports);
    if (vmExports[0] === '.*') expect(sources.vm_exports).toBe('default');
  });
});

describe('loadSettings: errors name key, file and line (or option / variable) and reason', () => {
  it.each([
    ['max_backups = 0', 'max_backups = 0 in FILE line 2: must be an integer >= 1'],
    ['max_backups = 3x', 'max_backups = 3x in FILE line 2: must be an integer >= 1'],
    ['max_backups = 2.5', 'max_backups = 2.5 in FILE line 2: must be an integer >= 1'],
    ['max_backups =', 'max_backups = "" in FILE line 2: must be an integer >= 1'],
    ['space_threshold = 100', 'space_threshold = 100 in FILE line 2: must be an integer from 1 to 99'],
    ['space_threshold = 20%', 'space_threshold = 20% in FILE line 2: must be an integer from 1 to 99'],
    ['vdi_export_format = qcow2', 'vdi_export_format = qcow2 in FILE line 2: must be one of raw, vhd'],
    ['share_type = cifs', 'share_type = cifs in FILE line 2: must be one of nfs, smb'],
    ['log_level = verbose', 'log_level = verbose in FILE line 2: must be one of debug, info, warning, error, critical'],
    ['pool_backup = maybe', 'pool_backup = maybe in FILE line 2: must be true or false (also yes/no, on/off, 1/0)'],
    ['compress = bzip2', 'compress = bzip2 in FILE line 2: must be gzip, zstd or none (or a boolean: true means gzip)'],
    ['lock_stale_hours = soon', 'lock_stale_hours = soon in FILE line 2: must be a number >= 0.01'],
    ['username =', 'username = "" in FILE line 2: must not be empty'],
    ['xapi_url = ftp://master', 'xapi_url = ftp://master in FILE line 2: scheme ftp is not supported (use https:// or http://)'],
    ['xapi_url = https://root:hunter2@master', 'xapi_url = https://***@master in FILE line 2: must not contain a user or password (use username and password_file)'],
    ['backup_dir = %(nope)s/x', 'backup_dir = %(nope)s/x in FILE line 2: %(nope)s does not name a key'],
    ['backup_dir = %(password)s', 'backup_dir = %(password)s in FILE line 2: %(password)s cannot be used: password is a list or a secret'],
    ['vm_exports = ok, DEV:0', 'vm_exports entry "DEV:0" in FILE line 2: max_backups must be -1 or a positive integer, got "0"'],
    ['vdi_exports = DEV:2:xv da', 'vdi_exports entry "DEV:2:xv da" in FILE line 2: invalid disk name "xv da" (letters and digits only, e.g. xvdb)'],
    ['not a key value line', 'FILE line 2: cannot parse "not a key value line": expected "key = value", "[section]" or a # comment'],
  ])('%s', (line, message) => {
    const s = sandbox();
    s.write(s.system, cfg(line));
    const error = s.fail();
    expect(error.message).toBe(message.replaceAll('FILE', s.system));
    const issue = (error.data.issues as ConfigIssue[])[0]!;
    expect(issue).toMatchObject({ file: s.system, line: 2, message: error.message });
    expect(error.data.file).toBe(s.system);
  });

  it.each([
    [['--max-backups', '0'], {}, 'max_backups = 0 on the command line (--max-backups): must be an integer >= 1'],
    [['-F', 'qcow'], {}, 'vdi_export_format = qcow on the command line (-F): must be one of raw, vhd'],
    [['-l', 'loud'], {}, 'log_level = loud on the command line (-l): must be one of debug, info, warning, error, critical'],
    [['--compression', 'lz4'], {}, 'compress = lz4 on the command line (--compression): must be gzip, zstd or none (or a boolean: true means gzip)'],
    [['--xapi', 'https://master/path'], {}, 'xapi_url = https://master/path on the command line (--xapi): must not have a path, query or fragment: XAPI is at the root of the host'],
    [['-e', 'DEV:abc'], {}, 'vm_exports entry "DEV:abc" on the command line (-e): MAX "abc" is not a number; to choose disks, put a MAX before them: DEV:-1:abc'],
    [[], { VMBACKUP_CONCURRENCY: '0' }, 'concurrency = 0 in the environment (VMBACKUP_CONCURRENCY): must be an integer from 1 to 64'],
    [[], { VMBACKUP_INSECURE: 'sure' }, 'insecure = sure in the environment (VMBACKUP_INSECURE): must be true or false (also yes/no, on/off, 1/0)'],
  ])('%j %j', (argv, env, message) => {
    const s = sandbox();
    const error = s.fail(argv, env);
    expect(error.message).toBe(message);
    expect((error.data.issues as ConfigIssue[])[0]!.file).toBeUndefined();
  });

  it('collects every error into one ConfigError', () => {
    const s = sandbox();
    s.write(s.baseFile, cfg('max_backups = 0', 'pool_backup = perhaps'));
    s.write(s.homeFile, cfg('', 'vdi_export_format = qcow2'));
    const error = s.fail(['--concurrency', '99']);
    expect(error).toBeInstanceOf(ConfigError);
    expect(error.code).toBe('CONFIG');
    expect(error.message).toBe([
      '4 configuration errors:',
      `  - max_backups = 0 in ${s.baseFile} line 2: must be an integer >= 1`,
      `  - vdi_export_format = qcow2 in ${s.homeFile} line 3: must be one of raw, vhd`,
      `  - pool_backup = perhaps in ${s.baseFile} line 3: must be true or false (also yes/no, on/off, 1/0)`,
      '  - concurrency = 99 on the command line (--concurrency): must be an integer from 1 to 64',
    ].join('\n'));
    expect((error.data.issues as ConfigIssue[]).map((i) => [i.key, i.file, i.line])).toEqual([
      ['max_backups', s.baseFile, 2],
      ['vdi_export_format', s.homeFile, 3],
      ['pool_backup', s.baseFile, 3],
      ['concurrency', undefined, undefined],
    ]);
    expect(error.data).toMatchObject({ key: 'max_backups', file: s.baseFile, reason: 'must be an integer >= 1' });
  });

  it('only the value that wins is validated (an overridden bad value does not fail the run)', () => {
    const s = sandbox();
    s.write(s.system, cfg('max_backups = 0'));
    expect(s.load(['--max-backups', '2']).settings.max_backups).toBe(2);
  });
});

describe('loadSettings: password', () => {
  it('password_file: first line, newline stripped, spaces kept; source is the file', () => {
    const s = sandbox();
    const pf = s.write(join(s.root, 'pw'), '  s3cret pass \r\nsecond line\n');
    const { settings, sources, where } = s.load(['--password-file', pf]);
    expect(settings.password).toBe('  s3cret pass ');
    expect(settings.password_file).toBe(pf);
    expect(sources.password).toBe(`file:${pf}`);
    expect(where.password).toBe(`file ${pf} (password_file)`);
  });

  it('VMBACKUP_PASSWORD from the environment, taken byte for byte', () => {
    const s = sandbox();
    const { settings, sources } = s.load([], { VMBACKUP_PASSWORD: ' p%(x)s ' });
    expect(settings.password).toBe(' p%(x)s ');
    expect(sources.password).toBe('env');
  });

  it('an unreadable password_file is an error naming the file, never the content', () => {
    const s = sandbox();
    expect(s.fail(['--password-file', 'nope']).message).toBe(`password_file = ${join(s.root, 'nope')} on the command line (--password-file): cannot read it: does not exist`);
    const empty = s.write(join(s.root, 'empty'), '\nhunter2\n');
    const error = s.fail(['--password-file', empty]);
    expect(error.message).toBe(`password_file = ${empty} on the command line (--password-file): its first line (the password) is empty`);
    expect(JSON.stringify(error.data)).not.toContain('hunter2');
  });

  it('a password in a group/world-readable config file warns; mode 0600 does not', () => {
    const s = sandbox();
    s.write(s.system, cfg('password = hunter2'), 0o644);
    const loaded = s.load();
    expect(loaded.settings.password).toBe('hunter2');
    expect(loaded.sources.password).toBe(`file:${s.system}`);
    expect(loaded.warnings).toEqual([`${s.system} contains a password but is readable by group or others (mode 0644): chmod 600 ${s.system}, or use password_file`]);
    chmodSync(s.system, 0o600);
    expect(s.load().warnings).toEqual([]);
  });

  it('a group-readable password_file warns', () => {
    const s = sandbox();
    const pf = s.write(join(s.root, 'pw'), 'x\n', 0o640);
    expect(s.load(['--password-file', pf]).warnings).toEqual([`password_file ${pf} is readable by group or others (mode 0640): chmod 600 ${pf}`]);
  });

  it('the other secret files (NATS, gateway) warn alike when others can read them', () => {
    const s = sandbox();
    const creds = s.write(join(s.root, 'nats.creds'), 'x\n', 0o644);
    const tokens = s.write(join(s.root, 'tokens'), 'x\n', 0o600);
    s.write(s.system, cfg(`nats_creds_file = ${creds}`, `gateway_tokens_file = ${tokens}`));
    expect(s.load().warnings).toEqual([`nats_creds_file ${creds} is readable by group or others (mode 0644): chmod 600 ${creds}`]);
  });

  it('the password never appears in error messages', () => {
    const s = sandbox();
    s.write(s.system, cfg('password = hunter2', 'max_backups = 0'));
    const error = s.fail([], { VMBACKUP_PASSWORD: 'swordfish' });
    expect(error.message).not.toMatch(/hunter2|swordfish/);
    expect(JSON.stringify(error.data)).not.toMatch(/hunter2|swordfish/);
  });

  type Layout = { flagFile?: boolean; env?: boolean; envFile?: boolean; cfgFile?: boolean; cfgPassword?: boolean };
  it.each<[string, Layout, string, 'env' | 'file']>([
    ['--password-file beats VMBACKUP_PASSWORD', { flagFile: true, env: true }, 'from-file', 'file'],
    ['VMBACKUP_PASSWORD beats a password_file in a config file', { cfgFile: true, env: true }, 'from-env', 'env'],
    ['VMBACKUP_PASSWORD_FILE beats password in a config file', { cfgPassword: true, envFile: true }, 'from-file', 'file'],
    ['password_file and password in the same file: password_file wins', { cfgFile: true, cfgPassword: true }, 'from-file', 'file'],
  ])('%s', (_name, layout, expected, kind) => {
    const s = sandbox();
    const pf = s.write(join(s.root, 'pw'), 'from-file\n');
    const lines = [...(layout.cfgFile ? [`password_file = ${pf}`] : []), ...(layout.cfgPassword ? ['password = from-cfg'] : [])];
    if (lines.length > 0) s.write(s.system, cfg(...lines));
    const env: Record<string, string> = { ...(layout.env ? { VMBACKUP_PASSWORD: 'from-env' } : {}), ...(layout.envFile ? { VMBACKUP_PASSWORD_FILE: pf } : {}) };
    const loaded = s.load(layout.flagFile ? ['--password-file', pf] : [], env);
    expect(loaded.settings.password).toBe(expected);
    expect(loaded.sources.password).toBe(kind === 'env' ? 'env' : `file:${pf}`);
  });
});

describe('loadSettings: XAPI and TLS', () => {
  it('http is accepted with a cleartext warning', () => {
    const s = sandbox();
    const { settings, warnings } = s.load(['--xapi', 'http://10.0.0.5']);
    expect(settings.xapi_url).toBe('http://10.0.0.5');
    expect(warnings).toEqual(['xapi_url = http://10.0.0.5 on the command line (--xapi): http sends the password in cleartext; use https']);
  });

  it('insecure warns loudly; a missing tls_ca_file is an error', () => {
    const s = sandbox();
    expect(s.load(['--insecure']).warnings).toEqual(["insecure is on (command line (--insecure)): the pool's TLS certificate is NOT checked"]);
    expect(s.fail(['--tls-ca-file', 'ca.pem']).message).toBe(`tls_ca_file = ${join(s.root, 'ca.pem')} on the command line (--tls-ca-file): cannot read it: does not exist`);
  });
});

describe('normalizeXapiUrl', () => {
  it.each([
    ['master', 'https://master', false],
    ['master.example.com', 'https://master.example.com', false],
    ['master:8443', 'https://master:8443', false],
    ['10.0.0.1', 'https://10.0.0.1', false],
    ['10.0.0.1:443', 'https://10.0.0.1', false],
    ['https://master', 'https://master', false],
    ['https://master/', 'https://master', false],
    ['HTTPS://Master.Example:8443/', 'https://master.example:8443', false],
    ['http://master', 'http://master', true],
    ['http://master:8080', 'http://master:8080', true],
    ['[fe80::1]:8443', 'https://[fe80::1]:8443', false],
    ['fe80::1', 'https://[fe80::1]', false],
    ['https://[::1]', 'https://[::1]', false],
  ])('%s → %s', (input, url, cleartext) => {
    expect(normalizeXapiUrl(input)).toEqual({ url, cleartext });
  });

  it.each([
    ['', 'must not be empty'],
    ['ftp://master', 'scheme ftp is not supported (use https:// or http://)'],
    ['https://root:pw@master', 'must not contain a user or password (use username and password_file)'],
    ['master/jsonrpc', 'must not have a path, query or fragment: XAPI is at the root of the host'],
    ['master:99999', 'must be host, host:port, https://host[:port] or http://host[:port]'],
    ['https://', 'must be host, host:port, https://host[:port] or http://host[:port]'],
  ])('refuses %j', (input, error) => {
    expect(normalizeXapiUrl(input)).toEqual({ error });
  });
});
