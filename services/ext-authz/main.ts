import '../../libs/supported-node';
import { loadExtAuthzConfig } from '../../libs/authz/config';
import { runService } from '../../libs/service-main';
import { startExtAuthz } from './app';

runService('ext-authz', () => loadExtAuthzConfig(), startExtAuthz);
