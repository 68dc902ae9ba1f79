// `npm run build`: tsc into dist/ with the CLI marked executable.
import { build } from './lib.mjs';

build();
