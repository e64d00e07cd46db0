import { describe, expect, it } from 'vitest';
import { UsageError } from '../errors.js';
import { OPTIONS, commandHelp, helpText, parseArgs, takePositionals, usageText } from './args.js';
import { COMMAND_SPECS } from './commands.js';

const NO_FLAGS = { preview: false, json: false, help: false, version: false };

describe('parseArgs: VmBackup spellings', () => {
  it.each<[string, string[], Record<string, unknown>]>([
    ['no arguments', [], {}],
    ['-b / --base-dir', ['-b', '/srv/vb'], { base_dir: '/srv/vb' }],
    ['--base-dir', ['--base-dir', '/srv/vb'], { base_dir: '/srv/vb' }],
    ['-d / --backup-dir', ['-d', '/x', '--backup-dir', '/y'], { backup_dir: '/y' }],
    ['-p -H', ['-p', '-H'], { pool_backup: true, host_backup: true }],
    ['--pool-backup --host-backup', ['--pool-backup', '--host-backup'], { pool_backup: true, host_backup: true }],
    ['-l warning (cron mail only on trouble)', ['-l', 'warning'], { log_level: 'warning' }],
    ['--log-level=debug', ['--log-level=debug'], { log_level: 'debug' }],
    ['-C is gzip', ['-C'], { compress: 'gzip' }],
    ['--compress', ['--compress'], { compress: 'gzip' }],
    ['-F sets vdi_export_format (defect 1)', ['-F', 'vhd'], { vdi_export_format: 'vhd' }],
    ['--format=vhd', ['--format=vhd'], { vdi_export_format: 'vhd' }],
    ['-e DEV-MYSQL', ['-e', 'DEV-MYSQL'], { vm_exports: ['DEV-MYSQL'] }],
    ['-e "DEV MYSQL" (one argument with a space)', ['-e', 'DEV MYSQL'], { vm_exports: ['DEV MYSQL'] }],
    ['-e DEV-MYSQL:2', ['-e', 'DEV-MYSQL:2'], { vm_exports: ['DEV-MYSQL:2'] }],
    ['-E DEV-MYSQL:-1:xvdb (value with a dash inside)', ['-E', 'DEV-MYSQL:-1:xvdb'], { vdi_exports: ['DEV-MYSQL:-1:xvdb'] }],
    ['-E DEV-MYSQL:7:xvda;xvdb', ['-E', 'DEV-MYSQL:7:xvda;xvdb'], { vdi_exports: ['DEV-MYSQL:7:xvda;xvdb'] }],
    ["-x '.*' -p -H (weekly pool and hosts only)", ['-x', '.*', '-p', '-H'], { excludes: ['.*'], pool_backup: true, host_backup: true }],
    ['repeatable --delta-export accumulates in order', ['--delta-export', 'db.*:14', '--delta-export=web1'], { delta_exports: ['db.*:14', 'web1'] }],
    ['repeatable -e, -E, -x accumulate in order', ['-e', 'a', '--vm-export', 'b', '-eC', '-E', 'd', '--vdi-export=e', '-x', 'f', '--exclude', 'g'], { vm_exports: ['a', 'b', 'C'], vdi_exports: ['d', 'e'], excludes: ['f', 'g'] }],
    ['a comma in a flag value is not a separator (one entry per flag, as VmBackup)', ['-e', 'a,b'], { vm_exports: ['a,b'] }],
    ["-x '' is an explicitly empty list", ['-x', ''], { excludes: [''] }],
  ])('%s', (_name, argv, values) => {
    const parsed = parseArgs(argv);
    expect(parsed.values).toEqual(values);
    expect(parsed.flags).toEqual(NO_FLAGS);
  });

  it('-c/--config is kept apart from the settings', () => {
    expect(parseArgs(['-c', 'my.cfg']).config).toBe('my.cfg');
    expect(parseArgs(['--config=my.cfg']).config).toBe('my.cfg');
    expect(parseArgs(['-cmy.cfg']).spellings.config).toBe('-c');
  });

  it.each<[string[], Partial<typeof NO_FLAGS>]>([
    [['--preview'], { preview: true }],
    [['--preview', '--json'], { preview: true, json: true }],
    [['-v'], { version: true }],
    [['--version'], { version: true }],
    [['-h'], { help: true }],
    [['--help'], { help: true }],
  ])('flags %j', (argv, flags) => {
    expect(parseArgs(argv).flags).toEqual({ ...NO_FLAGS, ...flags });
  });
});

