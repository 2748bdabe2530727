import '../../libs/supported-node';
import { loadAuthorityConfig } from '../../libs/core/config';
import { runService } from '../../libs/service-main';
import { startTokenAuthority } from './app';

runService('token-authority', () => loadAuthorityConfig(), startTokenAuthority);
