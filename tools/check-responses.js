#!/usr/bin/env node
// check-responses.js OPENAPI SAMPLES - checks answers a running coredb
// really gave against the document: SAMPLES is a JSON array of
// {method, path (the documented pattern), status, body}. Each status must be
// documented for its operation, and each JSON body must validate against
// that response's schema (JSON Schema 2020-12, as OpenAPI 3.1 uses, with ajv).
// Prints one line per problem and exits 1 when there is any; 0 and "ok N".
'use strict';
const fs = require('fs');
const SwaggerParser = require('@apidevtools/swagger-parser');
const Ajv2020 = require('ajv/dist/2020').default;
const addFormats = require('ajv-formats').default;

async function main() {
  const [docPath, samplesPath] = process.argv.slice(2);
  if (!docPath || !samplesPath) {
    console.error('usage: check-responses.js OPENAPI SAMPLES');
    process.exit(2);
  }
  const api = await SwaggerParser.dereference(docPath);
  const samples = JSON.parse(fs.readFileSync(samplesPath, 'utf8'));
  // OpenAPI's own keywords (example, xml, ...) are not JSON Schema's: not strict
  const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: true });
  addFormats(ajv);
  const problems = [];
  for (const s of samples) {
    const where = `${s.method.toUpperCase()} ${s.path} -> ${s.status}`;
    const op = (api.paths[s.path] || {})[s.method.toLowerCase()];
    if (!op) {
      problems.push(`${where}: no such operation`);
      continue;
    }
    const resp = op.responses[String(s.status)];
    if (!resp) {
      problems.push(`${where}: status not documented (documented: ${Object.keys(op.responses).join(' ')})`);
      continue;
    }
    const media = resp.content && resp.content['application/json'];
    if (!media) {
      if (s.body !== null && s.body !== undefined)
        problems.push(`${where}: a body was sent but none is documented`);
      continue;
    }
    const validate = ajv.compile(media.schema);
    if (!validate(s.body))
      problems.push(`${where}: ${ajv.errorsText(validate.errors)} in ${JSON.stringify(s.body).slice(0, 300)}`);
  }
  for (const p of problems) console.log(p);
  if (problems.length) process.exit(1);
  console.log(`ok ${samples.length}`);
}

main().catch((err) => {
  console.error(`error: ${err.message}`);
  process.exit(2);
});