describe('parseArgs: vmbackup additions', () => {
  it.each<[string[], Record<string, unknown>]>([
    [['--no-pool-backup'], { pool_backup: false }],
    [['--no-host-backup'], { host_backup: false }],
    [['-p', '--no-pool-backup'], { pool_backup: false }],
    [['--no-pool-backup', '-p'], { pool_backup: true }],
    [['-C', '--no-compress'], { compress: 'none' }],
    [['--compression', 'zstd'], { compress: 'zstd' }],
    [['--compression=zstd', '-C'], { compress: 'gzip' }],
    [['--max-backups', '7', '--space-threshold=15', '--concurrency', '3'], { max_backups: '7', space_threshold: '15', concurrency: '3' }],
    [['--xapi', 'pool-master:8443'], { xapi_url: 'pool-master:8443' }],
    [['--user', 'backup'], { username: 'backup' }],
    [['--password-file', '/etc/vmbackup/password'], { password_file: '/etc/vmbackup/password' }],
    [['--tls-ca-file=/etc/ca.pem', '--insecure'], { tls_ca_file: '/etc/ca.pem', insecure: true }],
    [['--insecure', '--no-insecure'], { insecure: false }],
  ])('%j', (argv, values) => {
    expect(parseArgs(argv).values).toEqual(values);
  });

  it('records how each key was spelled, the last spelling winning', () => {
    const parsed = parseArgs(['-C', '--compression', 'zstd', '-F', 'raw', '--max-backups=2', '-pH']);
    expect(parsed.spellings).toEqual({ compress: '--compression', vdi_export_format: '-F', max_backups: '--max-backups', pool_backup: '-p', host_backup: '-H' });
  });
});

describe('parseArgs: forms', () => {
  it.each<[string, string[], Record<string, unknown>]>([
    ['combined switches -pH', ['-pH'], { pool_backup: true, host_backup: true }],
    ['combined -pHC', ['-pHC'], { pool_backup: true, host_backup: true, compress: 'gzip' }],
    ['switches then a value option in one cluster', ['-pHe', 'DEV'], { pool_backup: true, host_backup: true, vm_exports: ['DEV'] }],
    ['switches then an attached value', ['-pHeDEV'], { pool_backup: true, host_backup: true, vm_exports: ['DEV'] }],
    ['-eNAME', ['-eDEV-MYSQL'], { vm_exports: ['DEV-MYSQL'] }],
    ['-e=NAME (argparse)', ['-e=DEV-MYSQL'], { vm_exports: ['DEV-MYSQL'] }],
    ['--opt=value keeps later = signs', ['--vm-export=a=b'], { vm_exports: ['a=b'] }],
    ['--opt= gives an empty value', ['--exclude='], { excludes: [''] }],
    ['a negative number is a value', ['--max-backups', '-1'], { max_backups: '-1' }],
    ['a lone - is a value', ['-e', '-'], { vm_exports: ['-'] }],
    ['an attached value may start with -', ['-e-foo', '--vm-export=-bar'], { vm_exports: ['-foo', '-bar'] }],
    ['-- at the end is accepted', ['-p', '--'], { pool_backup: true }],
    ['last scalar wins', ['-F', 'raw', '-F', 'vhd'], { vdi_export_format: 'vhd' }],
  ])('%s', (_name, argv, values) => {
    expect(parseArgs(argv).values).toEqual(values);
  });
});

