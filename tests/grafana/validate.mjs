#!/usr/bin/env node
// Validates Grafana dashboards and file-provisioned alert rules against Grafana's schema for the
// Grafana version docker-compose.yml pins. The Rust test tests/api/stack.rs runs it.
//
//   node validate.mjs dashboard FILE.json...     type-checks each dashboard against dashboard.ts
//   node validate.mjs alert-rules FILE.yaml...   checks each file against alert-rules.schema.json
//
// Prints `ok FILE` for each valid file, or one `FILE: PATH: MESSAGE` line per problem. Exits 0 when
// every file is valid, 1 when one is not, 2 when the validator itself cannot run (bad usage, or the
// types or schema fail to load: `npm ci` not run). It must not pass a file it could not check.

import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import AjvModule from 'ajv';
import ts from 'typescript';
import YAML from 'yaml';

const here = dirname(fileURLToPath(import.meta.url));
const Ajv = AjvModule.default ?? AjvModule;

class ValidatorBroken extends Error {}

/** One problem in a checked file. */
function problem(file, path, message) {
  return `${file}: ${path || '(top level)'}: ${message}`;
}

// ---- dashboards: the JSON as a TypeScript literal that must satisfy GrafanaDashboard ----

const compilerOptions = {
  strict: true,
  noEmit: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.ESNext,
  moduleResolution: ts.ModuleResolutionKind.Bundler,
  // The libraries' own declarations are theirs to check; the dashboards are ours.
  skipLibCheck: true,
  types: [],
};

/** The JSON path (`panels[3].gridPos`) of the literal at `pos` in a checked source file. */
function jsonPath(sourceFile, pos) {
  let path = '';
  const descend = (node) => {
    ts.forEachChild(node, (child) => {
      if (pos < child.getStart(sourceFile) || pos >= child.getEnd()) return undefined;
      if (ts.isArrayLiteralExpression(node)) path += `[${node.elements.indexOf(child)}]`;
      if (ts.isPropertyAssignment(child)) path += `.${child.name.text}`;
      descend(child);
      return true;
    });
  };
  descend(sourceFile);
  return path.replace(/^\./, '');
}

function checkDashboards(files) {
  const checked = new Map(); // virtual source path -> dashboard file
  const texts = new Map();
  const problems = [];
  files.forEach((file, index) => {
    let dashboard;
    try {
      dashboard = JSON.parse(readFileSync(file, 'utf8'));
    } catch (error) {
      problems.push(problem(file, '', `not JSON: ${error.message}`));
      return;
    }
    const source = join(here, `__dashboard_${index}__.ts`);
    checked.set(source, file);
    texts.set(
      source,
      "import type { GrafanaDashboard } from './dashboard';\n" +
        `export const dashboard = ${JSON.stringify(dashboard, null, 2)} satisfies GrafanaDashboard;\n`,
    );
  });
  if (checked.size === 0) return problems;

  const host = ts.createCompilerHost(compilerOptions);
  const { getSourceFile, fileExists, readFile } = host;
  host.getSourceFile = (name, language, ...rest) =>
    texts.has(name)
      ? ts.createSourceFile(name, texts.get(name), language, true)
      : getSourceFile.call(host, name, language, ...rest);
  host.fileExists = (name) => texts.has(name) || fileExists.call(host, name);
  host.readFile = (name) => texts.get(name) ?? readFile.call(host, name);

  const program = ts.createProgram([...checked.keys()], compilerOptions, host);
  for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
    const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n');
    const source = diagnostic.file?.fileName;
    if (!checked.has(source) || diagnostic.start === undefined) {
      // The types did not load: nothing was checked.
      throw new ValidatorBroken(`${source ?? 'typescript'}: ${message}`);
    }
    const lines = message.split('\n');
    const shown = lines.length > 12 ? [...lines.slice(0, 12), '  ...'] : lines;
    problems.push(
      problem(checked.get(source), jsonPath(diagnostic.file, diagnostic.start), shown.join('\n    ')),
    );
  }
  return problems;
}

// ---- alert rules: the YAML against a JSON schema, then what Grafana checks across fields ----

function checkAlertRules(files) {
  let validate;
  try {
    const schema = JSON.parse(readFileSync(join(here, 'alert-rules.schema.json'), 'utf8'));
    validate = new Ajv({ allErrors: true, strict: true, strictRequired: false }).compile(schema);
  } catch (error) {
    throw new ValidatorBroken(`alert-rules.schema.json: ${error.message}`);
  }
  const problems = [];
  for (const file of files) {
    const document = YAML.parseDocument(readFileSync(file, 'utf8'), { uniqueKeys: true });
    if (document.errors.length > 0) {
      problems.push(...document.errors.map((error) => problem(file, '', `not YAML: ${error.message}`)));
      continue;
    }
    const rules = document.toJS();
    if (!validate(rules)) {
      for (const error of validate.errors) {
        const detail = error.params?.additionalProperty
          ? `: ${error.params.additionalProperty}`
          : error.params?.allowedValues
            ? `: ${error.params.allowedValues.join(', ')}`
            : '';
        const path = error.instancePath.slice(1).replaceAll('/', '.');
        problems.push(problem(file, path, `${error.message}${detail}`));
      }
      continue;
    }
    problems.push(...crossFieldProblems(file, rules));
  }
  return problems;
}

/** What Grafana rejects when it saves a rule, beyond the shape of each field. */
function crossFieldProblems(file, rules) {
  const problems = [];
  const uids = new Set();
  (rules.groups ?? []).forEach((group, g) => {
    group.rules.forEach((rule, r) => {
      const at = `groups.${g}.rules.${r}`;
      if (uids.has(rule.uid)) problems.push(problem(file, `${at}.uid`, `duplicate rule uid ${rule.uid}`));
      uids.add(rule.uid);
      const refIds = rule.data.map((query) => query.refId);
      if (rule.condition !== undefined && !refIds.includes(rule.condition)) {
        problems.push(problem(file, `${at}.condition`, `${rule.condition} is none of the queries ${refIds}`));
      }
      rule.data.forEach((query, q) => {
        const range = query.relativeTimeRange;
        if (query.datasourceUid !== '__expr__' && !(range.from > (range.to ?? 0))) {
          problems.push(problem(file, `${at}.data.${q}.relativeTimeRange`, 'from must be greater than to'));
        }
        const input = query.model.expression;
        if (query.datasourceUid === '__expr__' && query.model.type !== 'math' && input !== undefined) {
          if (!refIds.includes(input)) {
            problems.push(problem(file, `${at}.data.${q}.model.expression`, `${input} is none of the queries ${refIds}`));
          }
        }
      });
    });
  });
  return problems;
}

// ---- main ----

const checks = { dashboard: checkDashboards, 'alert-rules': checkAlertRules };
const [kind, ...args] = process.argv.slice(2);
if (!checks[kind] || args.length === 0) {
  console.error('usage: node validate.mjs dashboard|alert-rules FILE...');
  process.exit(2);
}
const files = args.map((file) => resolve(file));
try {
  const problems = checks[kind](files);
  for (const file of files) {
    if (!problems.some((line) => line.startsWith(`${file}: `))) console.log(`ok ${file}`);
  }
  for (const line of problems) console.log(line);
  process.exit(problems.length === 0 ? 0 : 1);
} catch (error) {
  if (!(error instanceof ValidatorBroken)) throw error;
  console.error(`validator could not check anything: ${error.message}`);
  process.exit(2);
}
