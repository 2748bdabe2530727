import {
  Body,
  CanActivate,
  Controller,
  Delete,
  ExecutionContext,
  Get,
  Headers,
  HttpCode,
  Inject,
  Injectable,
  Param,
  Patch,
  Post,
  Put,
  Query,
  Req,
  Res,
  UseGuards,
} from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Authority } from '../../libs/core/authority';
import { OAuthError } from '../../libs/core/errors';
import { AUTHORITY } from './authority.provider';

/** The admin API takes the admin bearer token and nothing else. */
@Injectable()
export class AdminTokenGuard implements CanActivate {
  constructor(@Inject(AUTHORITY) private readonly authority: Authority) {}

  canActivate(context: ExecutionContext): boolean {
    const request = context.switchToHttp().getRequest<FastifyRequest>();
    if (this.authority.isAdmin(request.headers.authorization)) return true;
    throw new OAuthError('invalid_token', 'a valid admin bearer token is required', 401, 'Bearer realm="admin"');
  }
}

/** Admin REST API: API keys (Otoroshi's field names) and key pairs. */
@Controller('api')
@UseGuards(AdminTokenGuard)
export class AdminController {
  constructor(@Inject(AUTHORITY) private readonly authority: Authority) {}

  /** A page as a JSON array (Otoroshi's shape); the next page's URL in an RFC 8288 Link header. */
  @Get('apikeys')
  async listApiKeys(
    @Query() query: Record<string, unknown>,
    @Req() request: FastifyRequest,
    @Res({ passthrough: true }) reply: FastifyReply,
  ) {
    const { items, next } = await this.authority.admin.listApiKeys(query);
    if (next !== undefined) {
      const parameters = new URLSearchParams(query as Record<string, string>);
      parameters.set('after', next);
      void reply.header('link', `<${request.url.split('?')[0]}?${parameters}>; rel="next"`);
    }
    return items;
  }

  @Post('apikeys')
  createApiKey(@Body() body: unknown) {
    return this.authority.admin.createApiKey(body);
  }

  @Get('apikeys/:clientId')
  getApiKey(@Param('clientId') clientId: string) {
    return this.authority.admin.getApiKey(clientId);
  }

  @Put('apikeys/:clientId')
  replaceApiKey(@Param('clientId') clientId: string, @Body() body: unknown) {
    return this.authority.admin.updateApiKey(clientId, body);
  }

  /** A JSON merge body (the fields given replace the stored ones), or an RFC 6902 JSON Patch array. */
  @Patch('apikeys/:clientId')
  updateApiKey(@Param('clientId') clientId: string, @Body() body: unknown, @Headers('content-type') contentType?: string) {
    if (Array.isArray(body) || /^application\/json-patch\+json\b/i.test(contentType ?? '')) {
      return this.authority.admin.patchApiKey(clientId, body);
    }
    return this.authority.admin.updateApiKey(clientId, body);
  }

  /** Otoroshi's RemainingQuotas, from the counters ext-authz shares on Redis. */
  @Get('apikeys/:clientId/quotas')
  getQuotas(@Param('clientId') clientId: string) {
    return this.authority.admin.getQuotas(clientId);
  }

  @Delete('apikeys/:clientId/quotas')
  resetQuotas(@Param('clientId') clientId: string) {
    return this.authority.admin.resetQuotas(clientId);
  }

  @Post('apikeys/:clientId/rotate-secret')
  @HttpCode(200)
  rotateSecret(@Param('clientId') clientId: string, @Body() body: unknown) {
    return this.authority.admin.rotateApiKeySecret(clientId, body);
  }

  @Delete('apikeys/:clientId')
  @HttpCode(204)
  deleteApiKey(@Param('clientId') clientId: string) {
    return this.authority.admin.deleteApiKey(clientId);
  }

  @Get('keypairs')
  listKeyPairs() {
    return this.authority.admin.listKeyPairs();
  }

  @Post('keypairs')
  createKeyPair(@Body() body: unknown) {
    return this.authority.admin.createKeyPair(body);
  }

  @Get('keypairs/:id')
  getKeyPair(@Param('id') id: string) {
    return this.authority.admin.getKeyPair(id);
  }

  @Post('keypairs/:id/rotate')
  @HttpCode(200)
  rotateKeyPair(@Param('id') id: string, @Body() body: unknown) {
    return this.authority.admin.rotateKeyPair(id, body);
  }

  @Post('keypairs/:id/retire')
  @HttpCode(200)
  retireKeyPair(@Param('id') id: string) {
    return this.authority.admin.retireKeyPair(id);
  }

  @Delete('keypairs/:id')
  @HttpCode(204)
  deleteKeyPair(@Param('id') id: string) {
    return this.authority.admin.deleteKeyPair(id);
  }
}
