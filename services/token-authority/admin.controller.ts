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
import type { AdminContext, Page, Tagged } from '../../libs/core/admin-service';
import type { Authority } from '../../libs/core/authority';
import type { Route } from '../../libs/core/routes';
import { routeXdsStatus, type XdsStatusSource } from '../../libs/xds/route-status';
import { AUTHORITY, XDS_STATUS } from './authority.provider';

/** The ADS server once it runs (xds.enabled); unset otherwise. */
export interface XdsStatusHolder {
  source?: XdsStatusSource;
}

/** The admin API takes the admin bearer token and nothing else, behind the wrong-token limits. */
@Injectable()
export class AdminTokenGuard implements CanActivate {
  constructor(@Inject(AUTHORITY) private readonly authority: Authority) {}

  async canActivate(context: ExecutionContext): Promise<boolean> {
    const request = context.switchToHttp().getRequest<FastifyRequest>();
    // request.ip: the peer, or the address the trusted proxy saw (TRUST_PROXY).
    await this.authority.authorizeAdmin(request.headers.authorization, request.ip);
    return true;
  }
}

/** The admin lists' answer: a page as a JSON array (Otoroshi's shape), the next page's URL in an RFC 8288 Link header. */
function sendPage<T>(page: Page<T>, query: Record<string, unknown>, request: FastifyRequest, reply: FastifyReply): T[] {
  if (page.next !== undefined) {
    const parameters = new URLSearchParams(query as Record<string, string>);
    parameters.set('after', page.next);
    void reply.header('link', `<${request.url.split('?')[0]}?${parameters}>; rel="next"`);
  }
  return page.items;
}

/** The body of an answer, with its ETag header. */
function sendTagged<T>(tagged: Tagged<T>, reply: FastifyReply): T {
  void reply.header('etag', tagged.etag);
  return tagged.body;
}

/**
 * Admin REST API: API keys (Otoroshi's field names), key pairs and the audit log. Writes take
 * If-Match (checked atomically with the write) and are audited under the admin token's actor.
 */
@Controller('api')
@UseGuards(AdminTokenGuard)
export class AdminController {
  constructor(
    @Inject(AUTHORITY) private readonly authority: Authority,
    @Inject(XDS_STATUS) private readonly xds: XdsStatusHolder,
  ) {}

  /** A route as read, with what this authority's Envoys made of it (status.xds), when it is their control plane. */
  private withStatus(route: Route): Route & { status?: { xds: ReturnType<typeof routeXdsStatus> } } {
    const source = this.xds.source;
    return source ? { ...route, status: { xds: routeXdsStatus(source, route.id) } } : route;
  }

  private context(request: FastifyRequest): AdminContext {
    return { actor: this.authority.adminActor(request.headers.authorization), ifMatch: request.headers['if-match'] };
  }

  @Get('apikeys')
  async listApiKeys(
    @Query() query: Record<string, unknown>,
    @Req() request: FastifyRequest,
    @Res({ passthrough: true }) reply: FastifyReply,
  ) {
    return sendPage(await this.authority.admin.listApiKeys(query), query, request, reply);
  }

  @Post('apikeys')
  async createApiKey(@Body() body: unknown, @Req() request: FastifyRequest, @Res({ passthrough: true }) reply: FastifyReply) {
    return sendTagged(await this.authority.admin.createApiKey(body, this.context(request)), reply);
  }

  @Get('apikeys/:clientId')
  async getApiKey(@Param('clientId') clientId: string, @Res({ passthrough: true }) reply: FastifyReply) {
    return sendTagged(await this.authority.admin.getApiKey(clientId), reply);
  }

  @Put('apikeys/:clientId')
  async replaceApiKey(
    @Param('clientId') clientId: string,
    @Body() body: unknown,
    @Req() request: FastifyRequest,
    @Res({ passthrough: true }) reply: FastifyReply,
  ) {
    return sendTagged(await this.authority.admin.updateApiKey(clientId, body, this.context(request)), reply);
  }

  /** A JSON merge body (the fields given replace the stored ones), or an RFC 6902 JSON Patch array. */
  @Patch('apikeys/:clientId')
  async updateApiKey(
    @Param('clientId') clientId: string,
    @Body() body: unknown,
    @Req() request: FastifyRequest,
    @Res({ passthrough: true }) reply: FastifyReply,
    @Headers('content-type') contentType?: string,
  ) {
    const patch = Array.isArray(body) || /^application\/json-patch\+json\b/i.test(contentType ?? '');
    const admin = this.authority.admin;
    const context = this.context(request);
    return sendTagged(await (patch ? admin.patchApiKey(clientId, body, context) : admin.updateApiKey(clientId, body, context)), reply);
  }

  /** Otoroshi's RemainingQuotas: from Redis, or summed over the ext-authz replicas that count in memory (see AdminService.getQuotas). */
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
  async rotateSecret(
    @Param('clientId') clientId: string,
    @Body() body: unknown,
    @Req() request: FastifyRequest,
    @Res({ passthrough: true }) reply: FastifyReply,
  ) {
    return sendTagged(await this.authority.admin.rotateApiKeySecret(clientId, body, this.context(request)), reply);
  }

