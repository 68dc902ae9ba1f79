// vitest setup (every test file): the test process's own internal clients (a
// DirectoryClient, a ClientPool) show a gateway's certificate of the file's
// throwaway CA, as the servers the tests start require mTLS.
import { setClientSecurity } from '../../internal/rpc/transport.js';
import { securityOf, TEST_GATEWAY } from './pki.js';

setClientSecurity(await securityOf(TEST_GATEWAY));
