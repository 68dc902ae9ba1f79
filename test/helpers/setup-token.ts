// vitest setup (every test file): an admin token of this file's test key in HAYSTACK_TOKEN,
// so the SDK clients and CLI processes the tests start reach gateways that check tokens
// (tools.ts gives every test gateway the key's JWKS). Tests of refusals use their own tokens.
import { testToken } from './tokens.js';

process.env.HAYSTACK_TOKEN = await testToken('admin', { ttlSec: 86_400 });