describe('parseArgs: strict errors', () => {
  it.each<[string[], string, string]>([
    [['--frobnicate'], '--frobnicate', 'unrecognized option --frobnicate'],
    [['--exclud', 'x'], '--exclud', 'unrecognized option --exclud (did you mean --exclude?)'],
    [['--pool'], '--pool', 'unrecognized option --pool (did you mean --pool-backup?)'],
    [['--vm-exports', 'x'], '--vm-exports', 'unrecognized option --vm-exports (did you mean --vm-export?)'],
    [['-Z'], '-Z', 'unrecognized option -Z'],
    [['-pZ'], '-Z', 'unrecognized option -Z (in "-pZ")'],
    [['-e'], '-e', 'option -e/--vm-export needs a value (STRING)'],
    [['--config'], '--config', 'option -c/--config needs a value (FILE)'],
    [['-e', '-p'], '-e', 'option -e/--vm-export needs a value (STRING); to give one that starts with "-", write -e-p'],
    [['--exclude', '--preview'], '--exclude', 'option -x/--exclude needs a value (STRING); to give one that starts with "-", write --exclude=--preview'],
    [['-pe'], '-e', 'option -e/--vm-export needs a value (STRING)'],
    [['--preview=yes'], '--preview', 'option --preview takes no value (got "--preview=yes")'],
    [['--no-compress=1'], '--no-compress', 'option --no-compress takes no value (got "--no-compress=1")'],
    [['-p=1'], '-p', 'option -p/--pool-backup takes no value (got "-p=1")'],
    [['DEV-MYSQL'], 'DEV-MYSQL', 'unexpected argument "DEV-MYSQL": vmbackup takes options only (quote a VM name with spaces: -e "DEV MYSQL")'],
    [['-e', 'DEV', 'MYSQL'], 'MYSQL', 'unexpected argument "MYSQL": vmbackup takes options only (quote a VM name with spaces: -e "DEV MYSQL")'],
    [['--', '-p'], '-p', 'unexpected argument "-p": vmbackup takes options only'],
  ])('%j', (argv, flag, message) => {
    let error: unknown;
    try {
      parseArgs(argv);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(UsageError);
    expect((error as UsageError).message).toBe(message);
    expect((error as UsageError).data).toEqual({ flag });
  });
});

describe('help text', () => {
  const help = helpText({ version: '0.1.0' });

  it('starts with an argparse usage line listing VmBackup options first', () => {
    expect(usageText().split('\n')[0]).toBe('usage: vmbackup [-h] [-v] [-c FILE] [-b PATH] [-d PATH] [-p] [-H] [-l LEVEL]');
    expect(usageText().split('\n')[1]).toBe('                [-C] [-F FORMAT] [--preview] [-e STRING] [-E STRING]');
    expect(help.startsWith(usageText())).toBe(true);
    expect(help).toContain('vmbackup 0.1.0 - XenServer / XCP-ng backup, compatible with VmBackup');
  });

  it('lists every option with its exact spelling, in two groups', () => {
    const [vmbackup, extra] = help.split('vmbackup options (not in VmBackup):');
    for (const option of OPTIONS) {
      const invocation = option.short ? `-${option.short}${option.metavar ? ` ${option.metavar}` : ''}, --${option.long}` : `--${option.long}`;
      expect(option.group === 'vmbackup' ? vmbackup : extra).toContain(`  ${invocation}`);
    }
    expect(vmbackup).toContain('optional arguments:');
  });

  it('shows the defaults, taken from the schema', () => {
    for (const text of ['Base directory (Default: /mnt/VmBackup)', 'Default: /mnt/VmBackup/exports', 'Log Level: debug, info, warning, error, critical (Default: info)', '(Default: 4)', '(Default: 20)', '(Default: 2)', '(Default: https://localhost)', '(Default: root)', 'none, gzip, zstd (Default: none)', 'Default: raw']) {
      expect(help.replace(/\s+/g, ' ')).toContain(text);
    }
  });

  it('reads like argparse: short invocations share the line, long ones wrap to column 24, lines fit 79 columns', () => {
    const lines = help.split('\n');
    expect(lines).toContain('  -p, --pool-backup     Backup Pool DB');
    expect(lines).toContain('  -h, --help            show this help message and exit');
    expect(lines).toContain('  --no-pool-backup      Do not backup Pool DB, even if a config file says so');
    const config = lines.indexOf('  -c FILE, --config FILE');
    expect(lines[config + 1]).toMatch(/^ {24}Config file for runtime overrides/);
    expect(lines.filter((l) => l.length > 79)).toEqual([]);
  });
});

describe('takePositionals: a subcommand\'s arguments, wherever they stand', () => {
  const status = { command: 'vmbackup status', takes: 'one RUN', max: 1 };
  it.each([
    ['after the options', ['-c', '/etc/x.cfg', 'RUN'], ['RUN'], ['-c', '/etc/x.cfg']],
    ['before them', ['RUN', '-c', '/etc/x.cfg'], ['RUN'], ['-c', '/etc/x.cfg']],
    ['between them', ['--nats', 'nats://h:4222', 'RUN', '--json'], ['RUN'], ['--nats', 'nats://h:4222', '--json']],
    ['after --opt=value', ['--config=/etc/x.cfg', 'RUN'], ['RUN'], ['--config=/etc/x.cfg']],
    ['after -cFILE', ['-c/etc/x.cfg', 'RUN'], ['RUN'], ['-c/etc/x.cfg']],
    ['after a cluster ending in a valued option', ['-pHe', 'web1', 'RUN'], ['RUN'], ['-pHe', 'web1']],
    ['after switches', ['--json', '-p', 'RUN'], ['RUN'], ['--json', '-p']],
    ['a value that looks like a number', ['--max-backups', '-1', 'RUN'], ['RUN'], ['--max-backups', '-1']],
    ['after --', ['-b', '/b', '--', '-odd-run'], ['-odd-run'], ['-b', '/b']],
    ['none', ['-b', '/b'], [], ['-b', '/b']],
    ['after an unknown option (left for parseArgs to report)', ['--bogus', 'RUN'], ['RUN'], ['--bogus']],
    ['a valued option missing its value (left for parseArgs)', ['RUN', '-c'], ['RUN'], ['-c']],
  ])('%s', (_name, argv, positionals, options) => {
    expect(takePositionals(argv, status)).toEqual({ positionals, options });
  });

  it('more than the command takes is a UsageError naming the command', () => {
    const thrown = (f: () => unknown) => {
      try {
        f();
      } catch (error) {
        return error;
      }
      return undefined;
    };
    const two = thrown(() => takePositionals(['a', '-b', '/b', 'b'], status));
    expect(two).toBeInstanceOf(UsageError);
    expect(two).toMatchObject({ message: 'unexpected argument "b": vmbackup status takes one RUN (see vmbackup status --help)', data: { flag: 'b' } });
    expect(thrown(() => takePositionals(['x'], { command: 'vmbackup run', takes: '', max: 0 }))).toMatchObject({ message: 'unexpected argument "x": vmbackup run takes no argument (see vmbackup run --help)' });
  });

  it('agrees with parseArgs on what is an option\'s value', () => {
    for (const argv of [['-c', 'f', 'RUN'], ['-pHe', 'web1', 'RUN'], ['--max-backups', '-1', 'RUN'], ['-lwarning', 'RUN'], ['-e=web1', 'RUN']]) {
      const { options } = takePositionals(argv, status);
      expect(() => parseArgs(options), argv.join(' ')).not.toThrow();
      expect(() => parseArgs(argv), argv.join(' ')).toThrow(/unexpected argument "RUN"/);
    }
  });
});

describe('command help', () => {
  it('vmbackup --help lists the commands; --json is not only for --preview', () => {
    const help = helpText({ version: '0.1.0' });
    const commands = help.slice(help.indexOf('commands (vmbackup COMMAND --help describes each):'));
    for (const c of COMMAND_SPECS) expect(commands).toContain(`\n  ${c.name}${c.args !== undefined ? ` ${c.args}` : ''} `);
    expect(help.replace(/\s+/g, ' ')).toContain('--json Print JSON instead of text: the run summary');
    // A subcommand's help built on helpText would not list them again.
    expect(helpText({ prog: 'vmbackup status' })).not.toContain('commands (');
  });

  it.each(COMMAND_SPECS.filter((c) => c.ownHelp !== true).map((c) => [c.name]))('%s: usage with its arguments and options, fitting 79 columns', (name) => {
    const spec = COMMAND_SPECS.find((c) => c.name === name)!;
    const help = commandHelp(name, { version: '0.1.0' });
    expect(help.startsWith(`usage: vmbackup ${name}${spec.args !== undefined ? ` ${spec.args}` : ''}`)).toBe(true);
    expect(help).toContain(`vmbackup ${name} (vmbackup 0.1.0): `);
    expect(help).toMatch(/\n(connection and )?config options:\n/);
    expect(help.split('\n').filter((l) => l.length > 79)).toEqual([]);
    // Options named by long form are vmbackup's own, with their own text.
    for (const o of spec.options ?? []) if (typeof o === 'string') expect(help).toContain(OPTIONS.find((x) => x.long === o)!.help.split(' ')[0]!);
  });
});
