#!/usr/bin/env node
// validate-openapi.js FILE - validates an OpenAPI document with
// @apidevtools/swagger-parser (schema and semantic checks, $refs resolved).
// Exit 0 and "valid" when it passes; 1 and the validator's message otherwise.
'use strict';
const SwaggerParser = require('@apidevtools/swagger-parser');

const file = process.argv[2];
if (!file) {
  console.error('usage: validate-openapi.js FILE');
  process.exit(2);
}
SwaggerParser.validate(file)
  .then((api) => {
    console.log(`valid: OpenAPI ${api.openapi}, ${Object.keys(api.paths).length} paths`);
  })
  .catch((err) => {
    console.error(`invalid: ${err.message}`);
    process.exit(1);
  });