  @Delete('apikeys/:clientId')
  @HttpCode(204)
  deleteApiKey(@Param('clientId') clientId: string, @Req() request: FastifyRequest) {
    return this.authority.admin.deleteApiKey(clientId, this.context(request));
  }

  @Get('routes')
  async listRoutes(
    @Query() query: Record<string, unknown>,
    @Req() request: FastifyRequest,
    @Res({ passthrough: true }) reply: FastifyReply,
  ) {
    const page = await this.authority.admin.listRoutes(query);
    return sendPage({ ...page, items: page.items.map((route) => this.withStatus(route)) }, query, request, reply);
  }

  @Post('routes')
  async createRoute(@Body() body: unknown, @Req() request: FastifyRequest, @Res({ passthrough: true }) reply: FastifyReply) {
    return sendTagged(await this.authority.admin.createRoute(body, this.context(request)), reply);
  }

  @Get('routes/:id')
  async getRoute(@Param('id') id: string, @Res({ passthrough: true }) reply: FastifyReply) {
    const tagged = await this.authority.admin.getRoute(id);
    return sendTagged({ ...tagged, body: this.withStatus(tagged.body) }, reply);
  }

  @Put('routes/:id')
  async replaceRoute(
    @Param('id') id: string,
    @Body() body: unknown,
    @Req() request: FastifyRequest,
    @Res({ passthrough: true }) reply: FastifyReply,
  ) {
    return sendTagged(await this.authority.admin.replaceRoute(id, body, this.context(request)), reply);
  }

  /** An RFC 7396 JSON Merge Patch (an object), or an RFC 6902 JSON Patch (an array, or application/json-patch+json). */
  @Patch('routes/:id')
  async updateRoute(
    @Param('id') id: string,
    @Body() body: unknown,
    @Req() request: FastifyRequest,
    @Res({ passthrough: true }) reply: FastifyReply,
    @Headers('content-type') contentType?: string,
  ) {
    const jsonPatch = Array.isArray(body) || /^application\/json-patch\+json\b/i.test(contentType ?? '');
    return sendTagged(await this.authority.admin.patchRoute(id, body, this.context(request), jsonPatch), reply);
  }

  @Delete('routes/:id')
  @HttpCode(204)
  deleteRoute(@Param('id') id: string, @Req() request: FastifyRequest) {
    return this.authority.admin.deleteRoute(id, this.context(request));
  }

  @Get('keypairs')
  listKeyPairs() {
    return this.authority.admin.listKeyPairs();
  }

  @Post('keypairs')
  async createKeyPair(@Body() body: unknown, @Req() request: FastifyRequest, @Res({ passthrough: true }) reply: FastifyReply) {
    return sendTagged(await this.authority.admin.createKeyPair(body, this.context(request)), reply);
  }

  @Get('keypairs/:id')
  async getKeyPair(@Param('id') id: string, @Res({ passthrough: true }) reply: FastifyReply) {
    return sendTagged(await this.authority.admin.getKeyPair(id), reply);
  }

  @Put('keypairs/:id')
  async replaceKeyPair(
    @Param('id') id: string,
    @Body() body: unknown,
    @Req() request: FastifyRequest,
    @Res({ passthrough: true }) reply: FastifyReply,
  ) {
    return sendTagged(await this.authority.admin.updateKeyPair(id, body, this.context(request)), reply);
  }

  @Patch('keypairs/:id')
  async updateKeyPair(
    @Param('id') id: string,
    @Body() body: unknown,
    @Req() request: FastifyRequest,
    @Res({ passthrough: true }) reply: FastifyReply,
  ) {
    return sendTagged(await this.authority.admin.updateKeyPair(id, body, this.context(request)), reply);
  }

  @Post('keypairs/:id/rotate')
  @HttpCode(200)
  async rotateKeyPair(
    @Param('id') id: string,
    @Body() body: unknown,
    @Req() request: FastifyRequest,
    @Res({ passthrough: true }) reply: FastifyReply,
  ) {
    return sendTagged(await this.authority.admin.rotateKeyPair(id, body, this.context(request)), reply);
  }

  @Post('keypairs/:id/retire')
  @HttpCode(200)
  async retireKeyPair(@Param('id') id: string, @Req() request: FastifyRequest, @Res({ passthrough: true }) reply: FastifyReply) {
    return sendTagged(await this.authority.admin.retireKeyPair(id, this.context(request)), reply);
  }

  @Delete('keypairs/:id')
  @HttpCode(204)
  deleteKeyPair(@Param('id') id: string, @Req() request: FastifyRequest) {
    return this.authority.admin.deleteKeyPair(id, this.context(request));
  }

  /** Every admin change, oldest first, paged as GET /api/apikeys is; admin token only (the guard above). */
  @Get('audit')
  async listAudit(
    @Query() query: Record<string, unknown>,
    @Req() request: FastifyRequest,
    @Res({ passthrough: true }) reply: FastifyReply,
  ) {
    return sendPage(await this.authority.admin.listAudit(query), query, request, reply);
  }
}
