import { ApiError } from './errors.js';

/**
 * XAPI's row filter language, as `<class>.get_all_records_where(session, expr)` takes it
 * (xapi's db_filter): `field "is_a_snapshot"="true"`, `and`, `or`, `not`, parentheses,
 * `true`, `false`, `=` and `<>` between a field and a string literal. Values compare as their
 * string form (booleans "true"/"false", numbers in decimal, refs as refs). Anything else is
 * refused (XAPI answers a parse failure with an internal error too).
 *
 * @example compileWhere('field "is_a_snapshot"="true" and not (field "name_label"="x")')
 */
export type RowPredicate = (field: (name: string) => unknown) => boolean;

type Token = { kind: 'word'; value: string } | { kind: 'string'; value: string } | { kind: 'op'; value: '=' | '<>' | '(' | ')' };

function tokenize(expr: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < expr.length) {
    const c = expr[i]!;
    if (/\s/.test(c)) {
      i++;
    } else if (c === '"') {
      let value = '';
      i++;
      while (i < expr.length && expr[i] !== '"') {
        if (expr[i] === '\\' && i + 1 < expr.length) i++;
        value += expr[i++];
      }
      if (expr[i] !== '"') throw parseError(expr, 'unterminated string');
      i++;
      tokens.push({ kind: 'string', value });
    } else if (c === '=' || c === '(' || c === ')') {
      tokens.push({ kind: 'op', value: c });
      i++;
    } else if (expr.startsWith('<>', i)) {
      tokens.push({ kind: 'op', value: '<>' });
      i += 2;
    } else if (/[A-Za-z_]/.test(c)) {
      let value = '';
      while (i < expr.length && /[A-Za-z_]/.test(expr[i]!)) value += expr[i++];
      tokens.push({ kind: 'word', value: value.toLowerCase() });
    } else {
      throw parseError(expr, `unexpected "${c}"`);
    }
  }
  return tokens;
}

function parseError(expr: string, why: string): ApiError {
  return new ApiError('INTERNAL_ERROR', [`Db_filter.Expression_error("${expr}": ${why})`]);
}

function asString(v: unknown): string {
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (v === null || v === undefined) return '';
  return String(v);
}

export function compileWhere(expr: string): RowPredicate {
  const tokens = tokenize(expr);
  let pos = 0;
  const peek = () => tokens[pos];
  const take = () => tokens[pos++];
  const orExpr = (): RowPredicate => {
    let left = andExpr();
    while (peek()?.kind === 'word' && peek()!.value === 'or') {
      take();
      const a = left;
      const b = andExpr();
      left = (f) => a(f) || b(f);
    }
    return left;
  };
  const andExpr = (): RowPredicate => {
    let left = unary();
    while (peek()?.kind === 'word' && peek()!.value === 'and') {
      take();
      const a = left;
      const b = unary();
      left = (f) => a(f) && b(f);
    }
    return left;
  };
  const unary = (): RowPredicate => {
    const t = take();
    if (t === undefined) throw parseError(expr, 'unexpected end');
    if (t.kind === 'word' && t.value === 'not') {
      const inner = unary();
      return (f) => !inner(f);
    }
    if (t.kind === 'word' && t.value === 'true') return () => true;
    if (t.kind === 'word' && t.value === 'false') return () => false;
    if (t.kind === 'op' && t.value === '(') {
      const inner = orExpr();
      const close = take();
      if (close?.kind !== 'op' || close.value !== ')') throw parseError(expr, 'missing )');
      return inner;
    }
    if (t.kind === 'word' && t.value === 'field') {
      const name = take();
      const op = take();
      const literal = take();
      if (name?.kind !== 'string' || op?.kind !== 'op' || (op.value !== '=' && op.value !== '<>') || literal?.kind !== 'string') {
        throw parseError(expr, 'expected field "name" = "value"');
      }
      const equal = op.value === '=';
      return (f) => (asString(f(name.value)) === literal.value) === equal;
    }
    throw parseError(expr, `unexpected ${t.value}`);
  };
  const predicate = orExpr();
  if (pos !== tokens.length) throw parseError(expr, 'trailing input');
  return predicate;
}
